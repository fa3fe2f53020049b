"""Nothing a run starts outlives it: the kills of issue 10 on a real `distill-bench run` (embedded Ray, the CPU
vLLM server of the toy student), each checked within BOUND_S:

- the driver's whole process group SIGKILLed mid-cell (a shell's or a scheduler's kill);
- the vLLM API server SIGKILLed mid-cell: its engine processes and shared memory go at once, the run goes on
  and says it retries the cell on a fresh server; then, while that server starts, the driver's process
  alone is SIGKILLed (what the OOM killer does; Ray's agents used to outlive it by a minute).
- Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) mid-cell: the run stops with exit
  130, says what is stored and how to resume, ends with its summary line, prints no traceback, and leaves
  nothing running; the cells it finished stay stored.

Every process the run starts is noted while it runs (its environment carries a marker, or it is under the
driver), so "what the run started" is read from /proc, not from the code under test; the shared-memory
segments are those that the run's processes were seen mapping. Both runs start together (a start is mostly
single-threaded imports: side by side they take little longer than one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bench import store
from bench.supervise import process_tree

from .conftest import REPO, TOY_MODELS, TOY_SERVE

pytestmark = pytest.mark.slow
BOUND_S = 20.0  # after a kill, everything of the run must be gone within this
START_S = 600.0  # two runs starting side by side on two cores
SHM = Path("/dev/shm")


@dataclass
class Run:
    """One `distill-bench run` in a session of its own, and what it was seen to start."""

    name: str
    marker: str
    driver: subprocess.Popen
    run_dir: Path
    output: Path
    seen: dict[int, str] = field(default_factory=dict)  # pid -> its start time: every process of the run seen
    segments: set[Path] = field(default_factory=set)  # every psm_ segment a process of the run was seen mapping

    def look(self) -> None:
        """Note the run's processes now (carrying its marker, or under its driver: Ray's agents rename
        themselves over their environment) and the psm_ segments they map (vLLM's engine-to-worker queues)."""
        under_driver = process_tree(self.driver.pid) if self.driver.poll() is None else []
        for pid in {*self._marked(), *under_driver}:
            with contextlib.suppress(OSError):
                self.seen.setdefault(pid, _stat(pid)[19])
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                    path = line.split(maxsplit=5)[5:]  # address, perms, offset, device, inode, path
                    if path and path[0].startswith(f"{SHM}/psm_") and not path[0].endswith("(deleted)"):
                        self.segments.add(Path(path[0]))

    def _marked(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if entry.isdigit() and self.marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
        return found

    def processes(self) -> dict[int, str]:
        """The run's processes still running (not zombies), seen before or carrying its marker: pid -> command."""
        running = {}
        for pid in {*self.seen, *self._marked()}:
            with contextlib.suppress(OSError):
                stat = _stat(pid)
                if stat[0] != "Z" and self.seen.get(pid, stat[19]) == stat[19]:  # not a new process with an old pid
                    running[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return running

    def mid_cell(self, count: int = 1) -> bool:
        """The run has sent its `count`-th cell to a server and that cell has not finished yet."""
        log = self.run_dir / "run.log"
        lines = [line for line in log.read_text().splitlines() if "bench.progress" in line] if log.exists() else []
        sent = [line for line in lines if ": perf w (block" in line]
        return len(sent) >= count and lines[-1] == sent[-1]

    def left(self) -> tuple[dict[int, str], list[Path]]:
        return self.processes(), sorted(path for path in self.segments if path.exists())

    def gone(self) -> bool:
        return self.left() == ({}, [])

    def said(self) -> str:
        return self.output.read_text()


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ... (index 19: the start time)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _until(condition: Callable[[], bool], bound_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


def _start(root: Path, name: str) -> Run:
    serve = TOY_SERVE.model_dump(mode="json")
    config = {
        "run": {"name": name, "results_dir": str(root / "results"), "cell_retries": 1},
        "hardware": {"device_type": "cpu-core", "prices": str(REPO / "configs" / "prices.yaml")},
        "models": [{"name": "s", "source": str(TOY_MODELS / "student-kd"), "serve": serve}],
        # A light load for long enough that every kill lands mid-cell, while the other runs still start.
        "workloads": [
            {
                "name": "w",
                "mode": "rate",
                "levels": [2],
                "num_requests": 8,
                "warmup_requests": 1,
                "min_duration_s": 15,
                "prompt_tokens": {"mean": 8},
                "output_tokens": {"mean": 8},
                "repeats": 3,
            }
        ],
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    marker = f"DISTILL_BENCH_KILL_TEST_{uuid.uuid4().hex}"
    output = root / f"{name}.out"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **{marker: "1"})
    with output.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "bench.cli", "run", str(path)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a command
        )
    return Run(name, marker, driver, root / "results" / name, output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    root = tmp_path_factory.mktemp("kills")
    started = {name: _start(root, name) for name in ("group", "server", "interrupt")}
    yield started
    for run in started.values():  # whatever a failed test left behind
        for pid in run.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for segment in run.segments:
            segment.unlink(missing_ok=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.driver.wait(timeout=5)


def _wait_mid_cell(run: Run, count: int = 1) -> None:
    def ready() -> bool:
        run.look()
        return run.driver.poll() is None and run.mid_cell(count)

    assert _until(ready, START_S), f"{run.name}: never got mid-cell; driver said:\n{run.said()[-3000:]}"
    time.sleep(2)  # well inside the cell
    run.look()
    assert run.segments, f"{run.name}: vLLM mapped no psm_ segment (the test would prove nothing)"


def test_sigkill_of_the_drivers_process_group_mid_cell_leaves_nothing(runs: dict[str, Run]) -> None:
    run = runs["group"]
    _wait_mid_cell(run)

    os.killpg(run.driver.pid, signal.SIGKILL)

    assert _until(run.gone, BOUND_S), run.left()


def test_a_server_killed_mid_cell_goes_whole_then_a_killed_driver_leaves_nothing(runs: dict[str, Run]) -> None:
    run = runs["server"]
    _wait_mid_cell(run)
    server = next(pid for pid, command in run.processes().items() if "vllm.entrypoints.openai.api_server" in command)
    tree = process_tree(server)  # the API server, VLLM::EngineCore, VLLM::Worker, the resource tracker
    first_segments = set(run.segments)

    os.kill(server, signal.SIGKILL)

    def first_tree_gone() -> bool:
        return not set(tree) & set(run.processes()) and not any(path.exists() for path in first_segments)

    assert _until(first_tree_gone, BOUND_S), (set(tree) & set(run.processes()), first_segments)
    assert run.driver.poll() is None  # the run goes on
    retried = "retrying perf s × w (attempt 1 failed): ServerError: vLLM server for s exited"

    def replaced() -> bool:
        run.look()
        return retried in run.said() and "s: replacing its worker and server after: ServerError" in run.said()

    assert _until(replaced, START_S), run.said()[-3000:]
    time.sleep(5)
    run.look()

    os.kill(run.driver.pid, signal.SIGKILL)  # the driver alone, while the fresh server starts

    assert _until(run.gone, BOUND_S), run.left()


def test_ctrl_c_mid_cell_stops_the_run_cleanly_keeps_what_it_stored_and_says_how_to_resume(
    runs: dict[str, Run],
) -> None:
    run = runs["interrupt"]
    _wait_mid_cell(run, count=2)  # the first block's cell is stored by now
    stored = store.done_cell_keys(run.run_dir)
    assert stored

    os.killpg(run.driver.pid, signal.SIGINT)

    assert run.driver.wait(timeout=START_S) == 130, run.said()[-3000:]
    assert _until(run.gone, BOUND_S), run.left()
    lines = run.said().splitlines()
    assert "Traceback" not in run.said(), run.said()[-3000:]
    assert any(line.startswith("interrupted: ") and "the same command resumes" in line for line in lines)
    assert lines[-1].startswith(f"summary: {run.name}: ") and lines[-1].endswith("; exit 130"), lines[-5:]
    assert stored <= store.done_cell_keys(run.run_dir)
