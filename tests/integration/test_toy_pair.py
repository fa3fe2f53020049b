"""The shipped toy pair: sizes, the acceptance numbers of its build report, and real vLLM generation."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.hashing import weights_sha256
from bench.toy.build import MODEL_NAMES

from .conftest import TOY_MODELS

SUPPORTED_CPU_HEAD_DIMS = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((TOY_MODELS / "report.json").read_text())


def test_shipped_weights_match_the_build_report(report: dict) -> None:
    for name in MODEL_NAMES:
        assert weights_sha256(TOY_MODELS / name) == report["models"][name]["weights_sha256"]
    total_bytes = sum(path.stat().st_size for path in TOY_MODELS.glob("*/*.safetensors"))
    assert total_bytes < 40 * 2**20


def test_student_is_several_times_cheaper_with_a_vllm_cpu_head_dim(report: dict) -> None:
    configs = {name: json.loads((TOY_MODELS / name / "config.json").read_text()) for name in MODEL_NAMES}
    for config in configs.values():
        assert config["hidden_size"] // config["num_attention_heads"] in SUPPORTED_CPU_HEAD_DIMS
    teacher, student = report["models"]["teacher"], report["models"]["student-kd"]
    assert teacher["non_embedding_parameters"] >= 4 * student["non_embedding_parameters"]
    assert configs["teacher"]["num_hidden_layers"] > configs["student-kd"]["num_hidden_layers"]


def test_build_report_meets_the_toy_pair_acceptance(report: dict) -> None:
    teacher, student = report["scores"]["teacher"], report["scores"]["student-kd"]
    assert teacher["mean"] >= 0.90
    assert student["mean"] >= 0.90 * teacher["mean"]
    assert max(abs(teacher[t] - student[t]) for t in teacher if t != "mean") >= 0.03


def test_vllm_cpu_serves_the_saved_student(student_server) -> None:
    response = httpx.post(
        f"{student_server.base_url}/completions",
        json={"model": "toy-student-kd", "prompt": "rev abcd=", "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    response.raise_for_status()
    text = response.json()["choices"][0]["text"]
    assert text.strip(), "the student generated no text"
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz0123456789 +=-*,:?\n")
