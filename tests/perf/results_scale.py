"""Results at leaderboard scale: `compare` and `leaderboard` over a synthetic tree of many copies of a real run.

Why: a leaderboard build reads every run anyone stored. Issue 8 measured 670 runs of the quickstart's shape
at 343 s and 1.2 GB for `distill-bench compare`; the target is seconds and < 500 MB. This script builds such a
tree from one real run's files and times the commands as a user runs them (a fresh process each time, so
imports count), old code against new.

The tree: run i of `--runs` is a copy of `--source` (a finished run directory, e.g. the quickstart's) named
`<source>-<i>`, every cell key re-keyed (sha256 of key and i), every Parquet file rewritten with the new
`run_id` and `cell_key` and its metadata kept, `run.json`'s `run_id` and `cell_keys` rewritten to match. So
every run is valid for the store's checks and the keys stay consistent; the numbers are the source run's.
The tree is built once per (source, runs) under `--work` and reused.

Old code: `bench/` of `--baseline-rev` (git archive, nothing in the repository changes), run with that
directory first on PYTHONPATH. New code: this checkout. Equivalence: on a `--check-runs` tree, the old and
new `compare --format json` outputs must be equal row for row and value for value, and so must the two
`leaderboard.parquet` files; the new code is also checked on a compacted copy and from its
`comparison.parquet` files. A mismatch ends the script with exit code 1 before any timing.

Timing protocol: each variant runs each command (`compare --format json`, `compare` with its table,
`leaderboard`) `--repeats` times in a fresh process (the old code at full scale `--baseline-repeats` times:
tens of minutes each, so `--only new` skips it); the figures are the median and range of wall seconds and peak
RSS (the child's `ru_maxrss`), with its CPU seconds (user + system, which contention for the cores inflates
least) and the load average as it ended (the machine is shared). Variants of the new code: "cold" (no
comparison.parquet: every run compared from its cell files, and the files written), "warm" (every run's
comparison.parquet current), and the same two on a compacted copy of the tree. Run it under the machine's
lock:

    flock /tmp/heavy.lock .venv/bin/python tests/perf/results_scale.py --source results/quickstart --runs 670
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
BASELINE_REV = "1ece355"  # main before "results at leaderboard scale" (issue 8): the per-pair code path
CLI = "from bench.cli import app; app()"
COMPARE_FILE = "comparison.parquet"
COMPACTED_STEM = "compacted"
TREE_DONE = ".complete"  # written last: a tree without it was interrupted and is rebuilt


@dataclass(frozen=True)
class Measurement:
    """One command run in a fresh process."""

    variant: str
    command: str
    repeat: int
    wall_s: float
    cpu_s: float  # user + system of the process: what contention for the cores inflates least
    peak_rss_mb: float
    exit_code: int
    load_1min: float  # the machine's load average as the command ended: other work on the cores


# -- the tree -----------------------------------------------------------------------------------------


def _new_key(key: str, index: int) -> str:
    return hashlib.sha256(f"{key}:{index}".encode()).hexdigest()[:16]


def _parquet_files(run: Path) -> list[Path]:
    return sorted(path for path in run.glob("*/*.parquet") if not path.name.startswith("."))


def _rekeyed(table: pa.Table, run_id: str, cell_key: str) -> pa.Table:
    for name, value in (("run_id", run_id), ("cell_key", cell_key)):
        index = table.schema.get_field_index(name)
        column = pa.array([value] * table.num_rows, table.schema.field(name).type)
        table = table.set_column(index, table.schema.field(name), column)
    return table


def synthesise(source: Path, root: Path, runs: int) -> Path:
    """`runs` re-keyed copies of the run directory `source` under `root`; reused when already complete."""
    if (root / TREE_DONE).exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    manifest = json.loads((source / "run.json").read_text())
    tables = {path: pq.read_table(path) for path in _parquet_files(source)}
    started = time.perf_counter()
    for index in range(runs):
        run_id = f"{source.name}-{index:04d}"
        run = root / run_id
        for path, table in tables.items():
            key = _new_key(path.stem, index)
            target = run / path.parent.name / f"{key}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_rekeyed(table, run_id, key), target)
        keys = sorted(_new_key(key, index) for key in manifest["cell_keys"])
        (run / "run.json").write_text(json.dumps({**manifest, "run_id": run_id, "cell_keys": keys}, indent=2))
        if index % 100 == 99:
            print(f"  synthesised {index + 1}/{runs} runs ({time.perf_counter() - started:.0f} s)", flush=True)
    (root / TREE_DONE).write_text(f"{runs} copies of {source}\n")
    return root


def tree_shape(root: Path) -> dict[str, int]:
    runs = [path for path in root.iterdir() if path.is_dir()]
    manifests = [json.loads((run / "run.json").read_text()) for run in runs]
    files = sum(len(_parquet_files(run)) for run in runs)
    samples = sum(pq.read_metadata(path).num_rows for path in root.glob("*/eval_samples/*.parquet"))
    cells = sum(
        len({p.stem for p in run.glob("eval_scores/*.parquet")} | {p.stem for p in run.glob("perf_summary/*.parquet")})
        for run in runs
    )
    return {
        "runs": len(runs),
        "cells": cells,
        "parquet_files": files,
        "eval_sample_rows": samples,
        "manifest_keys": sum(len(m["cell_keys"]) for m in manifests),
    }


def copy_tree(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def drop_comparisons(root: Path) -> None:
    for path in root.glob(f"*/{COMPARE_FILE}"):
        path.unlink()


# -- running the commands -----------------------------------------------------------------------------


def old_code(rev: str, work: Path) -> Path:
    """`bench/` at `rev`, extracted under `work` (git archive: the repository is not touched)."""
    target = work / f"code-{rev}"
    if not (target / "bench" / "cli.py").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev, "bench"], cwd=REPO, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target


def run_cli(code: Path, args: list[str], stdout: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MB, exit code) of one `distill-bench ARGS` in a fresh process with `code` first."""
    env = {**os.environ, "PYTHONPATH": str(code), "COLUMNS": "200"}
    with stdout.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=out, stderr=subprocess.PIPE, env=env)
        stderr = process.stderr.read() if process.stderr else b""
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        print(f"  {args[0]} exited {process.returncode}: {stderr.decode(errors='replace')[-500:]}", flush=True)
    return wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode


def commands(tree: Path, out: Path) -> dict[str, list[str]]:
    return {
        "compare": ["compare", str(tree), "--format", "json"],
        "compare-table": ["compare", str(tree)],
        "leaderboard": ["leaderboard", str(tree), "--out", str(out / "board")],
    }


def measure(variant: str, code: Path, tree: Path, out: Path, repeats: int, before=None) -> list[Measurement]:
    """`repeats` runs of each command; `before()` runs ahead of every one (e.g. to drop the comparisons)."""
    found = []
    for repeat in range(repeats):
        for name, args in commands(tree, out).items():
            if before is not None:
                before()
            wall_s, cpu_s, rss_mb, code_ = run_cli(code, args, out / f"{variant}-{name}.out")
            load = os.getloadavg()[0]
            found.append(Measurement(variant, name, repeat, wall_s, cpu_s, rss_mb, code_, load))
            print(
                f"  {variant:<22} {name:<13} repeat {repeat}: {wall_s:7.2f} s wall {cpu_s:7.2f} s CPU {rss_mb:5.0f} MB"
                f"  load {load:.1f}",
                flush=True,
            )
    return found


# -- equivalence ----------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def same_rows(label: str, expected: list[dict], found: list[dict]) -> bool:
    if expected == found:
        print(f"  {label}: {len(found)} rows, identical", flush=True)
        return True
    print(f"  {label}: DIFFERENT ({len(expected)} rows expected, {len(found)} found)", flush=True)
    for old, new in zip(expected, found, strict=False):
        if old != new:
            diff = {
                key: (old.get(key), new.get(key)) for key in old.keys() | new.keys() if old.get(key) != new.get(key)
            }
            print(f"    first differing row {old.get('run_id')} {old.get('student')} {old.get('task')}: {diff}")
            break
    return False


def check_equivalence(old: Path, source: Path, work: Path, runs: int, compact) -> bool:
    """Old and new code give the same comparison rows and leaderboard on a small tree (see the docstring)."""
    tree = synthesise(source, work / f"check-{runs}", runs)
    scratch = work / "check-out"
    scratch.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, code, variant_tree in (("old", old, tree), ("new", REPO, tree), ("new-cached", REPO, tree)):
        if label == "new":
            drop_comparisons(variant_tree)
        args = commands(variant_tree, scratch / label)
        for name in ("compare", "leaderboard"):
            *_, exit_code = run_cli(code, args[name], scratch / f"{label}-{name}.json")
            if exit_code:
                return False
        results[label] = (
            _rows(scratch / f"{label}-compare.json"),
            pq.read_table(scratch / label / "board" / "leaderboard.parquet"),
        )
    compacted = copy_tree(tree, work / f"check-{runs}-compacted")
    compact(compacted)
    args = commands(compacted, scratch / "compacted")
    for name in ("compare", "leaderboard"):
        run_cli(REPO, args[name], scratch / f"compacted-{name}.json")
    results["compacted"] = (
        _rows(scratch / "compacted-compare.json"),
        pq.read_table(scratch / "compacted" / "board" / "leaderboard.parquet"),
    )
    expected_rows, expected_board = results["old"]
    ok = True
    for label in ("new", "new-cached", "compacted"):
        rows, board = results[label]
        ok &= same_rows(f"compare, {label} vs old", expected_rows, rows)
        same_board = board.equals(expected_board)
        print(f"  leaderboard.parquet, {label} vs old: {'identical' if same_board else 'DIFFERENT'}", flush=True)
        ok &= same_board
    return ok


# -- the report -------------------------------------------------------------------------------------------


def summary_rows(found: list[Measurement]) -> list[dict]:
    rows = []
    for variant, command in dict.fromkeys((m.variant, m.command) for m in found):
        runs = [m for m in found if (m.variant, m.command) == (variant, command)]
        walls, cpus, rss = [m.wall_s for m in runs], [m.cpu_s for m in runs], [m.peak_rss_mb for m in runs]
        rows.append({
            "variant": variant, "command": command, "repeats": len(runs),
            "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
            "cpu_s_median": statistics.median(cpus), "cpu_s_min": min(cpus), "cpu_s_max": max(cpus),
            "peak_rss_mb_median": statistics.median(rss), "peak_rss_mb_min": min(rss), "peak_rss_mb_max": max(rss),
            "exit_codes": sorted({m.exit_code for m in runs}),
        })  # fmt: skip
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'wall s median [range]':>26} {'CPU s median [range]':>26} {'peak RSS MB median [range]':>28}"
    print(f"\n{'variant':<22} {'command':<13} {'n':>2} {header}")
    for row in rows:
        wall = f"{row['wall_s_median']:.2f} [{row['wall_s_min']:.2f}, {row['wall_s_max']:.2f}]"
        cpu = f"{row['cpu_s_median']:.2f} [{row['cpu_s_min']:.2f}, {row['cpu_s_max']:.2f}]"
        rss = f"{row['peak_rss_mb_median']:.0f} [{row['peak_rss_mb_min']:.0f}, {row['peak_rss_mb_max']:.0f}]"
        print(f"{row['variant']:<22} {row['command']:<13} {row['repeats']:>2} {wall:>26} {cpu:>26} {rss:>28}")


def compact_tree(root: Path) -> None:
    """`distill-bench compact` on every run of the tree (new code, in this process: one start-up, not 670)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.compact import compact_run

    for run in sorted(path for path in root.iterdir() if path.is_dir()):
        compact_run(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO / "results" / "quickstart", help="a finished run directory")
    parser.add_argument("--runs", type=int, default=670)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--baseline-repeats", type=int, default=1, help="old code at full scale: minutes per run")
    parser.add_argument("--check-runs", type=int, default=20, help="runs of the old-vs-new equivalence tree")
    parser.add_argument("--only", choices=("baseline", "new", "all"), default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/results_scale"))
    parser.add_argument("--record", type=Path, help="write the JSON record here")
    options = parser.parse_args()

    source = options.source.resolve()
    digest = hashlib.sha256("".join(p.name for p in _parquet_files(source)).encode()).hexdigest()[:8]
    tree = synthesise(source, options.work / f"tree-{options.runs}-{digest}", options.runs)
    shape = tree_shape(tree)
    print(f"tree {tree}: {shape}", flush=True)
    old = old_code(options.baseline_rev, options.work)
    out = options.work / "out"
    out.mkdir(parents=True, exist_ok=True)
    found: list[Measurement] = []
    if options.only in ("new", "all"):
        print(f"equivalence on {options.check_runs} runs, old ({options.baseline_rev}) vs new:", flush=True)
        if not check_equivalence(old, source, options.work, options.check_runs, compact_tree):
            return 1
    if options.only in ("baseline", "all"):
        found += measure(f"old {options.baseline_rev}", old, tree, out, options.baseline_repeats)
    if options.only in ("new", "all"):
        found += measure("new, cold", REPO, tree, out, options.repeats, before=lambda: drop_comparisons(tree))
        found += measure("new, warm", REPO, tree, out, options.repeats)
        compacted = copy_tree(tree, options.work / f"tree-{options.runs}-{digest}-compacted")
        started = time.perf_counter()
        compact_tree(compacted)
        print(f"  compacted {shape['runs']} runs in {time.perf_counter() - started:.1f} s", flush=True)
        found += measure(
            "new, compacted, cold", REPO, compacted, out, options.repeats, before=lambda: drop_comparisons(compacted)
        )
        found += measure("new, compacted, warm", REPO, compacted, out, options.repeats)
    rows = summary_rows(found)
    print_table(rows)
    record = {
        "benchmark": "results_scale",
        "command": sys.argv,
        "tree": shape,
        "baseline_rev": options.baseline_rev,
        "cpus": os.cpu_count(),
        "summary": rows,
        "runs": [asdict(m) for m in found],
    }
    if options.record:
        options.record.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(m.exit_code == 0 for m in found) else 1


if __name__ == "__main__":
    sys.exit(main())
