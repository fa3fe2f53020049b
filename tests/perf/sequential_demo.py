"""Adaptive verdicts, measured: what the sequential mode (bench.sequential) costs and saves.

Why: stopping a (task, pair) at its first decisive look saves documents only if the error rate still holds
and the final-look width is not much worse than the fixed-n interval's. This script prints, on simulated
paired 0/1 documents with known truth, (1) the sequential verdict's rates against the fixed-n Tango verdict
at all documents and against "peeking" (the fixed-n interval read after every chunk), with the mean
documents used; (2) the width of the confidence sequence at all documents over Tango's; (3) the same for perf
blocks (t-mixture sequence); and (4) the replay on a stored results tree (default: the quickstart's): per
(student, task), documents used versus all, the verdicts and whether they agree, over several document
orders, and the document evaluations saved.

No lock needed (numpy only, seconds): `.venv/bin/python tests/perf/sequential_demo.py [--results DIR]`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import sequential, sequential_replay, stats, store  # noqa: E402
from bench.compare import Verdict  # noqa: E402

MARGIN, CONFIDENCE = 0.05, 0.95
# (p10, p01): student-only and teacher-only right; the difference is p10 - p01.
TRUTHS = [(0.05, 0.25), (0.05, 0.15), (0.05, 0.10), (0.0, 0.05), (0.025, 0.05), (0.02, 0.02), (0.1, 0.1), (0.15, 0.05)]
WIDTH_TRUTHS = [(0.005, 0.0), (0.02, 0.02), (0.05, 0.10), (0.1, 0.1)]
NOT_INFERIOR = (Verdict.NON_INFERIOR, Verdict.BETTER)


def gains_of(p10: float, p01: float, replicates: int, documents: int, seed: int) -> np.ndarray:
    uniform = np.random.default_rng(seed).random((replicates, documents))
    return np.where(uniform < p10, 1.0, np.where(uniform < p10 + p01, -1.0, 0.0))


def tango_bounds(gains: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return stats.tango_interval((gains[:, :n] == 1).sum(axis=1), (gains[:, :n] == -1).sum(axis=1), n, CONFIDENCE)


def quality_simulation(replicates: int, documents: int, chunk: int) -> list[dict]:
    looks = sequential.look_counts(documents, chunk)
    rows = []
    for p10, p01 in TRUTHS:
        gains = gains_of(p10, p01, replicates, documents, seed=0)
        result = sequential.sequential_verdicts(gains, looks, MARGIN, CONFIDENCE)
        low, high = tango_bounds(gains, documents)
        peeked = np.zeros(replicates, dtype=bool)
        for n in looks:
            peeked |= tango_bounds(gains, int(n))[0] > -MARGIN
        rows.append(
            dict(
                diff=round(p10 - p01, 4),
                p10=p10,
                p01=p01,
                sequential_not_inferior=float(np.isin(result.verdicts, NOT_INFERIOR).mean()),
                sequential_inferior=float((result.verdicts == Verdict.INFERIOR).mean()),
                mean_documents=float(result.documents_used.mean()),
                fixed_not_inferior=float((low > -MARGIN).mean()),
                fixed_inferior=float((high < -MARGIN).mean()),
                peeking_not_inferior=float(peeked.mean()),
            )  # fmt: skip
        )
    return rows


def width_ratios(replicates: int, documents: int) -> list[dict]:
    rows = []
    for p10, p01 in WIDTH_TRUTHS:
        gains = gains_of(p10, p01, replicates, documents, seed=1)
        bounds = np.array([sequential.confidence_bounds(row, documents, CONFIDENCE) for row in gains])
        low, high = tango_bounds(gains, documents)
        width, tango = float(np.mean(bounds[:, 1] - bounds[:, 0])), float(np.mean(high - low))
        rows.append(dict(p10=p10, p01=p01, sequence_width=width, tango_width=tango, ratio=width / tango))
    return rows


def perf_simulation(replicates: int, blocks: int) -> list[dict]:
    rows = []
    for mean_log, sd in [(0.0, 0.1), (0.1, 0.1), (0.6, 0.1), (0.6, 0.3)]:
        logs = np.random.default_rng(2).normal(mean_log, sd, size=(replicates, blocks))
        decisions, used = sequential.sequential_ratios(logs, 1.0, CONFIDENCE)
        fixed = [stats.t_interval(row, CONFIDENCE) for row in logs[: min(replicates, 2000)]]
        fixed_decided = np.mean([low > 0 or high < 0 for low, high in fixed])
        rows.append(
            dict(
                true_ratio=float(np.exp(mean_log)),
                block_sd=sd,
                decided=float((decisions != "undecided").mean()),
                mean_blocks=float(used.mean()),
                fixed_t_decided_at_all_blocks=float(fixed_decided),
            )  # fmt: skip
        )
    return rows


def eval_seconds(run_dir: Path) -> dict[tuple[str, str, str], float]:
    """Per (run, model, task), seconds from "<model>: eval <task>" to "done eval <model> × <task>" in run.log."""
    started, seconds = {}, {}
    stamp = r"^(\S+ \S+),\d+ .*?: "
    log = run_dir / "run.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        if match := re.match(stamp + r"(\S+): eval (\S+)$", line):
            started[(match[2], match[3])] = datetime.fromisoformat(match[1])
        elif (match := re.match(stamp + r"done eval (\S+) × (\S+):", line)) and (match[2], match[3]) in started:
            elapsed = datetime.fromisoformat(match[1]) - started[(match[2], match[3])]
            seconds[(run_dir.name, match[2], match[3])] = elapsed.total_seconds()
    return seconds


def documents_used_per_model(quality: list[sequential_replay.QualityReplay]) -> dict[tuple, int]:
    """Per (run, model, task, order): documents an adaptive run evaluates; a teacher's serve all its students."""
    used: dict[tuple, int] = {}
    for row in quality:
        for model in (row.student, row.teacher):
            key = (row.run_id, model, row.task, row.order_seed)
            used[key] = max(used.get(key, 0), row.documents_used)
    return used


def replay(results: Path, chunk: int, orders: int) -> dict:
    quality, perf = sequential_replay.replay_results(results, chunk, seeds=range(orders))
    rows: dict[tuple, dict] = {}
    for row in quality:
        entry = rows.setdefault(
            (row.student, row.task, row.metric),
            dict(student=row.student, task=row.task, metric=row.metric, documents_full=row.documents_full,
                 full_verdict=str(row.full_verdict), used=[], verdicts=[], agrees=[], opposite=[]),
        )  # fmt: skip
        entry["used"].append(row.documents_used)
        entry["verdicts"].append(str(row.sequential_verdict))
        entry["agrees"].append(row.agrees)
        entry["opposite"].append(row.opposite)
    savings = sequential_replay.document_savings(quality)
    durations = {key: value for run in store.run_dirs(results) for key, value in eval_seconds(run).items()}
    full_documents = {(row.run_id, row.task): row.documents_full for row in quality}
    # Proportional estimate: a cell's measured time times the share of its documents an adaptive run skips.
    seconds_saved = sum(
        durations.get((run, model, task), 0.0) * (1 - used / full_documents[(run, task)])
        for (run, model, task, _), used in documents_used_per_model(quality).items()
    )
    return dict(
        chunk_documents=chunk, orders=orders, rows=list(rows.values()),
        evaluations_full=sum(s.evaluations_full for s in savings) / orders,
        evaluations_used=sum(s.evaluations_used for s in savings) / orders,
        eval_seconds_total=sum(durations.values()), eval_seconds_saved_estimate=seconds_saved / orders,
        perf=[dict(student=r.student, workload=r.workload, blocks_full=r.blocks_full, blocks_used=r.blocks_used,
                   decision=str(r.decision), full_decision=str(r.full_decision), ratio=r.ratio, ci_low=r.ci_low,
                   ci_high=r.ci_high) for r in perf],
    )  # fmt: skip


def print_report(result: dict) -> None:
    quality = result["quality_simulation"]
    print(f"1. Paired 0/1 documents, margin {MARGIN}, {CONFIDENCE:.0%}: sequential (every {quality['chunk']} of "
          f"{quality['documents']}) vs fixed-n Tango, {quality['replicates']} runs per truth")  # fmt: skip
    print("   diff   p10   p01 | seq NI+better  seq inferior  mean docs | fixed NI+better  fixed inferior | peek NI")
    for r in quality["rows"]:
        print(f"  {r['diff']:+.3f} {r['p10']:.3f} {r['p01']:.3f} | {r['sequential_not_inferior']:13.4f} "
              f"{r['sequential_inferior']:13.4f} {r['mean_documents']:10.0f} | {r['fixed_not_inferior']:15.4f} "
              f"{r['fixed_inferior']:15.4f} | {r['peeking_not_inferior']:7.4f}")  # fmt: skip
    print(f"2. Width at all {quality['documents']} documents, sequence / Tango:")
    for r in result["widths"]:
        print(f"   p10 {r['p10']:.3f} p01 {r['p01']:.3f}: {r['sequence_width']:.4f} / {r['tango_width']:.4f} "
              f"= {r['ratio']:.2f}x")  # fmt: skip
    print(f"3. Perf blocks (t-mixture sequence, target 1, up to {result['perf_blocks']} blocks):")
    for r in result["perf_simulation"]:
        print(
            f"   ratio {r['true_ratio']:.2f} (block sd {r['block_sd']}): decided {r['decided']:.4f}, mean blocks "
            f"{r['mean_blocks']:.2f}; fixed t at all blocks decided {r['fixed_t_decided_at_all_blocks']:.4f}"
        )
    rep = result.get("replay")
    if rep is None:
        return
    print(f"4. Replay of {result['results']} every {rep['chunk_documents']} documents, {rep['orders']} orders:")
    for r in rep["rows"]:
        print(
            f"   {r['student']:18} {r['task']:12} {r['metric']:11} used {r['used'][0]:4}/{r['documents_full']} "
            f"({r['verdicts'][0]} vs full {r['full_verdict']}{', agree' if r['agrees'][0] else ''}); over orders: "
            f"mean used {np.mean(r['used']):.0f}, agree {np.mean(r['agrees']):.0%}, "
            f"opposite {np.mean(r['opposite']):.0%}"
        )
    print(f"   document evaluations (all models): {rep['evaluations_used']:.0f} of {rep['evaluations_full']:.0f} "
          f"(mean over orders); eval seconds saved, proportional estimate: {rep['eval_seconds_saved_estimate']:.1f} "
          f"of {rep['eval_seconds_total']:.1f}")  # fmt: skip
    for r in rep["perf"]:
        print(
            f"   perf {r['student']} {r['workload']}: blocks {r['blocks_used']}/{r['blocks_full']}, "
            f"{r['decision']} (full: {r['full_decision']}), "
            f"ratio {r['ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=10000)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--perf-blocks", type=int, default=10)
    parser.add_argument("--results", type=Path, default=REPO.parent.parent / "main" / "results" / "quickstart")
    parser.add_argument("--replay-chunk", type=int, default=25)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args()
    result = dict(
        quality_simulation=dict(
            chunk=args.chunk, documents=args.documents, replicates=args.replicates,
            rows=quality_simulation(args.replicates, args.documents, args.chunk),
        ),
        widths=width_ratios(200, args.documents), perf_blocks=args.perf_blocks,
        perf_simulation=perf_simulation(args.replicates, args.perf_blocks), results=str(args.results),
    )  # fmt: skip
    if args.results.exists():
        result["replay"] = replay(args.results, args.replay_chunk, args.orders)
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
