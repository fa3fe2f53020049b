"""The R1 tasks (configs/tasks/r1): prompts, answer judging, and pass@1 over k samples through real lm-eval.

The end-to-end tests copy the shipped task directory with its datasets pointed at small local JSON files (the
hub datasets cannot be downloaded here), load it through `bench.evaluate.lm_eval_tasks` (which sets lm-eval's
`repeats` from samples_per_question) and run lm-eval's own `simple_evaluate` against `FakeReasoner`, a fake
standing in for a served R1 model (no GPU here): it answers each question's j-th sample correctly when j is
below that question's number of correct samples, so every pass@1 is known in advance.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from lm_eval.api.model import LM

from bench import evaluate
from bench.config import TaskConfig

REPO = Path(__file__).resolve().parents[2]
R1_TASKS = REPO / "configs" / "tasks" / "r1"
SAMPLES = 4


def load_utils() -> ModuleType:
    spec = importlib.util.spec_from_file_location("r1_task_utils", R1_TASKS / "utils.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = load_utils()


def answered(final: str) -> str:
    return f"Let me think. Maybe \\boxed{{999}}? No.\n</think>\n\n{final}"


# -- prompts and judging -----------------------------------------------------------------------------------


def test_prompt_is_one_r1_user_turn_with_reasoning_opened():
    prompt = utils.aime_prompt({"Problem": "Find x.", "Answer": "7"})
    assert prompt == (
        "<｜User｜>Find x.\nPlease reason step by step, and put your final answer within \\boxed{}."
        "<｜Assistant｜><think>\n"
    )


@pytest.mark.parametrize(
    ("response", "gold", "correct"),
    [
        (answered("So \\boxed{\\frac12}."), "\\frac{1}{2}", True),  # MATH normalisation: \frac12 = \frac{1}{2}
        (answered("So \\boxed{0.5}."), "\\frac{1}{2}", True),  # ...and 0.5 = \frac{1}{2}
        (answered("So \\boxed{2}."), "\\frac{1}{2}", False),
        (answered("The answer is 7."), "7", False),  # no box, no answer
        ("\\boxed{7} then thinking goes on and is cut at the budget", "7", True),  # never closed: all of it
        (answered("\\boxed{7"), "7", False),  # an unclosed box
        (answered("\\boxed"), "7", False),  # a box with nothing in it
    ],
)
def test_math_answers_are_the_last_box_after_the_reasoning(response, gold, correct):
    assert utils.math_correct(response, gold) is correct


def test_a_box_inside_the_reasoning_does_not_count():
    assert utils.math_correct(answered("I give up."), "999") is False


@pytest.mark.parametrize(
    ("final", "correct"),
    [("Answer: B", True), ("answer:$B$", True), ("Answer: A\nAnswer: B", True), ("Answer: C", False), ("B", False)],
)
def test_gpqa_answers_are_the_last_answer_line(final, correct):
    assert utils.gpqa_correct(answered(final), "B") is correct


GPQA_DOC = {
    "Question": "Which particle is a lepton?",
    "Correct Answer": "electron",
    "Incorrect Answer 1": "proton",
    "Incorrect Answer 2": "neutron",
    "Incorrect Answer 3": " pion ",
}


def test_gpqa_choice_order_is_fixed_by_the_question():
    choices = utils.gpqa_choices(GPQA_DOC)
    assert choices == utils.gpqa_choices(dict(GPQA_DOC))
    assert sorted(choices[letter] for letter in "ABCD") == ["electron", "neutron", "pion", "proton"]
    assert choices[choices["gold"]] == "electron"
    prompt = utils.gpqa_prompt(GPQA_DOC)
    assert f"\n{choices['gold']}) electron\n" in prompt + "\n"
    # Across questions the gold letter moves: a model always answering "A" cannot score 1.
    golds = {utils.gpqa_target({**GPQA_DOC, "Question": f"Question {index}?"}) for index in range(40)}
    assert golds == set("ABCD")


def test_pass_at_1_is_the_share_of_correct_samples():
    assert utils.pass_at_1(["a", "b", "a", "c"], lambda response: response == "a") == 0.5


# -- end to end through lm-eval ------------------------------------------------------------------------------

AIME_DOCS = [
    {"ID": "2024-I-1", "Problem": "What is 2+3?", "Answer": "5"},
    {"ID": "2024-I-2", "Problem": "What is 7*6?", "Answer": "42"},
]
MATH_DOCS = [{"problem": "Halve one.", "answer": "\\frac{1}{2}"}, {"problem": "Square 3.", "answer": "9"}]
GPQA_DOCS = [GPQA_DOC, {**GPQA_DOC, "Question": "Which particle is charged and light?"}]
CORRECT_SAMPLES = [3, 0]  # of SAMPLES, per question in order: pass@1 0.75 and 0.0
DATA = {
    "r1_aime24": ("train", AIME_DOCS, lambda doc: f"\\boxed{{{doc['Answer']}}}"),
    "r1_math500": (
        "test",
        MATH_DOCS,
        lambda doc: "\\boxed{\\frac12}" if doc["answer"] == "\\frac{1}{2}" else "\\boxed{9}",
    ),
    "r1_gpqa_diamond": ("train", GPQA_DOCS, lambda doc: f"Answer: {utils.gpqa_target(doc)}"),
}


class FakeReasoner(LM):
    """Stands in for a served R1 model: sample j of question q is right when j < CORRECT_SAMPLES[q].

    `right_finals` maps each question's text to a right final answer, in document order. It records the
    generation settings lm-eval sends, which must be the paper's and carry no per-request seed.
    """

    def __init__(self, right_finals: dict[str, str]) -> None:
        super().__init__()
        self.right_finals = right_finals
        self.seen: Counter[str] = Counter()  # samples asked so far, per prompt
        self.gen_kwargs: list[dict] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        responses = []
        for request in requests:
            context, kwargs = request.args
            self.gen_kwargs.append(kwargs)
            question, final = next((q, f) for q, (text, f) in enumerate(self.right_finals.items()) if text in context)
            right = self.seen[context] < CORRECT_SAMPLES[question]
            self.seen[context] += 1
            responses.append(answered(final if right else "\\boxed{-1} Answer: Z"))
        return responses

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the R1 tasks only generate")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the R1 tasks only generate")


def local_copy(tmp_path: Path, task: str) -> Path:
    """The shipped task directory, with `task` reading its documents from a local JSON file."""
    directory = tmp_path / "r1"
    shutil.copytree(R1_TASKS, directory, ignore=shutil.ignore_patterns("__pycache__"))
    split, docs, _ = DATA[task]
    data = tmp_path / f"{task}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    path = directory / f"{task}.yaml"
    text = re.sub(r"(?m)^dataset_(path|name): .*\n", "", path.read_text())
    path.write_text(
        text + yaml.safe_dump({"dataset_path": "json", "dataset_kwargs": {"data_files": {split: str(data)}}})
    )
    return directory


def question_text(task: str, doc: dict) -> str:
    return doc.get("Problem") or doc.get("problem") or doc["Question"]


@pytest.mark.parametrize("task", sorted(DATA))
def test_pass_at_1_over_k_samples_through_lm_eval(task, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    _, docs, right = DATA[task]
    config = TaskConfig(name=task, include_path=str(local_copy(tmp_path, task)), samples_per_question=SAMPLES)
    manager = TaskManager(include_path=config.include_path, include_defaults=False)
    fake = FakeReasoner({question_text(task, doc): right(doc) for doc in docs})

    results = lm_eval.simple_evaluate(
        model=fake,
        tasks=evaluate.lm_eval_tasks(manager, config),
        gen_kwargs=evaluate.gen_kwargs(config),
        log_samples=True,
        task_manager=manager,
    )

    assert sum(fake.seen.values()) == SAMPLES * len(docs)
    assert set(fake.seen.values()) == {SAMPLES}
    assert all("seed" not in kwargs for kwargs in fake.gen_kwargs)  # lmeval_model seeds each repeat apart
    assert {(k["temperature"], k["top_p"], k["max_gen_toks"], k["do_sample"]) for k in fake.gen_kwargs} == {
        (0.6, 0.95, 32768, True)
    }
    samples = evaluate.samples_from_results(results)
    assert sorted((s.doc_id, s.metric, s.value) for s in samples) == [
        (index, "pass_at_1", right_samples / SAMPLES) for index, right_samples in enumerate(CORRECT_SAMPLES)
    ]
    assert all(len(json.loads(s.response)) == SAMPLES for s in samples)  # every sample is kept
    (score,) = evaluate.scores_from_results(results, evaluate.InFlight(1, 1))
    assert (score.task, score.metric, score.filter, score.n) == (task, "pass_at_1", "all-samples", len(docs))
    assert score.value == pytest.approx(sum(CORRECT_SAMPLES) / SAMPLES / len(docs))


def test_one_sample_sends_the_task_name_and_no_seed_override():
    config = TaskConfig(name="r1_aime24", include_path=str(R1_TASKS))
    assert evaluate.lm_eval_tasks(object(), config) == ["r1_aime24"]  # nothing loaded: lm-eval loads by name
    assert evaluate.gen_kwargs(config) is None
    assert evaluate.gen_kwargs(TaskConfig(name="t", max_gen_toks=64)) == {"max_gen_toks": 64}


def test_a_task_that_would_score_only_its_first_sample_is_refused(tmp_path):
    from lm_eval.tasks import TaskManager

    directory = local_copy(tmp_path, "r1_aime24")
    path = directory / "r1_aime24.yaml"
    path.write_text(path.read_text() + "filter_list: null\n")  # lm-eval's default: take the first response
    manager = TaskManager(include_path=str(directory), include_defaults=False)
    with pytest.raises(ValueError, match="r1_aime24 would score only the first sample"):
        evaluate.lm_eval_tasks(manager, TaskConfig(name="r1_aime24", samples_per_question=2))
