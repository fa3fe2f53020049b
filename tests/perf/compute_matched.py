"""Compute-matched quality on the toy pair: does the student's maj@k close toy_add's gap, and at what cost?

Why: the distilled student costs a fraction of the teacher per token; at equal cost per question it can
answer k times and vote. This script measures it with the product itself, in two steps:

1. Seeds: against one real vLLM CPU server (the student), lm-eval's `local-completions` and our
   `distill-completions` (bench/lmeval_model.py) on the sampled toy_add (9 answers per document): how many
   documents get more than one distinct answer (lm-eval's own sends one seed: expected none), whether a
   second run reproduces every answer at every position, and whether greedy toy_add is unchanged.
2. The comparison: `distill-bench run tests/perf/compute_matched.yaml` (teacher and distilled student on
   greedy toy_add and the sampled variant, limit 200, plus a short load workload whose $/Mtok prices an
   answer; `compare.compute_matched` names the two tasks), then the product's own `distill-bench compare
   --format json` of the run: per k, student maj@k and pass@k against teacher pass@1 with the paired interval
   and verdict, the $/question of each, whether k answers fit the teacher's budget, and the smallest matching
   k (maj@k's: pass@k is an upper bound that needs an oracle to pick the right answer).

Tokens per answer are what the eval stored (`eval_samples.response_tokens`: the model's tokenizer over every
raw answer; teacher: greedy toy_add; student: all 9 answers of the sampled task); $/Mtok is each model's mean
over the workload's blocks, the price compare's cost rows use. A results root from before schema 5 holds
no token counts: give a fresh --results.

Run under the lock (two servers at a time at most, about 5-8 min on 2 cores):
`flock /tmp/heavy.lock .venv/bin/python tests/perf/compute_matched.py [--results DIR] [--skip-seed-check]`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import matched, store  # noqa: E402
from bench.config import ModelConfig, ServeConfig, TaskConfig  # noqa: E402
from bench.evaluate import Endpoint, _model_args, in_flight  # noqa: E402
from bench.toy.tasks import SAMPLED_TASK  # noqa: E402

CONFIG = REPO / "tests" / "perf" / "compute_matched.yaml"
TEACHER, STUDENT = "toy-teacher", "toy-student-kd"
TOY_SERVE = ServeConfig(dtype="float32", max_model_len=64, cpu_kv_cache_gib=1, extra_args=("--enforce-eager",))
SEED_CHECK_DOCS = 20
GREEDY_CHECK_DOCS = 40


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
        sent = in_flight(model, TaskConfig(name=SAMPLED_TASK), gpu_count=0)  # the product's CPU default
        endpoint = Endpoint(base_url=server.base_url, served_model=STUDENT, tokenizer=model.source, in_flight=sent)
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


def compare_rows(run_dir: Path) -> list[dict]:
    """The product's comparison of the run, as `distill-bench compare --format json` prints it."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bench.cli", "compare", str(run_dir), "--format", "json"]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"distill-bench compare exited {completed.returncode}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout)


def lm_eval_score(scores: list[dict], model: str, task: str, filter_name: str) -> float | None:
    """lm-eval's own aggregate from eval_scores (for context: the teacher's maj@k is not compared)."""
    found = [s["value"] for s in scores if (s["model"], s["task"], s["filter"]) == (model, task, filter_name)]
    return found[0] if found else None


def usd_per_mtok(usd_per_question: float, tokens_per_answer: float, answers: int) -> float:
    return usd_per_question / answers / tokens_per_answer * 1e6


def report(run_dir: Path) -> None:
    """compare's compute-matched rows of the run, as a table, with the greedy scores beside them."""
    rows = compare_rows(run_dir)
    matched_rows = sorted(
        (r for r in rows if r["compute_matched"] and r["teacher"] == TEACHER and r["student"] == STUDENT),
        key=lambda r: (r["k"] or 0, r["scoring"] or ""),
    )
    if not matched_rows or any(r["k"] is None for r in matched_rows):
        raise SystemExit("compare gave no compute-matched rows:\n" + "\n".join(r["summary"] for r in matched_rows))
    greedy = next(r for r in rows if not r["compute_matched"] and r["task"] == "toy_add" and r["student"] == STUDENT)
    scores = store.read_table(run_dir, "eval_scores").to_pylist()
    first = matched_rows[0]
    for name, per_question, tokens, answers in (
        ("teacher", first["teacher_usd_per_question"], first["teacher_tokens_per_answer"], 1),
        ("student", first["student_usd_per_question"], first["student_tokens_per_answer"], first["k"]),
    ):
        if per_question is None:
            print(f"{name}: {tokens} output tokens/answer, not priced")
            continue
        print(
            f"{name}: {tokens:.2f} output tokens/answer x ${usd_per_mtok(per_question, tokens, answers):.4f}/Mtok"
            f" = ${per_question / answers * 1e6:.3f} per million answers"
        )
    if first["student_usd_per_question"] is not None:
        student = matched.AnswerCost(1.0, first["student_usd_per_question"] / first["k"])
        teacher = matched.AnswerCost(1.0, first["teacher_usd_per_question"])
        print(f"affordable k (k x student $/answer <= teacher $/answer): {matched.affordable_k(student, teacher)}")
    print(
        f"greedy pass@1 on toy_add: student {greedy['student_score']:.3f}, teacher {greedy['teacher_score']:.3f}"
        f" (compare's toy_add row, n = {greedy['n_paired']})"
    )
    print(
        "| k | scoring | student @k | teacher @k (lm-eval) | teacher pass@1 | diff CI (@k - pass@1) | verdict"
        " | student $/q | teacher $/q | k x cost <= teacher |"
    )
    print("|---:|---|---:|---:|---:|---|---|---:|---:|---|")
    for r in matched_rows:
        teacher_k = lm_eval_score(scores, TEACHER, SAMPLED_TASK, r["filter"])
        student_usd = "-" if r["student_usd_per_question"] is None else f"{r['student_usd_per_question'] * 1e6:.3f}e-6"
        teacher_usd = "-" if r["teacher_usd_per_question"] is None else f"{r['teacher_usd_per_question'] * 1e6:.3f}e-6"
        budget = {True: "yes", False: "no", None: "-"}[r["within_budget"]]
        print(
            f"| {r['k']} | {r['scoring']}@k | {r['student_score']:.3f}"
            f" | {'-' if teacher_k is None else f'{teacher_k:.3f}'} | {r['teacher_score']:.3f}"
            f" | {r['diff_ci_low']:+.3f}..{r['diff_ci_high']:+.3f} | {r['verdict']}"
            f" | {student_usd} | {teacher_usd} | {budget} |"
        )
    print(
        f"n = {first['n_paired']} documents; margin {first['retention_margin']}, {first['confidence']:.0%} Tango"
        " interval (continuity-corrected); price: each model's mean $/Mtok over the blocks of"
        f" {first['workload']}@{first['level']:g}"
    )
    print(f"smallest matching k within budget (compare): {first['smallest_matching_k']}")
    print("compare's sentences:")
    print("\n".join(f"  {r['summary']}" for r in matched_rows))


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
    report(run_product(args.results) / "compute-matched")


if __name__ == "__main__":
    main()
