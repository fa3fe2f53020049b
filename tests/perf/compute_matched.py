"""Compute-matched quality on the toy pair: does the student's maj@k close toy_add's gap, and at what cost?

Why: the distilled student costs a fraction of the teacher per token; at equal cost per question it can
answer k times and vote. This script measures it with the product itself, in two steps:

1. Seeds: against one real vLLM CPU server (the student), lm-eval's `local-completions` and our
   `distill-completions` (bench/lmeval_model.py) on the sampled toy_add (9 answers per document): how many
   documents get more than one distinct answer (lm-eval's own sends one seed: expected none), whether a
   second run reproduces every answer at every position, and whether greedy toy_add is unchanged.
2. The comparison: `distill-bench run tests/perf/compute_matched.yaml` (teacher and distilled student on
   greedy toy_add and the sampled variant, limit 200, plus a short load workload whose $/Mtok prices an
   answer), then bench.matched on the stored results: per k, student maj@k against teacher pass@1 with
   the paired interval and verdict, the $/question of each, and whether k answers fit the teacher's budget.

Tokens per answer are counted in the stored responses with the model's tokenizer (teacher: greedy toy_add;
student: maj@1, its first sampled answer, unvoted); $/Mtok is the median over blocks of the workload's level.

Run under the lock (two servers at a time at most, about 5-8 min on 2 cores):
`flock /tmp/heavy.lock .venv/bin/python tests/perf/compute_matched.py [--results DIR] [--skip-seed-check]`
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import matched, store  # noqa: E402
from bench.config import ModelConfig, ServeConfig  # noqa: E402
from bench.evaluate import Endpoint, _model_args  # noqa: E402
from bench.toy.tasks import SAMPLED_TASK  # noqa: E402

CONFIG = REPO / "tests" / "perf" / "compute_matched.yaml"
TEACHER, STUDENT = "toy-teacher", "toy-student-kd"
TOY_SERVE = ServeConfig(dtype="float32", max_model_len=64, cpu_kv_cache_gib=1, extra_args=("--enforce-eager",))
SEED_CHECK_DOCS = 20
GREEDY_CHECK_DOCS = 40
MAX_GEN_TOKS = 16
MARGIN, CONFIDENCE = 0.05, 0.95


def lm_eval_responses(endpoint: Endpoint, model_name: str, task: str, include_path: str, limit: int) -> list:
    """Raw responses per document (lists of its answers, in repeat order) from one lm-eval run."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import bench.lmeval_model  # noqa: F401  # registers distill-completions

    results = lm_eval.simple_evaluate(
        model=model_name,
        model_args=_model_args(endpoint, seed=0),
        tasks=[task],
        limit=limit,
        log_samples=True,
        task_manager=TaskManager(include_path=include_path, include_defaults=False),
    )
    samples = [s for s in results["samples"][task] if s["filter"] == results["samples"][task][0]["filter"]]
    # A logged sample's `resps` holds one list per request: the document's k answers, in repeat order.
    return [s["resps"][0] for s in samples]


def check_seeds(log_dir: Path) -> None:
    from bench.serve import VllmServer

    model = ModelConfig(name=STUDENT, source=str(REPO / "bench/toy/models/student-kd"), serve=TOY_SERVE)
    server = VllmServer(model, seed=0, log_path=log_dir / "seed-check-server.log")
    server.start()
    try:
        endpoint = Endpoint(base_url=server.base_url, served_model=STUDENT, tokenizer=model.source)
        sampled = "configs/tasks/toy_sampled"
        plain = lm_eval_responses(endpoint, "local-completions", SAMPLED_TASK, sampled, SEED_CHECK_DOCS)
        ours = lm_eval_responses(endpoint, "distill-completions", SAMPLED_TASK, sampled, SEED_CHECK_DOCS)
        again = lm_eval_responses(endpoint, "distill-completions", SAMPLED_TASK, sampled, SEED_CHECK_DOCS)
        greedy_plain = lm_eval_responses(
            endpoint, "local-completions", "toy_add", "configs/tasks/toy", GREEDY_CHECK_DOCS
        )
        greedy_ours = lm_eval_responses(
            endpoint, "distill-completions", "toy_add", "configs/tasks/toy", GREEDY_CHECK_DOCS
        )
    finally:
        server.stop()
    varied = [sum(len(set(answers)) > 1 for answers in run) for run in (plain, ours)]
    print(f"seed check, {SAMPLED_TASK}, {SEED_CHECK_DOCS} documents x {len(ours[0])} answers (student):")
    print(
        f"  documents with more than one distinct answer: local-completions {varied[0]},"
        f" distill-completions {varied[1]}"
    )
    print(
        f"  mean distinct answers per document, distill-completions: {statistics.mean(len(set(a)) for a in ours):.2f}"
    )
    print(f"  second distill-completions run identical at every position: {ours == again}")
    print(
        f"  greedy toy_add ({GREEDY_CHECK_DOCS} documents) identical to local-completions:"
        f" {greedy_plain == greedy_ours}"
    )


def run_product(results_dir: Path) -> Path:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bench.cli", "run", str(CONFIG), "--results-dir", str(results_dir)]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    print(completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else completed.stderr[-2000:])
    if completed.returncode != 0:
        raise SystemExit(f"distill-bench run exited {completed.returncode}:\n{completed.stderr[-4000:]}")
    return results_dir


def per_document(samples: list[dict], model: str, task: str, filter_name: str) -> dict[int, dict]:
    return {
        s["doc_id"]: s
        for s in samples
        if s["model"] == model and s["task"] == task and s["filter"] == filter_name and s["metric"] == "exact_match"
    }


def answer_cost(model: str, docs: dict[int, dict], summaries: list[dict]) -> matched.AnswerCost:
    count = matched.tokenizer_counter(str(REPO / "bench/toy/models" / model.removeprefix("toy-")))
    tokens = matched.mean_generated_tokens((s["response"] for s in docs.values()), count, MAX_GEN_TOKS)
    prices = [s["usd_per_mtok_output"] for s in summaries if s["model"] == model and s["usd_per_mtok_output"]]
    return matched.AnswerCost(output_tokens_per_answer=tokens, usd_per_mtok_output=statistics.median(prices))


def report(results_dir: Path) -> None:
    samples = store.read_table(results_dir, "eval_samples").to_pylist()
    summaries = store.read_table(results_dir, "perf_summary").to_pylist()
    teacher_docs = per_document(samples, TEACHER, "toy_add", "none")
    student_greedy = per_document(samples, STUDENT, "toy_add", "none")
    filters = {s["filter"] for s in samples if s["task"] == SAMPLED_TASK}
    votes = {k: f for f in filters if (k := matched.vote_k(f)) is not None}
    student_by_k = {k: per_document(samples, STUDENT, SAMPLED_TASK, f) for k, f in votes.items()}
    teacher_votes = {k: per_document(samples, TEACHER, SAMPLED_TASK, f) for k, f in votes.items()}
    teacher_cost = answer_cost(TEACHER, teacher_docs, summaries)
    student_cost = answer_cost(STUDENT, student_by_k[1], summaries)
    points = matched.compare_matched(
        {d: s["value"] for d, s in teacher_docs.items()},
        {k: {d: s["value"] for d, s in docs.items()} for k, docs in student_by_k.items()},
        teacher_cost,
        student_cost,
        MARGIN,
        CONFIDENCE,
    )
    greedy = statistics.mean(s["value"] for s in student_greedy.values())
    for name, cost in (("teacher", teacher_cost), ("student", student_cost)):
        print(
            f"{name}: {cost.output_tokens_per_answer:.2f} output tokens/answer x ${cost.usd_per_mtok_output:.4f}/Mtok"
            f" = ${cost.usd_per_answer * 1e6:.3f} per million answers"
        )
    print(
        f"affordable k (k x student $/answer <= teacher $/answer): {matched.affordable_k(student_cost, teacher_cost)}"
    )
    print(f"student greedy pass@1 on toy_add: {greedy:.3f}; teacher greedy pass@1: {points[0].teacher_score:.3f}")
    print(
        "| k | student maj@k | teacher maj@k | teacher pass@1 | diff CI (maj@k - pass@1) | verdict"
        " | student $/q | teacher $/q | k x cost <= teacher |"
    )
    print("|---:|---:|---:|---:|---|---|---:|---:|---|")
    for p in points:
        teacher_k = statistics.mean(s["value"] for s in teacher_votes[p.k].values())
        print(
            f"| {p.k} | {p.student_score:.3f} | {teacher_k:.3f} | {p.teacher_score:.3f}"
            f" | {p.diff_ci_low:+.3f}..{p.diff_ci_high:+.3f}"
            f" | {p.verdict} | {p.student_usd_per_question * 1e6:.3f}e-6 | {p.teacher_usd_per_question * 1e6:.3f}e-6"
            f" | {'yes' if p.within_budget else 'no'} |"
        )
    print(f"n = {points[0].n} documents; margin {MARGIN}, {CONFIDENCE:.0%} Tango interval (continuity-corrected)")
    print(
        f"smallest matching k within budget: {matched.smallest_matching_k(points)}; at any cost: "
        f"{matched.smallest_matching_k(points, within_budget=False)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(tempfile.gettempdir()) / "compute-matched",
        help="results root for the run (a rerun resumes: stored cells are not run again)",
    )
    parser.add_argument("--skip-seed-check", action="store_true")
    args = parser.parse_args()
    os.chdir(REPO)  # task YAMLs name their data files relative to the repository root
    if not args.skip_seed_check:
        check_seeds(args.results)
    report(run_product(args.results))


if __name__ == "__main__":
    main()
