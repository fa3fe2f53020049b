"""The server supervisor against a stand-in for vLLM's process tree (a fake: no vLLM needed, real processes).

The stand-in has vLLM's shape where it matters: an "API server" whose "engine" child leaves its process
group, maps a `psm_*` shared-memory segment it has taken away from the resource tracker, and ignores
SIGTERM, as an orphaned vLLM engine does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import pytest

from bench.supervise import SHM, process_tree, shm_segments, supervised_command

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 10.0  # everything must be gone this long after the kill (the supervisor reacts at once)

ENGINE = """
import signal, sys, time
from multiprocessing import resource_tracker, shared_memory
shm = shared_memory.SharedMemory(create=True, size=1 << 20)
resource_tracker.unregister(shm._name, "shared_memory")
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "w") as ready:
    ready.write(shm.name)
time.sleep(600)
"""
SERVER = """
import signal, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""
WORKER = """
import os, subprocess, sys, time
from bench.supervise import supervised_command
supervisor = subprocess.Popen(supervised_command(sys.argv[1:], os.getpid(), grace_s=2), start_new_session=True)
print(supervisor.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _wait_for(condition, bound_s: float = BOUND_S) -> bool:
    deadline = time.monotonic() + bound_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _server_command(ready: Path) -> list[str]:
    return [sys.executable, "-c", SERVER, ENGINE, str(ready)]


@pytest.fixture
def started() -> Iterator[Callable[[int, Path], tuple[list[int], Path]]]:
    """Waits for a stand-in tree to be up; afterwards kills what a failed test left of it."""
    seen: list[tuple[list[int], Path]] = []

    def wait(supervisor: int, ready: Path) -> tuple[list[int], Path]:
        """The tree under the supervisor (supervisor, server, engine) once the engine has mapped its segment."""
        assert _wait_for(lambda: ready.is_file() and ready.read_text(), bound_s=30), "the stand-in did not start"
        tree = process_tree(supervisor)
        assert len(tree) >= 3  # the supervisor, the server, its engine (and the resource tracker)
        seen.append((tree, SHM / ready.read_text()))
        return seen[-1]

    yield wait
    for tree, segment in seen:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        segment.unlink(missing_ok=True)


@pytest.fixture
def bystander() -> Iterator[Path]:
    """A segment of another process on the node: the supervisor must leave it alone."""
    shm = shared_memory.SharedMemory(create=True, size=4096)
    resource_tracker.unregister(shm._name, "shared_memory")
    yield SHM / shm.name
    shm.close()
    shm.unlink()


def _gone(tree: list[int], segment: Path) -> bool:
    return not any(_alive(pid) for pid in tree) and not segment.exists()


def test_the_segments_of_a_tree_are_those_it_maps(tmp_path: Path, bystander: Path, started) -> None:
    ready = tmp_path / "ready"
    supervisor = subprocess.Popen(supervised_command(_server_command(ready), os.getpid(), grace_s=2))
    try:
        tree, segment = started(supervisor.pid, ready)
        assert shm_segments(tree) == {segment}
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=BOUND_S)


def test_a_killed_worker_takes_the_whole_tree_and_its_shared_memory(tmp_path: Path, bystander: Path, started) -> None:
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, *_server_command(ready)], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    supervisor = int(worker.stdout.readline())
    tree, segment = started(supervisor, ready)

    os.killpg(worker.pid, signal.SIGKILL)  # the worker's whole process group, as when the driver's group is killed
    worker.wait()

    assert _wait_for(lambda: _gone(tree, segment)), [pid for pid in tree if _alive(pid)]
    assert bystander.exists()


def test_a_killed_server_leaves_no_orphans_and_its_status_is_kept(tmp_path: Path, bystander: Path, started) -> None:
    ready = tmp_path / "ready"
    supervisor = subprocess.Popen(supervised_command(_server_command(ready), os.getpid(), grace_s=2))
    tree, segment = started(supervisor.pid, ready)
    server = next(pid for pid in tree if _parent(pid) == supervisor.pid)

    os.kill(server, signal.SIGKILL)

    assert supervisor.wait(timeout=BOUND_S) == 128 + signal.SIGKILL
    assert _wait_for(lambda: _gone(tree, segment)), [pid for pid in tree if _alive(pid)]
    assert bystander.exists()


def test_stop_lets_the_server_exit_then_kills_what_ignores_sigterm(tmp_path: Path, started) -> None:
    ready = tmp_path / "ready"
    supervisor = subprocess.Popen(supervised_command(_server_command(ready), os.getpid(), grace_s=2))
    tree, segment = started(supervisor.pid, ready)

    started = time.monotonic()
    supervisor.terminate()

    assert supervisor.wait(timeout=BOUND_S) == 0  # the server's own exit status: it shut down on SIGTERM
    assert time.monotonic() - started < 2  # no grace period spent: the server was gone at once
    assert _wait_for(lambda: _gone(tree, segment))


def test_a_supervisor_whose_parent_is_already_gone_starts_nothing(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    orphan = subprocess.run(supervised_command(_server_command(ready), parent=1, grace_s=2), timeout=BOUND_S)
    assert orphan.returncode == 1 and not ready.exists()


DRIVER = """
import os, subprocess, sys, time
from bench.supervise import cluster_watch_command
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
agent = subprocess.Popen(sleeper)  # a Ray agent: it outlives its driver unless killed
subprocess.run(cluster_watch_command(os.getpid()), check=True)
later = subprocess.Popen(sleeper)  # started after ray.init: not the cluster's, never the watcher's business
if sys.argv[1] == "shutdown":  # ray.shutdown(): the cluster goes first, the driver lives on
    agent.kill()
    agent.wait()
print(agent.pid, later.pid, flush=True)
time.sleep(600)
"""


def _watcher(driver: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if entry.isdigit() and command[-3:-1] == [b"--driver", str(driver).encode()] and _alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.fixture
def driver() -> Iterator[Callable[[str], tuple[subprocess.Popen, int, int]]]:
    """A stand-in driver with one process of its 'cluster' and one started after the watcher."""
    started: list[tuple[subprocess.Popen, int, int]] = []

    def start(mode: str) -> tuple[subprocess.Popen, int, int]:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, mode], env=env, stdout=subprocess.PIPE, start_new_session=True
        )
        agent, later = (int(pid) for pid in process.stdout.readline().split())
        started.append((process, agent, later))
        return started[-1]

    yield start
    for process, *pids in started:
        for pid in (process.pid, *pids, *_watcher(process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def test_the_cluster_watcher_kills_what_outlives_the_driver_and_nothing_newer(driver) -> None:
    process, agent, later = driver("kill")
    assert _alive(agent) and _watcher(process.pid)

    os.kill(process.pid, signal.SIGKILL)  # the driver alone, as the OOM killer does
    process.wait()

    assert _wait_for(lambda: not _alive(agent))
    assert _wait_for(lambda: not _watcher(process.pid))
    assert _alive(later)


def test_the_cluster_watcher_leaves_when_the_cluster_shuts_down_first(driver) -> None:
    process, _, _ = driver("shutdown")

    assert _wait_for(lambda: not _watcher(process.pid))
    assert process.poll() is None
