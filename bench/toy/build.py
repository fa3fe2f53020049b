"""`distill-bench toy build`: the toy suite, a teacher, a distilled student and a label-trained baseline.

Every stage is seeded and cached: each model directory keeps a `build.json` with the settings that made
it, and a stage whose settings (and inputs) are unchanged is skipped. With the same seed, preset and
thread count the weights are reproduced bit for bit (tested on the `tiny` preset).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.hashing import json_sha256, weights_sha256
from bench.toy.tasks import GENERATIVE_TASKS, SUITE_VERSION, Example, train_stream, write_lm_eval_tasks

MODEL_NAMES = ("teacher", "student-kd", "student-label")
DEFAULT_MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_TASKS_DIR = Path("configs/tasks/toy")
BUILD_THREADS = 2  # CPU reductions depend on the thread count; fixing it keeps rebuilds bit-identical.


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of one toy build."""

    teacher: tuple[int, int, int, int]  # hidden, layers, heads, intermediate
    student: tuple[int, int, int, int]
    teacher_steps: int
    student_steps: int
    batch_size: int
    teacher_lr: float
    student_lr: float
    distill_prompts: int  # unlabeled prompts the teacher answers for the students
    test_size: int  # documents per task in the held-out split
    temperature: float = 2.0


PRESETS = {
    "full": Preset(
        teacher=(192, 8, 6, 512),
        student=(128, 2, 4, 512),
        teacher_steps=1500,
        student_steps=4000,
        batch_size=128,
        teacher_lr=2e-3,
        student_lr=3e-3,
        distill_prompts=40_000,
        test_size=500,
    ),
    "tiny": Preset(
        teacher=(64, 2, 2, 128),
        student=(32, 1, 1, 64),
        teacher_steps=20,
        student_steps=20,
        batch_size=32,
        teacher_lr=3e-3,
        student_lr=3e-3,
        distill_prompts=256,
        test_size=16,
    ),
}

Log = Callable[[str], None]


def _cached(model_dir: Path, key: str) -> bool:
    stamp = model_dir / "build.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("key") == key


def _save(model, model_dir: Path, key: str, info: dict) -> None:
    from bench.toy.tokenizer import save_tokenizer
    from bench.toy.train import MAX_POSITIONS, non_embedding_parameters

    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    save_tokenizer(model_dir, MAX_POSITIONS)
    info = info | {
        "key": key,
        "parameters": sum(p.numel() for p in model.parameters()),
        "non_embedding_parameters": non_embedding_parameters(model),
        "weights_sha256": weights_sha256(model_dir),
    }
    (model_dir / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _load(model_dir: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir).float().eval()


def _train_teacher(preset: Preset, seed: int, splits: dict[str, list], out: Path, log: Log) -> str:
    from bench.toy.train import Pair, Schedule, Shape, label_loss, make_model, optimise

    # Only what shapes the teacher, so that changing a student's settings does not retrain it.
    settings = {name: getattr(preset, name) for name in ("teacher", "teacher_steps", "teacher_lr", "batch_size")}
    key = json_sha256(
        {"stage": "teacher", **settings, "test_size": preset.test_size, "seed": seed, "suite": SUITE_VERSION}
    )
    if _cached(out / "teacher", key):
        log("teacher: cached")
        return key
    model = make_model(Shape(*preset.teacher), seed)
    stream = (Pair(e.prompt, e.answer) for e in train_stream(seed, _held_out(splits)))
    schedule = Schedule(preset.teacher_steps, preset.batch_size, preset.teacher_lr)
    started = time.monotonic()
    optimise(model, schedule, label_loss(stream, preset.batch_size), lambda s: log(f"teacher: {s}"))
    _save(model, out / "teacher", key, {"trained_on": "labels", "train_s": round(time.monotonic() - started, 1)})
    log(f"teacher test scores: {score_model(model, splits)}")
    return key


def _held_out(splits: dict[str, list]) -> set[str]:
    return {doc.prompt for task in GENERATIVE_TASKS for doc in splits[task]}


def _distill_pool(preset: Preset, seed: int, held_out: set[str]) -> list[Example]:
    """Unlabeled prompts for distillation (their answers are kept only for the label baseline)."""
    stream = train_stream(seed, held_out, stream="distill")
    return [next(stream) for _ in range(preset.distill_prompts)]


def _train_students(preset: Preset, seed: int, splits: dict[str, list], out: Path, teacher_key: str, log: Log) -> None:
    from bench.toy.train import (
        Pair,
        Schedule,
        Shape,
        distillation_loss,
        greedy_answers,
        label_loss,
        make_model,
        optimise,
        pool_stream,
        teacher_soft_targets,
    )

    key = json_sha256({"stage": "students", "preset": asdict(preset), "seed": seed, "teacher": teacher_key})
    if _cached(out / "student-kd", key) and _cached(out / "student-label", key):
        log("students: cached")
        return
    examples = _distill_pool(preset, seed, _held_out(splits))
    teacher = _load(out / "teacher")
    log(f"teacher answers {len(examples)} unlabeled prompts")
    answers = greedy_answers(teacher, [e.prompt for e in examples], max_new_tokens=12)
    taught = [Pair(e.prompt, answer) for e, answer in zip(examples, answers, strict=True)]
    soft = teacher_soft_targets(teacher, taught)
    agreement = sum(e.answer == a for e, a in zip(examples, answers, strict=True)) / len(examples)
    log(f"teacher agrees with the hidden labels on {agreement:.3f} of the distillation prompts")
    schedule = Schedule(preset.student_steps, preset.batch_size, preset.student_lr)

    started = time.monotonic()
    student = make_model(Shape(*preset.student), seed + 1)
    loss = distillation_loss(taught, soft, preset.batch_size, seed, preset.temperature)
    optimise(student, schedule, loss, lambda s: log(f"student-kd: {s}"))
    info = {"trained_on": "teacher outputs (sequence-level + soft-target KD)", "teacher_label_agreement": agreement}
    _save(student, out / "student-kd", key, info | {"train_s": round(time.monotonic() - started, 1)})

    started = time.monotonic()
    baseline = make_model(Shape(*preset.student), seed + 1)
    labelled = pool_stream([Pair(e.prompt, e.answer) for e in examples], seed)
    optimise(baseline, schedule, label_loss(labelled, preset.batch_size), lambda s: log(f"student-label: {s}"))
    info = {"trained_on": "ground-truth labels of the same prompts (baseline)"}
    _save(baseline, out / "student-label", key, info | {"train_s": round(time.monotonic() - started, 1)})


def score_model(model, splits: dict[str, list]) -> dict[str, float]:
    """Greedy exact match per generative task and multiple-choice accuracy, as lm-eval computes them."""
    from bench.toy.train import choice_logprobs, greedy_answers

    result = {}
    for task in GENERATIVE_TASKS:
        docs: list[Example] = splits[task]
        answers = greedy_answers(model, [d.prompt for d in docs], max_new_tokens=12)
        result[task] = sum(a == d.answer for a, d in zip(answers, docs, strict=True)) / len(docs)
    hits = [_argmax(choice_logprobs(model, d["prompt"], d["choices"])) == d["gold"] for d in splits["toy_add_mc"]]
    result["toy_add_mc"] = sum(hits) / len(hits)
    result["mean"] = sum(result.values()) / len(result)
    return result


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def build(
    out: Path = DEFAULT_MODELS_DIR,
    tasks_dir: Path = DEFAULT_TASKS_DIR,
    preset_name: str = "full",
    seed: int = 0,
    log: Log = print,
) -> dict:
    """Build (or reuse) the toy suite and models; returns the report also saved as `out/report.json`."""
    import torch

    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    preset = PRESETS[preset_name]
    report_path = out / "report.json"
    settings = {"preset": asdict(preset), "seed": seed, "tasks_dir": str(tasks_dir), "suite": SUITE_VERSION}
    build_key = json_sha256(settings)
    if report_path.is_file() and json.loads(report_path.read_text()).get("key") == build_key:
        log(f"toy build is up to date in {out}")
        return json.loads(report_path.read_text())

    started = time.monotonic()
    splits = write_lm_eval_tasks(tasks_dir, seed, preset.test_size)
    teacher_key = _train_teacher(preset, seed, splits, out, log)
    _train_students(preset, seed, splits, out, teacher_key, log)
    scores = {name: score_model(_load(out / name), splits) for name in MODEL_NAMES}
    report = {
        "key": build_key,
        "preset": preset_name,
        "seed": seed,
        "settings": asdict(preset),
        "scores": scores,
        "models": {name: json.loads((out / name / "build.json").read_text()) for name in MODEL_NAMES},
        "build_s": round(time.monotonic() - started, 1),
    }
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    log(json.dumps(scores, indent=2))
    return report
