"""Old code against new, interleaved: `compare --format json` over a synthetic many-run tree, cold, and the
adaptive replay (`compare --sequential`, never stored) on one finished run; each command in a fresh process,
old then new in each pair, each variant on its own copy of the results (so neither invalidates the other's
comparison.parquet). Prints medians, ranges and new/old per pair. Run under the machine lock.

Example: .venv/bin/python tests/perf/compare_old_new.py --rev 37c5a65 --tree /tmp/results_scale/tree-670-9710cd0b
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from results_scale import REPO, copy_tree, drop_comparisons, old_code, run_cli


def report(label: str, pairs: list[tuple[float, float]]) -> None:
    ratios = [new / old for old, new in pairs]
    olds, news = [old for old, _ in pairs], [new for _, new in pairs]

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"

    print(f"{label}: old {spread(olds)} s, new {spread(news)} s, new/old {spread(ratios)} over {len(pairs)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the old code's git revision")
    parser.add_argument("--tree", type=Path, required=True, help="a results tree (tests/perf/results_scale.py)")
    parser.add_argument("--run", type=Path, default=REPO / "results" / "quickstart", help="a finished run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_old_new"))
    parser.add_argument("--replay-pairs", type=int, default=7)
    parser.add_argument("--cold-pairs", type=int, default=3)
    args = parser.parse_args()
    codes = {"old": old_code(args.rev, args.work), "new": REPO}
    out = args.work / "out"

    runs = {name: copy_tree(args.run, args.work / f"run-{name}" / args.run.name) for name in codes}
    replay = {name: ["compare", str(runs[name]), "--sequential", "--orders", "19"] for name in codes}
    for name, code in codes.items():
        run_cli(code, replay[name], out)  # warm-up: each copy's comparison.parquet
    pairs = [tuple(run_cli(codes[name], replay[name], out)[0] for name in codes) for _ in range(args.replay_pairs)]
    report(f"compare {args.run.name} --sequential --orders 19, wall", pairs)

    trees = {name: copy_tree(args.tree, args.work / f"tree-{name}") for name in codes}
    pairs = []
    for _ in range(args.cold_pairs):
        for tree in trees.values():
            drop_comparisons(tree)
        pairs.append(
            tuple(
                run_cli(codes[name], ["compare", str(trees[name]), "--format", "json"], args.work / f"{name}.json")[0]
                for name in codes
            )
        )
    report(f"compare {len(list(args.tree.glob('*/run.json')))} runs cold, wall", pairs)
    print("same output:", (args.work / "old.json").read_bytes() == (args.work / "new.json").read_bytes())


if __name__ == "__main__":
    main()
