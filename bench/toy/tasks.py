"""The toy task suite: seeded generators, disjoint train/test splits, and lm-eval task files.

Three skills of different difficulty, all written as `<task> <input>=<answer>`:
- `toy_reverse`: reverse 3-8 letters (easy; a copy with a twist);
- `toy_sort`: sort 4-9 digits (medium);
- `toy_add`: add two numbers of 1-3 digits, answer digits most significant first (hard: each
  leading digit depends on the carries of every digit to its right, which a shallow model struggles with);
- `toy_add_mc`: the addition test split as four-way multiple choice with near-miss distractors (one carry
  dropped, digits off by one), so that lm-eval's loglikelihood path is exercised too;
- `toy_add_sampled`: the addition test split answered `SAMPLED_REPEATS` times with temperature sampling and
  scored by majority vote over the first k answers (filters `maj@k`) and by any of them right (filters
  `pass@k`, with the filter of bench/toy/pass_at_k.py, copied beside the task), for compute-matched
  comparisons (bench/matched.py). It lives in its own directory (`sampled_tasks_dir`): a task directory's fingerprint is
  part of every cell key of the tasks in it, so adding it next to the others would re-run stored toy results.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SUITE_VERSION = 2  # bump when a generator changes: build caches key on it
GENERATIVE_TASKS = ("toy_reverse", "toy_sort", "toy_add")
ALL_TASKS = (*GENERATIVE_TASKS, "toy_add_mc")
SAMPLED_TASK = "toy_add_sampled"
SAMPLED_REPEATS = 9  # answers per document; each maj@k filter votes over the first k of them
SAMPLED_VOTES = (1, 3, 5, 9)  # k of each maj@k and pass@k; both at k = 1 are the first sampled answer alone
PASS_FILTER_MODULE = Path(__file__).with_name("pass_at_k.py")  # shipped beside the sampled task
# Self-consistency samples below temperature 1 (0.5-0.7 in Wang et al. 2023): diverse answers that are each
# still likely; at 1.0 a small model's tail answers swamp the vote.
SAMPLED_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Example:
    """One prompt and its ground-truth answer."""

    task: str
    prompt: str
    answer: str


def _reverse(rng: random.Random) -> Example:
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))
    return Example("toy_reverse", f"rev {word}=", word[::-1])


def _sort(rng: random.Random) -> Example:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 9)))
    return Example("toy_sort", f"sort {digits}=", "".join(sorted(digits)))


def _operand(rng: random.Random) -> int:
    # Uniform over digit counts first, so short and long operands are equally common.
    digits = rng.randint(1, 3)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _add(rng: random.Random) -> Example:
    a, b = _operand(rng), _operand(rng)
    return Example("toy_add", f"add {a}+{b}=", str(a + b))


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "toy_reverse": _reverse,
    "toy_sort": _sort,
    "toy_add": _add,
}


def held_out_split(task: str, size: int, seed: int) -> list[Example]:
    """The first `size` distinct examples of a task for this seed: the held-out test split."""
    rng = random.Random(f"{seed}-test-{task}")
    seen: dict[str, Example] = {}
    while len(seen) < size:
        example = GENERATORS[task](rng)
        seen.setdefault(example.prompt, example)
    return list(seen.values())


def train_stream(seed: int, held_out: set[str], stream: str = "train") -> Iterator[Example]:
    """An endless, seeded mix of the generative tasks that never yields a held-out prompt."""
    rng = random.Random(f"{seed}-{stream}")
    while True:
        example = GENERATORS[rng.choice(GENERATIVE_TASKS)](rng)
        if example.prompt not in held_out:
            yield example


def distractors(answer: str, rng: random.Random) -> list[str]:
    """Three wrong sums close to the right one: a dropped carry and single-digit slips."""
    value = int(answer)
    candidates = [value + 10, value - 10, value + 1, value - 1, value + 100, value - 100, value + 9, value - 9]
    rng.shuffle(candidates)
    wrong: list[str] = []
    for candidate in candidates:
        if candidate >= 0 and str(candidate) != answer and str(candidate) not in wrong:
            wrong.append(str(candidate))
        if len(wrong) == 3:
            break
    return wrong


def multiple_choice(examples: list[Example], seed: int) -> list[dict]:
    """Addition examples as four-way multiple-choice documents (`choices`, `gold` index)."""
    rng = random.Random(f"{seed}-mc")
    docs = []
    for example in examples:
        choices = [example.answer, *distractors(example.answer, rng)]
        rng.shuffle(choices)
        docs.append({"prompt": example.prompt, "choices": choices, "gold": choices.index(example.answer)})
    return docs


def _task_yaml(task: str, data_file: str) -> dict:
    common = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "target_delimiter": "",  # the answer follows "=" directly, as in training
        "metadata": {"version": 1.0},
    }
    if task == "toy_add_mc":
        return common | {
            "output_type": "multiple_choice",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    return common | {
        "output_type": "generate_until",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n", "</s>"], "do_sample": False, "max_gen_toks": 16},
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": False}
        ],
    }


def sampled_task_yaml(data_file: str) -> dict:
    """`toy_add` sampled `SAMPLED_REPEATS` times per document, with one `maj@k` and one `pass@k` filter per k in
    `SAMPLED_VOTES`.

    Each `maj@k` is lm-eval's self-consistency chain: the first k answers, their majority (ties go to the answer
    seen first), that one answer scored by exact_match. Each `pass@k` keeps the first correct answer among the
    first k, else the first (`pass_at_k.FirstCorrectOfK`, loaded by lm-eval from the task directory), so its
    exact_match is pass@k. The repeats need a model that seeds each one apart (bench/lmeval_model.py); lm-eval's
    own API models send one seed and get k identical answers.
    """
    spec = _task_yaml("toy_add", data_file)
    votes = [
        {
            "name": f"maj@{k}",
            "filter": [{"function": "take_first_k", "k": k}, {"function": "majority_vote"}, {"function": "take_first"}],
        }
        for k in SAMPLED_VOTES
    ]
    passes = [
        {"name": f"pass@{k}", "filter": [{"function": _LmEvalFunction(_PASS_FILTER), "k": k, "target": "answer"}]}
        for k in SAMPLED_VOTES
    ]
    sampling = {"do_sample": True, "temperature": SAMPLED_TEMPERATURE}
    return spec | {
        "task": SAMPLED_TASK,
        "repeats": SAMPLED_REPEATS,
        "generation_kwargs": spec["generation_kwargs"] | sampling,
        "filter_list": votes + passes,
    }


_PASS_FILTER = f"{PASS_FILTER_MODULE.stem}.FirstCorrectOfK"


class _LmEvalFunction(str):
    """A YAML scalar written with lm-eval's `!function` tag: a callable that lm-eval imports from the task directory."""


class _TaskDumper(yaml.SafeDumper):
    """safe_dump, plus `_LmEvalFunction` as `!function module.name`."""


_TaskDumper.add_representer(_LmEvalFunction, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def sampled_tasks_dir(out_dir: Path) -> Path:
    """Where `write_lm_eval_tasks` puts the sampled variant: a sibling of the toy task directory."""
    return out_dir.with_name(f"{out_dir.name}_sampled")


def _write_split(out_dir: Path, task: str, rows: list[dict], spec_for: Callable[[str], dict]) -> None:
    data_path = out_dir / "data" / f"{task}.jsonl"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out_dir / f"{task}.yaml").write_text(yaml.dump(spec_for(str(data_path)), Dumper=_TaskDumper, sort_keys=False))


def write_lm_eval_tasks(out_dir: Path, seed: int, test_size: int) -> dict[str, list]:
    """Write each test split as JSONL plus an lm-eval task YAML, the `toy` group YAML, and the sampled
    `toy_add` variant with its pass@k filter module in `sampled_tasks_dir(out_dir)` (not in the group: it costs
    `SAMPLED_REPEATS` times more).

    `data_files` paths are written relative to the repository root, where lm-eval is run from.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list] = {task: held_out_split(task, test_size, seed) for task in GENERATIVE_TASKS}
    splits["toy_add_mc"] = multiple_choice(splits["toy_add"], seed)
    rows = {
        task: [doc if isinstance(doc, dict) else {"prompt": doc.prompt, "answer": doc.answer} for doc in docs]
        for task, docs in splits.items()
    }
    for task, task_rows in rows.items():
        _write_split(out_dir, task, task_rows, lambda data_file, task=task: _task_yaml(task, data_file))
    group = {"group": "toy", "task": list(ALL_TASKS), "metadata": {"version": 1.0}}
    (out_dir / "toy.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    _write_split(sampled_tasks_dir(out_dir), SAMPLED_TASK, rows["toy_add"], sampled_task_yaml)
    shutil.copyfile(PASS_FILTER_MODULE, sampled_tasks_dir(out_dir) / PASS_FILTER_MODULE.name)
    return splits
