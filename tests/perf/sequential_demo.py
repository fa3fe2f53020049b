"""Adaptive verdicts, measured: what the sequential mode (bench.sequential) costs and saves.

Why: stopping a (task, pair) at its first decisive look saves documents only if the error rate still holds
and the final-look width is not much worse than the fixed-n interval's. This script prints, on simulated
paired 0/1 documents with known truth, (1) the sequential verdict's rates against the fixed-n Tango verdict
at all documents and against "peeking" (the fixed-n interval read after every chunk), with the mean
documents used; (2) the width of the confidence sequence at all documents over Tango's; (3) the same for perf
blocks (t-mixture sequence); and (4) the product's replay on a stored results tree (default: the
quickstart's; `distill-bench compare RUN --sequential` prints the same): per (student, task), documents used
versus all, the verdicts and whether they agree, over several document orders, and the document evaluations
and eval device-seconds saved.

No lock needed (numpy only, seconds): `.venv/bin/python tests/perf/sequential_demo.py [--results DIR]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import adaptive, sequential, stats  # noqa: E402
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


def replay(results: Path, chunk: int, orders: int) -> dict:
    """The product's replay (`distill-bench compare --sequential`, `bench.adaptive`) as one JSON-able dict."""
    rows = adaptive.replay_rows(results, orders, chunk)
    quality = [
        dict(student=q.student, task=q.task, metric=q.metric, documents_full=q.documents_full,
             full_verdict=str(q.full_verdict), used_median=q.documents_used.median, used_low=q.documents_used.low,
             used_high=q.documents_used.high, verdicts={str(v): n for v, n in q.verdicts.items()},
             agree=q.agree / q.orders, opposite=q.opposite / q.orders)
        for q in adaptive.summarize_quality(rows)
    ]  # fmt: skip
    runs = [
        dict(run=r.run_id, evaluations_full=r.evaluations_full, evaluations_used_median=r.evaluations_used.median,
             device_s_total=r.device_s_total, device_s_saved_median=r.device_s_saved and r.device_s_saved.median,
             device_s_saved_low=r.device_s_saved and r.device_s_saved.low,
             device_s_saved_high=r.device_s_saved and r.device_s_saved.high)
        for r in adaptive.run_savings(rows)
    ]  # fmt: skip
    perf = [
        dict(student=r.student, workload=r.workload, blocks_full=r.blocks_full, blocks_used=r.blocks_used,
             decision=str(r.sequential_decision), full_decision=str(r.full_decision), ratio=r.ratio, ci_low=r.ci_low,
             ci_high=r.ci_high)
        for r in rows if r.kind == adaptive.ReplayKind.PERF
    ]  # fmt: skip
    return dict(chunk_documents=chunk, orders=orders, rows=quality, runs=runs, perf=perf)


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
        verdicts = ", ".join(f"{verdict} {count}" for verdict, count in r["verdicts"].items())
        print(
            f"   {r['student']:18} {r['task']:12} {r['metric']:11} used {r['used_median']:.0f} "
            f"[{r['used_low']}, {r['used_high']}]/{r['documents_full']} ({verdicts}; full data: {r['full_verdict']}), "
            f"agree {r['agree']:.0%}, opposite {r['opposite']:.0%}"
        )
    for r in rep["runs"]:
        saved = (
            "not recorded (eval_wall_s, schema 5)" if r["device_s_total"] is None else
            f"{r['device_s_saved_median']:.1f} [{r['device_s_saved_low']:.1f}, {r['device_s_saved_high']:.1f}] "
            f"of {r['device_s_total']:.1f}"
        )  # fmt: skip
        print(f"   {r['run']}: document evaluations (all models, median of orders) {r['evaluations_used_median']:.0f} "
              f"of {r['evaluations_full']}; eval device-seconds saved, proportional estimate: {saved}")  # fmt: skip
    for r in rep["perf"]:
        interval = "unbounded" if r["ci_low"] is None else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        print(
            f"   perf {r['student']} {r['workload']}: blocks {r['blocks_used']}/{r['blocks_full']}, "
            f"{r['decision']} (full: {r['full_decision']}), ratio {r['ratio']:.2f} {interval}"
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
