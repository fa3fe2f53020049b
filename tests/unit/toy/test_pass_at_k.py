"""The pass@k filter shipped with the sampled toy task, run through lm-eval's own filter machinery (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lm_eval.api.instance import Instance
from lm_eval.filters import build_filter_ensemble
from lm_eval.tasks._yaml_loader import load_yaml  # the loader TaskManager reads task YAMLs with

from bench.toy import tasks
from bench.toy.build import DEFAULT_TASKS_DIR
from bench.toy.pass_at_k import FirstCorrectOfK

REPO = Path(__file__).resolve().parents[3]
SHIPPED_YAML = REPO / tasks.sampled_tasks_dir(DEFAULT_TASKS_DIR) / f"{tasks.SAMPLED_TASK}.yaml"

# Hand-made documents (target "12") with three answers each, and which filter should score them right.
ANSWERS = {
    "right first": ["12", "13", "13"],
    "right third only": ["13", "14", "12"],
    "never right": ["13", "13", "21"],
    "right twice of three": ["12", "12", "11"],
}


def instances() -> list[Instance]:
    """One generate_until instance per document, its three sampled answers as lm-eval stores them."""
    made = []
    for doc_id, answers in enumerate(ANSWERS.values()):
        instance = Instance("generate_until", {"prompt": "add 5+7=", "answer": "12"}, ("add 5+7=", {}), doc_id)
        instance.resps = list(answers)
        made.append(instance)
    return made


def shipped_filters() -> dict[str, object]:
    """The shipped task's filter pipelines, built from its YAML the way lm-eval's ConfigurableTask builds them
    (`!function` resolved against the task directory)."""
    pipelines = {}
    for spec in load_yaml(SHIPPED_YAML)["filter_list"]:
        steps = [[step["function"], {k: v for k, v in step.items() if k != "function"}] for step in spec["filter"]]
        pipelines[spec["name"]] = build_filter_ensemble(spec["name"], steps)
    return pipelines


def test_first_correct_of_k_keeps_a_right_answer_among_the_first_k_else_the_first() -> None:
    resps = list(ANSWERS.values())
    docs = [{"answer": "12"}] * len(resps)
    assert FirstCorrectOfK(k=1, target="answer").apply(resps, docs) == ["12", "13", "13", "12"]
    assert FirstCorrectOfK(k=2, target="answer").apply(resps, docs) == ["12", "13", "13", "12"]
    assert FirstCorrectOfK(k=3, target="answer").apply(resps, docs) == ["12", "12", "13", "12"]
    # An integer target is compared as the string the task's doc_to_target renders.
    assert FirstCorrectOfK(k=2, target="answer").apply([["5", "12"]], [{"answer": 12}]) == ["12"]
    with pytest.raises(ValueError, match="needs 4 answers"):
        FirstCorrectOfK(k=4, target="answer").apply(resps, docs)
    with pytest.raises(ValueError, match="k >= 1"):
        FirstCorrectOfK(k=0, target="answer")


def test_the_shipped_pass_and_maj_pipelines_keep_what_exact_match_should_score() -> None:
    pipelines = shipped_filters()
    assert [name for name in pipelines if name.startswith("pass@")] == [f"pass@{k}" for k in tasks.SAMPLED_VOTES]
    kept = {}
    for name in ("maj@1", "maj@3", "pass@1", "pass@3"):
        made = instances()
        pipelines[name].apply(made)
        kept[name] = [instance.filtered_resps[name] for instance in made]
    assert kept["pass@1"] == kept["maj@1"] == ["12", "13", "13", "12"]  # both: the first sampled answer
    assert kept["pass@3"] == ["12", "12", "13", "12"]  # right whenever any of the three is
    assert kept["maj@3"] == ["13", "13", "13", "12"]  # the vote loses "right first" and "right third only"
