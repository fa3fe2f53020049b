"""bench.compare on a small synthetic results tree with known per-document values and perf summaries."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bench import compare, report, stats, store
from bench.config import CompareConfig
from bench.pairing import BlockPair, PairedValues, PairedWorkload
from bench.records import EvalSample, EvalScore, ModelRecord, PerfSummary
from tests.unit.test_store import make_record

# toy_add: the teacher gets docs 0..179 of 200 right, the student 0..171: mean diff exactly -0.04.
# toy_sort: teacher 0..99, student 0..159: the student is better by +0.3.
CORRECT = {("big", "toy_add"): 180, ("small", "toy_add"): 172, ("big", "toy_sort"): 100, ("small", "toy_sort"): 160}
FILTERS = {"toy_add": ("none", "strict"), "toy_sort": ("flexible",)}
DOCS = 200
# (workload, level) -> output tokens/s, $/Mtok, J/token; "batch" only for the teacher.
PERF = {
    "big": {
        ("chat", 1): (50, 4.0, 0.5),
        ("chat", 4): (100, 2.0, 0.4),
        ("chat", 8): (120, 1.7, 0.4),
        ("batch", 1): (9, 1, 1),
    },
    "small": {("chat", 1): (150, 1.0, None), ("chat", 4): (250, 0.5, None), ("chat", 16): (500, 0.3, None)},
}


def write_model(run: Path, name: str, teacher: str | None, distillation_usd: float | None = None) -> None:
    role = "student" if teacher else "teacher"
    record = make_record(
        ModelRecord, name=name, role=role, teacher=teacher, distillation_usd=distillation_usd,
        distillation_teacher_tokens=None,
    )  # fmt: skip
    store.write_cell(run, "models", f"{name}-server", name, [record])


def write_eval(run: Path, model: str) -> None:
    for task, filters in FILTERS.items():
        correct = CORRECT[(model, task)]
        # The student also answered one document the teacher did not: it must not be paired.
        docs = DOCS + (model == "small")
        samples, scores = [], []
        for filter_name in filters:
            values = [float(doc < correct) for doc in range(docs)]
            samples += [
                make_record(EvalSample, task=task, doc_id=doc, metric="acc", filter=filter_name, value=value)
                for doc, value in enumerate(values)
            ]
            # A second filter with a different score shows that "none" is the one compared.
            value = correct / DOCS if filter_name in ("none", "flexible") else 0.01
            scores.append(make_record(EvalScore, task=task, metric="acc", filter=filter_name, value=value))
        store.write_cell(run, "eval_samples", f"{model}-{task}", model, samples)
        store.write_cell(run, "eval_scores", f"{model}-{task}", model, scores)


def write_perf(run: Path, model: str) -> None:
    for workload in sorted({w for (w, _) in PERF[model]}):
        rows = [
            make_record(
                PerfSummary, workload=workload, level=float(level), output_tokens_per_s=float(tps),
                usd_per_mtok_output=usd, j_per_output_token=joules,
            )
            for (w, level), (tps, usd, joules) in PERF[model].items()
            if w == workload
        ]  # fmt: skip
        store.write_cell(run, "perf_requests", f"{model}-{workload}", model, [])
        store.write_cell(run, "perf_summary", f"{model}-{workload}", model, rows)


def build_results(root: Path, retention_margin: float = 0.05, run_id: str = "r1") -> Path:
    """results/<run_id>: teacher `big`, student `small`, and student `tiny` that has no results."""
    run = root / "results" / run_id
    write_model(run, "big", None)
    write_model(run, "small", "big")
    write_model(run, "tiny", "big")
    for model in ("big", "small"):
        write_eval(run, model)
        write_perf(run, model)
    compare_settings = {"retention_margin": retention_margin, "bootstrap_samples": 1000}
    store.write_manifest(run, {"config": {"compare": compare_settings}})
    return root / "results"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return build_results(tmp_path_factory.mktemp("compare"))


def row_for(rows, student="small", task="toy_add") -> compare.ComparisonRow:
    (row,) = [r for r in rows if r.student == student and r.task == task]
    return row


def test_pairs_each_student_with_its_teacher(results):
    rows = compare.compare_results(results)
    assert [(r.teacher, r.student, r.task, r.workload) for r in rows] == [
        ("big", "small", "toy_add", "chat"),
        ("big", "small", "toy_sort", "chat"),
        ("big", "tiny", None, None),
    ]


def test_scores_retention_and_paired_difference(results):
    row = row_for(compare.compare_results(results))
    assert (row.filter, row.teacher_score, row.student_score) == ("none", 0.9, 0.86)
    assert row.retention_pct == pytest.approx(86 / 90 * 100)
    assert row.n_paired == DOCS
    assert row.diff_mean == pytest.approx(-0.04)
    assert row.diff_ci_low < -0.04 < row.diff_ci_high < 0


def test_falls_back_to_the_only_filter(results):
    row = row_for(compare.compare_results(results), task="toy_sort")
    assert row.filter == "flexible" and row.diff_mean == pytest.approx(0.3)


def test_perf_ratios_at_highest_common_level(results):
    row = row_for(compare.compare_results(results))
    assert (row.workload, row.level) == ("chat", 4)
    assert row.throughput_ratio == pytest.approx(2.5)
    assert row.usd_per_mtok_ratio == pytest.approx(0.25)
    assert row.j_per_token_ratio is None  # the student ran without NVML


@pytest.mark.parametrize(
    ("margin", "expected"),
    [(0.05, "inconclusive"), (0.1, "non-inferior"), (0.005, "inferior")],
)
def test_verdict_follows_the_margin(results, margin, expected):
    rows = compare.compare_results(results, CompareConfig(retention_margin=margin, bootstrap_samples=1000))
    assert row_for(rows).verdict == expected
    assert row_for(rows, task="toy_sort").verdict == "better"


def test_margin_comes_from_the_run_manifest(tmp_path):
    row = row_for(compare.compare_results(build_results(tmp_path, retention_margin=0.1)))
    assert (row.retention_margin, row.verdict) == (0.1, "non-inferior")


def test_student_without_results_is_reported(results):
    row = row_for(compare.compare_results(results), student="tiny", task=None)
    assert (row.verdict, row.n_paired, row.throughput_ratio) == ("no-data", 0, None)
    assert row.summary == "tiny vs big: no comparable results"


def test_summary_reads_as_a_sentence(results):
    assert row_for(compare.compare_results(results)).summary == (
        "small keeps 95.6% of big's acc on toy_add (CI of diff -0.083..-0.011, n=200, student-only/teacher-only right"
        " 0/8, McNemar p=0.0078) at 2.50x throughput, 0.25x $/Mtok (chat@4, 1 block: no intervals):"
        " inconclusive at margin 0.05"
    )


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.01, 0.05, "better"), (-0.04, 0.02, "non-inferior"), (-0.09, -0.06, "inferior"), (-0.07, -0.01, "inconclusive")],
)
def test_verdict_rules(low, high, expected):
    assert compare.verdict(low, high, retention_margin=0.05) == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(-0.05, -0.01, "better"), (-0.02, 0.04, "non-inferior"), (0.06, 0.09, "inferior"), (0.01, 0.07, "inconclusive")],
)
def test_verdict_orients_lower_is_better_metrics(low, high, expected):
    assert compare.verdict(low, high, retention_margin=0.05, higher_is_better=False) == expected


def test_a_student_with_higher_perplexity_keeps_less_and_is_inferior():
    key = ("toy_ppl", "word_perplexity", "none")
    teacher = np.random.default_rng(0).normal(10.0, 1.0, size=300)
    student = teacher + np.random.default_rng(1).normal(2.0, 0.5, size=300)  # about 2 higher
    settings = CompareConfig(retention_margin=0.5)
    paired = {key: PairedValues(teacher, student)}
    (row,) = compare.compare_quality({key: 10.0}, {key: 12.0}, paired, {key}, settings, seed=0)
    assert row.higher_is_better is False
    assert row.retention_pct == pytest.approx(100 * 10 / 12)
    # teacher / (teacher + difference): the high difference bounds the retention from below.
    assert row.retention_ci_low_pct == pytest.approx(100 * 10 / (10 + row.diff_ci_high))
    assert row.retention_ci_low_pct < row.retention_ci_high_pct < 100
    assert (row.verdict, row.interval_method, row.discordant_student_only, row.mcnemar_p) == (
        compare.Verdict.INFERIOR, "bootstrap", None, None,
    )  # fmt: skip


def test_outputs_are_deterministic(results):
    first, second = compare.compare_results(results), compare.compare_results(results)
    assert report.to_json(first) == report.to_json(second)
    assert report.to_markdown(first) == report.to_markdown(second)
    decoded = json.loads(report.to_json(first))
    assert decoded[0]["retention_pct"] == pytest.approx(86 / 90 * 100) and decoded[2]["diff_ci_low"] is None


def test_markdown_and_rich_table(results):
    rows = compare.compare_results(results)
    markdown = report.to_markdown(rows).splitlines()
    assert markdown[0].startswith("| run | teacher | student | control | task |")
    assert markdown[2].startswith("| r1 | big | small |  | toy_add | acc | 0.900 | 0.860 | 95.6 | 90.7..98.7 |")
    assert (
        "| -0.083..-0.011 | tango-cc | 200 | 0/8 | 0.0078 | inconclusive | chat | 4 | 1 | 2.50 | 0.25 |" in markdown[2]
    )
    console = Console(record=True, width=160)
    console.print(report.render_table(rows))
    text = console.export_text()
    assert "-0.083..-0.011" in text and "inconclusive" in text and "no-data" in text and "0/8" in text
    assert "J/tok" not in text and "capacity" not in text  # columns empty in every row are left out


def test_plain_text_table_has_the_terminal_tables_columns_one_line_per_row(results):
    rows = compare.compare_results(results)
    lines = report.render_text(rows).splitlines()
    assert lines[0] == "student vs teacher (r1)"
    assert [cell.strip() for cell in lines[1].split(" | ")][:4] == ["student", "teacher", "task / metric", "teacher"]
    assert "J/tok x" not in lines[1] and len(lines) == 3 + len(rows) + 1  # title, header, rule, rows, caption
    first = [cell.strip() for cell in lines[3].split(" | ")]
    assert first[:3] == ["small", "big", "toy_add acc"] and "-0.083..-0.011" in first and "2.50" in first
    console = Console(record=True, width=300)
    console.print(report.render_table(rows))
    assert "tok/s x" in console.export_text() and "tok/s x" in lines[1]


def test_no_results_gives_no_rows(tmp_path):
    assert compare.compare_results(tmp_path) == []
    assert report.to_json([]) == "[]\n"


def test_a_resumed_run_with_a_changed_config_compares_only_its_current_cells(tmp_path: Path) -> None:
    from bench.config import BenchConfig
    from bench.plan import build_plan, local_fingerprints, model_key
    from bench.run import manifest, model_keys

    def config(limit: int) -> BenchConfig:
        return BenchConfig.model_validate(
            {
                "run": {"name": "r"},
                "models": [
                    {"name": "big", "source": "org/big"},
                    {"name": "small", "source": "org/s", "teacher": "big"},
                ],
                "tasks": [{"name": "toy_add", "limit": limit}],
            }
        )

    run = tmp_path / "r"

    def write(cfg: BenchConfig, value: float) -> None:
        for model in cfg.models:
            record = make_record(
                ModelRecord, name=model.name, role=model.role, teacher=model.teacher, distillation_usd=None,
                distillation_teacher_tokens=None,
            )  # fmt: skip
            store.write_cell(run, "models", model_key(model, None), model.name, [record])  # hub ids: no fingerprint
        for cell in build_plan(cfg):
            sample = make_record(EvalSample, task="toy_add", doc_id=0, metric="acc", filter="none", value=value)
            score = make_record(EvalScore, task="toy_add", metric="acc", filter="none", value=value)
            store.write_cell(run, "eval_samples", cell.key, cell.model, [sample])
            store.write_cell(run, "eval_scores", cell.key, cell.model, [score])
        models = model_keys(cfg, local_fingerprints(cfg))
        store.write_manifest(run, manifest(cfg, build_plan(cfg), models, address=None))

    write(config(limit=10), value=0.0)  # an earlier run of the same name
    write(config(limit=20), value=1.0)  # resumed with a changed limit: new cells beside the old ones

    (row,) = compare.compare_results(run)
    assert (row.teacher_score, row.student_score, row.n_paired) == (1.0, 1.0, 1)


# -- 0/1 metrics ----------------------------------------------------------------------------------------


def binary_pair(b: int, c: int, n: int, both: int) -> PairedValues:
    """n documents: b right only for the student, c only for the teacher, `both` right for both."""
    teacher = np.array([0] * b + [1] * c + [1] * both + [0] * (n - b - c - both), dtype=float)
    student = np.array([1] * b + [0] * c + [1] * both + [0] * (n - b - c - both), dtype=float)
    return PairedValues(teacher, student)


def test_four_student_only_wins_at_n_200_are_not_better():
    key = ("toy_add", "exact_match", "none")
    paired = binary_pair(b=4, c=0, n=200, both=170)
    # The percentile bootstrap collapses onto the 4 wins and would call this "better".
    low, high = stats.bootstrap_ci(paired.student - paired.teacher, 0.95, 2000, seed=0)
    assert compare.verdict(low, high, 0.05) == compare.Verdict.BETTER
    (row,) = compare.compare_quality({key: 0.85}, {key: 0.87}, {key: paired}, set(), CompareConfig(), seed=0)
    assert row.interval_method == compare.IntervalMethod.TANGO_CC == "tango-cc"
    assert (row.discordant_student_only, row.discordant_teacher_only) == (4, 0)
    assert row.mcnemar_p == pytest.approx(0.125)
    assert row.diff_ci_low < 0 < row.diff_ci_high
    assert row.verdict == compare.Verdict.NON_INFERIOR


def test_no_discordant_document_gives_a_real_interval():
    key = ("toy_add", "exact_match", "none")
    paired = binary_pair(b=0, c=0, n=200, both=150)
    (row,) = compare.compare_quality({key: 0.75}, {key: 0.75}, {key: paired}, set(), CompareConfig(), seed=0)
    assert row.diff_ci_low < -0.015 and row.diff_ci_high > 0.015 and row.mcnemar_p == 1.0
    assert row.retention_ci_low_pct < 100 < row.retention_ci_high_pct


# -- cost ratios over blocks ----------------------------------------------------------------------------


def block_pair(block: int, teacher: dict, student: dict) -> BlockPair:
    return BlockPair(block, teacher, student)


def workload_of(ratios: list[float], sessions: list[str] | None = None, sweep: bool = False) -> PairedWorkload:
    sessions = sessions or ["s"] * len(ratios)
    blocks = []
    for block, (ratio, session) in enumerate(zip(ratios, sessions, strict=True)):
        teacher = dict(output_tokens_per_s=100.0, usd_per_mtok_output=10.0, session_id="s")
        student = dict(output_tokens_per_s=100.0 * ratio, usd_per_mtok_output=10.0 / ratio, session_id=session)
        if sweep:
            teacher["capacity_requests_per_s"], student["capacity_requests_per_s"] = 2.0, 2.0 * ratio
        blocks.append(block_pair(block, teacher, student))
    return PairedWorkload("chat", None if sweep else 8.0, tuple(blocks))


def test_ratios_are_geometric_means_with_t_intervals_over_blocks():
    perf = compare.compare_workload(workload_of([2.0, 2.5, 3.0, 2.4]), confidence=0.95)
    logs = np.log([2.0, 2.5, 3.0, 2.4])
    low, high = stats.t_interval(logs, 0.95)
    assert perf.throughput_ratio == pytest.approx(np.exp(logs.mean()))
    assert (perf.throughput_ratio_ci_low, perf.throughput_ratio_ci_high) == (
        pytest.approx(np.exp(low)), pytest.approx(np.exp(high)),
    )  # fmt: skip
    assert perf.usd_per_mtok_ratio_ci_high == pytest.approx(1 / perf.throughput_ratio_ci_low)
    assert (perf.j_per_token_ratio, perf.capacity_ratio, perf.n_blocks, perf.blocks_cross_session) == (None, None, 4, 0)


def comparison_row(**fields) -> compare.ComparisonRow:
    base = {name: None for name in (f.name for f in dataclasses.fields(compare.ComparisonRow))}
    base.update(run_id="r1", teacher="big", student="small", n_paired=0, verdict=compare.Verdict.NO_DATA)
    base.update(retention_margin=0.05, confidence=0.95, n_blocks=0, blocks_cross_session=0, control=False)
    base.update(summary="")
    return compare.ComparisonRow(**{**base, **fields})


def perf_row(workload: PairedWorkload, control: bool = False) -> compare.ComparisonRow:
    perf = compare.compare_workload(workload, confidence=0.95)
    row = comparison_row(**dataclasses.asdict(perf), control=control)
    row = dataclasses.replace(row, cost_verdict=report.cost_verdict(row))
    return dataclasses.replace(row, summary=report.summary(row))


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([2.0, 2.5, 3.0, 2.4], "≥ 1.8x cheaper"),  # $/Mtok upper bound 0.532: 1 / 0.532 = 1.88, rounded down
        ([0.5, 2.0, 1.1], "not shown cheaper: $/Mtok 0.97x, 95% CI 0.17..5.45x"),
        ([2.0], "$/Mtok 0.50x: no interval (needs 2 blocks)"),
    ],
)
def test_cost_verdict_claims_only_what_the_interval_supports(ratios, expected):
    row = perf_row(workload_of(ratios))
    assert row.cost_verdict == expected
    assert ("cost: " in row.summary) == (len(ratios) > 1)


def test_cost_verdict_rounds_down():
    row = comparison_row(usd_per_mtok_ratio=0.4, usd_per_mtok_ratio_ci_low=0.3, usd_per_mtok_ratio_ci_high=0.5)
    assert report.cost_verdict(row) == "≥ 2.0x cheaper"
    assert report.cost_verdict(comparison_row()) is None


def test_summary_says_when_blocks_were_paired_across_sessions():
    row = perf_row(workload_of([2.0, 2.1, 1.9], sessions=["s", "s", "resumed"]))
    assert row.blocks_cross_session == 1
    assert "(chat@8, 3 blocks, 1 paired across sessions (a resumed run))" in row.summary


def test_sweep_rows_carry_the_capacity_ratio():
    row = perf_row(workload_of([1.8, 2.0, 2.2], sweep=True))
    assert row.level is None and row.capacity_ratio == pytest.approx((1.8 * 2.0 * 2.2) ** (1 / 3))
    assert row.capacity_ratio_ci_low < row.capacity_ratio < row.capacity_ratio_ci_high
    assert "x capacity [" in row.summary and "(chat@capacity, 3 blocks)" in row.summary


# -- controls -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([0.97, 1.04, 1.0], "the throughput interval contains 1"),
        ([1.3, 1.32, 1.31], "the throughput interval excludes 1"),
    ],
)
def test_a_control_says_whether_its_interval_contains_1(ratios, expected):
    row = perf_row(workload_of(ratios), control=True)
    assert row.summary.startswith("control small vs big: ") and expected in row.summary


def test_controls_from_the_settings_give_perf_only_rows(results):
    run = results / "r1"
    summaries = [make_record(PerfSummary, workload="chat", level=4.0, output_tokens_per_s=260.0)]
    store.write_cell(run, "perf_summary", "tiny-chat", "tiny", summaries)
    settings = CompareConfig(bootstrap_samples=1000, controls=(("small", "tiny"), ("small", "nobody")))
    rows = compare.compare_results(results, settings)
    (control,) = [row for row in rows if row.control]
    assert rows[-1] is control  # after the run's student rows
    assert (control.teacher, control.student, control.task, control.verdict) == ("small", "tiny", None, "no-data")
    assert (control.workload, control.level, control.throughput_ratio) == ("chat", 4.0, pytest.approx(260 / 250))
    assert control.summary.endswith("no throughput interval to check")
    store.cell_path(run, "perf_summary", "tiny-chat").unlink()


def test_a_student_with_a_distillation_cost_gets_its_break_even_volume(tmp_path):
    run = build_results(tmp_path) / "r1"
    write_model(run, "small", "big", distillation_usd=3.0)  # replaces the student's models row
    row = row_for(compare.compare_results(run))
    # One block at chat@4: teacher 2.0 $/Mtok, student 0.5 -> saves 1.5 $/Mtok -> repaid after 2M tokens.
    assert (row.distillation_usd, row.saving_usd_per_mtok, row.break_even_mtok) == (3.0, 1.5, pytest.approx(2.0))
    assert row.break_even_ci_low_mtok is None  # one block: no interval
    assert row.summary.endswith("distilling cost $3; repaid after 2M output tokens (no interval: one block)")
