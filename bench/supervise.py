"""The supervisor of one model server's process tree: nothing the server starts outlives it, its worker or the run.

A vLLM server is several processes: the API server, its `VLLM::EngineCore` child, the engine's `VLLM::Worker`
and a `multiprocessing.resource_tracker`. Signalling the API server alone does not reach the engine: after a
SIGKILL of the driver's process group, of the Ray worker, or of the API server itself, the engine processes
were left running with parent PID 1 (SIGTERM did not stop them within 5 s), each server's 170-250 MB
`/dev/shm/psm_*` segments stayed allocated, and a shared node measured slower for every later run.

So the server is not the Ray worker's child but this supervisor's (`bench/supervise.py`, run as a script), which:
- is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process of the tree whose parent dies becomes the
  supervisor's child instead of init's, so the whole tree is always the supervisor's descendants;
- watches its own parent (the worker) and the API server through pidfds (`poll`, no polling loop): when
  either exits, or when it gets SIGTERM (`VllmServer.stop`), it stops the tree: SIGTERM to a live API server
  (vLLM's own shutdown) for up to a grace period, then SIGKILL to every descendant left, then it removes the
  shared-memory segments the tree had mapped or open (only those: other servers on the node keep theirs);
- runs in a session of its own, so a kill of the driver's or the worker's process group leaves it standing
  long enough to clean up; the API server gets SIGTERM should the supervisor itself die (PR_SET_PDEATHSIG).

The embedded Ray cluster (`ray.init()` in the driver, no `--address`) needs a watcher of its own: Ray
starts its GCS, raylet and monitors with a parent-death signal, so they die with the driver, but not the
raylet's `ray::DashboardAgent` and `ray::RuntimeEnvAgent`: after a SIGKILL of the driver alone (the OOM
killer's way) they waited about 60 s on the dead GCS before exiting. `watch_cluster` runs beside the driver
from `ray.init()` on and kills whatever of the cluster outlives the driver.

It imports only the standard library: it starts in a fraction of a second and holds a few MB. Linux only
(pidfds, prctl), like the vLLM builds it serves. What it did goes to stderr (for a server: its log).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

SHM = Path("/dev/shm")
# Names of the segments a server tree leaks when killed: Python's multiprocessing.shared_memory (vLLM's
# message queues between the engine and its workers) and joblib/loky's named semaphores (`sem.loky-<pid>-*`).
# Anything else in /dev/shm, even mapped by the tree, belongs to someone else (Ray's object store, say).
SEGMENT_PREFIXES = ("psm_", "sem.loky-")
KILL_WAIT_S = 10.0  # SIGKILL takes effect at once; this only bounds a tree that keeps forking
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PR_SET_CHILD_SUBREAPER = 36


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc (vLLM's engine processes leave the server's process
    group, so a group or session id would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return sorted(tree)


def descendants(root: int) -> list[int]:
    return [pid for pid in process_tree(root) if pid != root]


def shm_segments(pids: Iterable[int]) -> set[Path]:
    """The /dev/shm segments (see SEGMENT_PREFIXES) that these processes have mapped or open, plus loky's
    semaphores named after one of them. What a process has mapped is what it uses: that is the proof that
    the segment belongs to this tree and not to another server on the node."""
    found: set[Path] = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that has just exited
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                _, _, path = line.partition(f" {SHM}/")
                if path:
                    found.add(SHM / path.removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if target.parent == SHM:
                        found.add(target)
        with contextlib.suppress(OSError):
            found.update(SHM.glob(f"sem.loky-{pid}-*"))
    return {path for path in found if path.name.startswith(SEGMENT_PREFIXES)}


def remove_segments(segments: Iterable[Path]) -> list[str]:
    """Unlink the segments that still exist; returns what was removed, in words."""
    removed = []
    for path in sorted(segments):
        with contextlib.suppress(FileNotFoundError):  # the server's own shutdown removed it
            size = path.stat().st_size
            path.unlink()
            removed.append(f"{path} ({size / 2**20:.0f} MiB)")
    return removed


def kill_descendants() -> list[int]:
    """SIGKILL every descendant of this process (a subreaper: orphans of the tree are its children) until
    none is left, reaping them; a process killed mid-fork can leave a child behind, which the next round
    catches. Returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        _reap()
        left = [pid for pid in descendants(os.getpid()) if not _is_zombie(pid)]
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.extend(pid for pid in left if pid not in killed)
        time.sleep(0.05)  # the kernel tears them down; the next round reaps them and checks for stragglers
    _reap()
    return killed


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True  # gone


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _term_with_supervisor() -> None:
    """In the API server before exec: SIGTERM when the supervisor dies (it only dies that way if killed)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _say(message: str) -> None:
    print(f"distill-bench supervisor: {message}", file=sys.stderr, flush=True)


def supervise(command: Sequence[str], parent: int, grace_s: float) -> int:
    """Run `command` until it exits, this process's parent exits, or SIGTERM; then stop its whole tree.
    Returns the command's exit status (128 + signal when a signal ended it)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    parent_fd = os.pidfd_open(parent)
    if os.getppid() != parent:  # the parent died before its pidfd was opened: start nothing
        _say(f"parent {parent} is gone; not starting the server")
        return 1
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)  # noted through the wakeup fd, acted on below
    server = subprocess.Popen(command, preexec_fn=_term_with_supervisor)
    server_fd = os.pidfd_open(server.pid)
    poller = select.poll()
    for fd in (parent_fd, server_fd, wake_r):
        poller.register(fd, select.POLLIN)
    ready = {fd for fd, _ in poller.poll()}
    if server_fd in ready:
        why = f"the server (pid {server.pid}) exited ({server.wait()})"
    elif parent_fd in ready:
        why = f"its worker (pid {parent}) exited"
    else:
        why = "asked to stop"
    _say(f"{why}: stopping the server's process tree")
    stop_tree(server, grace_s)
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


def stop_tree(server: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM a live server and give it `grace_s` to shut its engine down; then SIGKILL whatever of the
    tree is left (an engine whose API server died no longer answers SIGTERM), and remove its segments."""
    me = os.getpid()
    segments = shm_segments(descendants(me))  # before any process that maps them is gone
    if server.poll() is None:
        server.terminate()
        asked = time.monotonic()
        try:
            server.wait(timeout=grace_s)
            _say(f"the server exited {time.monotonic() - asked:.1f} s after SIGTERM")
        except subprocess.TimeoutExpired:
            _say(f"the server did not exit within {grace_s:g} s of SIGTERM: killing it")
            segments |= shm_segments(descendants(me))
            server.kill()
            server.wait()  # reaped here, so its status is kept: kill_descendants reaps any child
    killed = kill_descendants()
    if killed:
        _say(f"killed {len(killed)} process(es) left after the server: {killed}")
    for removed in remove_segments(segments):
        _say(f"removed {removed}")


def watch_cluster(driver: int) -> int:
    """Wait for `driver` to exit, then SIGKILL those of its descendants at the time this started (the
    embedded Ray cluster, just started) that still run. Returns at once when they have all exited first
    (`ray.shutdown()`). Pidfds taken at the start: a pid reused later is never signalled. It detaches (the
    process the driver started exits at once), so the driver has no child to wait for."""
    if os.fork():
        return 0
    driver_fd = os.pidfd_open(driver)
    watched: dict[int, int] = {}  # pidfd -> pid
    for pid in descendants(driver):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                watched[os.pidfd_open(pid)] = pid
    poller = select.poll()
    for fd in (driver_fd, *watched):
        poller.register(fd, select.POLLIN)
    while watched:
        for fd, _ in poller.poll():
            if fd == driver_fd:
                killed = [pid for pidfd, pid in watched.items() if _kill(pidfd)]
                if killed:
                    _say(f"the driver (pid {driver}) exited: killed what it had left of its Ray cluster: {killed}")
                return 0
            poller.unregister(fd)
            os.close(fd)
            del watched[fd]
    return 0


def _kill(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:  # exited already (a zombie not yet reaped included)
        return False


def _script() -> list[str]:
    # Run as a file, not `-m bench.supervise`: the worker's environment need not have the package on its
    # path. `-P`: the script's own folder (bench/, next to names like `stats`) does not go on sys.path.
    return [sys.executable, "-P", str(Path(__file__).resolve())]


def supervised_command(command: Sequence[str], parent: int, grace_s: float) -> list[str]:
    """The command line that runs `command` under a supervisor watching `parent`."""
    return [*_script(), "server", "--parent", str(parent), "--grace-s", f"{grace_s:g}", "--", *command]


def cluster_watch_command(driver: int) -> list[str]:
    """The command line of `watch_cluster` for `driver`: run it (it returns at once) right after `ray.init()`."""
    return [*_script(), "cluster", "--driver", str(driver)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/supervise.py", description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server", help="Run a model server and own its process tree.")
    server.add_argument("--parent", type=int, required=True, help="Stop the tree when this process exits.")
    server.add_argument("--grace-s", type=float, required=True, help="SIGTERM-to-SIGKILL grace for the server.")
    server.add_argument("command", nargs=argparse.REMAINDER, help="-- then the server command.")
    cluster = roles.add_parser("cluster", help="Kill what an embedded Ray cluster leaves after its driver.")
    cluster.add_argument("--driver", type=int, required=True, help="The process that ran ray.init().")
    args = parser.parse_args(argv)
    if args.role == "cluster":
        return watch_cluster(args.driver)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    return supervise(command, args.parent, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
