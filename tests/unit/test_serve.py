"""The pure parts of serving: the vLLM command line, environment and weight provenance."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from bench.config import ModelConfig, ServeConfig
from bench.serve import Hardware, count_parameters, server_command, server_env, weights_sha256

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
