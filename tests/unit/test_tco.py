"""Distillation cost and break-even volume: hand-computed cases, the None cases, the config's rules, and the
quickstart's declared training hours against the toy build's own report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.config import DistillationConfig, load_config
from bench.cost import load_price_table
from bench.tco import break_even, distillation_usd, training_usd
from bench.toy.build import BUILD_THREADS

REPO = Path(__file__).resolve().parents[2]
PRICES = load_price_table(REPO / "configs/prices.yaml")
CPU_HOUR_USD = PRICES.price("cpu-core").usd_per_hour


def test_distillation_cost_adds_training_hours_and_teacher_tokens_at_the_teacher_rate() -> None:
    made = DistillationConfig(gpu_hours=10, device_type="cpu-core", teacher_tokens_generated=2_000_000)
    training = training_usd(made, PRICES)
    assert training == pytest.approx(10 * CPU_HOUR_USD)
    assert distillation_usd(training, 2_000_000, teacher_usd_per_mtok=3.0) == pytest.approx(10 * CPU_HOUR_USD + 6.0)
    assert training_usd(DistillationConfig(usd=600), PRICES) == 600
    assert training_usd(DistillationConfig(teacher_tokens_generated=5), PRICES) == 0
    # Teacher tokens cannot be priced without a measured teacher $/Mtok; an unknown device type neither.
    assert distillation_usd(training, 2_000_000, teacher_usd_per_mtok=None) is None
    assert training_usd(DistillationConfig(gpu_hours=1, device_type="TPU-v9"), PRICES) is None
    assert distillation_usd(None, None, 1.0) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"usd": 5, "gpu_hours": 1, "device_type": "cpu-core"},
        {"gpu_hours": 1},
        {"device_type": "cpu-core"},
        {"source": "a paper"},
        {"usd": -1},
    ],
)
def test_a_distillation_without_exactly_one_cost_is_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        DistillationConfig(**fields)


def test_break_even_is_cost_over_the_mean_saving_with_the_interval_inverted() -> None:
    teacher, student = np.array([10.0, 12.0, 11.0]), np.array([4.0, 5.0, 6.0])  # savings 6, 7, 5
    result = break_even(60.0, teacher, student, confidence=0.95)
    assert result.saving_usd_per_mtok == pytest.approx(6.0)
    # t-interval of (6, 7, 5): mean 6, sd 1, t(0.975, 2) = 4.3027 -> 6 ± 2.484
    assert result.saving_ci_low == pytest.approx(6 - 4.302653 / 3**0.5, rel=1e-5)
    assert result.mtok == pytest.approx(10.0)
    assert result.ci_low_mtok == pytest.approx(60 / result.saving_ci_high)
    assert result.ci_high_mtok == pytest.approx(60 / result.saving_ci_low)
    assert result.blocks == 3


def test_a_student_that_saves_nothing_never_pays_back_and_an_uncertain_saving_has_no_upper_bound() -> None:
    never = break_even(1.0, np.array([1.0, 1.0]), np.array([2.0, 2.1]), 0.95)  # savings -1, -1.1
    assert never.saving_ci_high < 0
    assert never.mtok is None and never.ci_low_mtok is None and never.ci_high_mtok is None
    uncertain = break_even(1.0, np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.5, 1.0]), 0.95)  # savings 2, -0.5, 1
    assert uncertain.mtok == pytest.approx(1 / (2.5 / 3))
    assert uncertain.saving_ci_low < 0 and uncertain.ci_high_mtok is None
    assert break_even(1.0, np.array([np.nan]), np.array([1.0]), 0.95) is None
    one_block = break_even(2.0, np.array([3.0]), np.array([1.0]), 0.95)
    assert one_block.mtok == 1.0 and one_block.ci_low_mtok is None and one_block.ci_high_mtok is None


def test_only_a_student_has_a_distillation_and_its_device_type_must_be_priced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bench.cli import app

    text = (REPO / "configs/quickstart.yaml").read_text()
    teacher_distilled = text.replace("  - name: toy-teacher\n", "  - name: toy-teacher\n    distillation: {usd: 1}\n")
    unpriced = text.replace(
        "device_type: cpu-core\n      source: bench/toy/models/report.json (train_s × 2 build threads)\n",
        "device_type: TPU-v9\n      source: x\n",
    )
    for name, body, expected in [
        ("teacher.yaml", teacher_distilled, "models.[0].distillation: only a student"),
        ("unpriced.yaml", unpriced, "models[2].distillation.device_type: 'TPU-v9' is not in the price table"),
    ]:
        monkeypatch.chdir(REPO)  # the config's paths are relative to the working directory
        path = tmp_path / name
        path.write_text(body)
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == 2, result.output
        assert expected.replace("models.[0]", "models[0]") in result.output.replace("\n", "")


def test_the_quickstart_declares_the_training_hours_the_toy_build_recorded() -> None:
    report = json.loads((REPO / "bench/toy/models/report.json").read_text())
    config = load_config(REPO / "configs/quickstart.yaml")
    for model, built in [("toy-student-kd", "student-kd"), ("toy-student-label", "student-label")]:
        declared = config.model(model).distillation
        assert declared.device_type == "cpu-core"
        assert declared.gpu_hours == pytest.approx(report["models"][built]["train_s"] * BUILD_THREADS / 3600, abs=1e-4)


def test_distillation_is_not_part_of_any_key() -> None:
    from bench.plan import build_plan

    config = load_config(REPO / "configs/quickstart.yaml")
    data = config.model_dump()
    for model in data["models"]:
        model["distillation"] = None
    assert build_plan(config) == build_plan(type(config).model_validate(data))
