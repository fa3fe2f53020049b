"""GPU energy used during a block of code, read through NVML; None wherever NVML or the GPUs are missing.

Why the energy counter first: `nvmlDeviceGetTotalEnergyConsumption` (Volta and newer) is the driver's own
running integral in mJ, so it misses no spike between samples. Older GPUs only report instantaneous power;
then a background thread samples it every `interval_s` and integrates with the trapezoid rule.
NVML sees the GPUs of this node only, and its indices are physical ones (not CUDA_VISIBLE_DEVICES order).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from types import ModuleType, TracebackType

log = logging.getLogger(__name__)


def _nvml() -> ModuleType | None:
    """The initialised pynvml module (package nvidia-ml-py), or None without it or without a driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("NVML unavailable, energy will be null: %s", error)
        return None
    return pynvml


class PowerSampler:
    """Context manager measuring the energy of some GPUs: `with PowerSampler([0]) as p: ...; p.energy_j`.

    `energy_j` is the joules all listed GPUs used inside the block, or None when it cannot be measured
    (no pynvml, no driver, no such GPU, a read failed). It never raises for a missing GPU.
    """

    def __init__(self, gpu_indices: Sequence[int], interval_s: float = 0.1):
        self.gpu_indices = tuple(gpu_indices)
        self.interval_s = interval_s
        self.energy_j: float | None = None
        self._nvml: ModuleType | None = None
        self._handles: list[object] = []
        self._start_mj: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._integrated_j = 0.0
        self._failed = False

    def __enter__(self) -> PowerSampler:
        if not self.gpu_indices or (nvml := _nvml()) is None:
            return self
        self._nvml = nvml
        try:
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in self.gpu_indices]
        except nvml.NVMLError as error:
            log.warning("NVML has no GPU among %s, energy will be null: %s", self.gpu_indices, error)
            self._close()
            return self
        self._start_mj = self._energy_mj()
        if self._start_mj is None:
            self._thread = threading.Thread(target=self._integrate, name="power-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._nvml is None:
            return
        if self._start_mj is not None:
            end_mj = self._energy_mj()
            self.energy_j = (end_mj - self._start_mj) / 1000.0 if end_mj is not None else None
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.energy_j = None if self._failed else self._integrated_j
        self._close()

    def _energy_mj(self) -> int | None:
        """Sum of the GPUs' energy counters in mJ, or None where a GPU does not support the counter."""
        try:
            return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) for handle in self._handles)
        except self._nvml.NVMLError:
            return None

    def _power_w(self) -> float:
        return sum(self._nvml.nvmlDeviceGetPowerUsage(handle) for handle in self._handles) / 1000.0  # mW -> W

    def _integrate(self) -> None:
        """Sample total power until stopped; one last sample at the stop covers the tail of the block."""
        try:
            last_s, last_w = time.perf_counter(), self._power_w()
            stopping = False
            while not stopping:
                stopping = self._stop.wait(self.interval_s)
                now_s, now_w = time.perf_counter(), self._power_w()
                self._integrated_j += (last_w + now_w) / 2.0 * (now_s - last_s)
                last_s, last_w = now_s, now_w
        except self._nvml.NVMLError as error:
            log.warning("NVML power read failed, energy will be null: %s", error)
            self._failed = True

    def _close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):  # a failed shutdown leaves nothing to release
            self._nvml.nvmlShutdown()
        self._nvml = None
