"""bench.leaderboard and bench.leaderboard_page: entries with their intervals, ranking, controls, files, command."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import compare, leaderboard, leaderboard_page
from bench.cli import app
from tests.unit.test_compare import build_results
from tests.unit.test_store import README, make_record

NASTY = "<b>lab|el</b> & $co$ -->"  # a student name that must stay text in HTML, Markdown and the plot


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return build_results(tmp_path_factory.mktemp("leaderboard"))


def entries_of(results: Path) -> dict[str, leaderboard.LeaderboardEntry]:
    return {entry.student: entry for entry in leaderboard.build_entries(compare.compare_results(results))}


# -- synthetic comparison rows with the schema-3 evidence ---------------------------------------------------


def comparison_row(**fields) -> compare.ComparisonRow:
    """A comparison row: a typed value in every field (make_record), a student row unless `control` is given.

    Built by field name only, so it fits compare's ComparisonRow whatever the order of its fields.
    """
    defaults = {"run_id": "q1", "teacher": "teacher", "control": False, "confidence": 0.95, "n_blocks": 5}
    defaults |= {"blocks_cross_session": 0, "workload": "chat", "level": 8.0, "filter": "none", "metric": "acc"}
    defaults |= {"compute_matched": False, **dict.fromkeys(MATCHED_FIELDS)}
    return make_record(compare.ComparisonRow, **(defaults | fields))


# The compute-matched fields of a row (bench.matched), None in every other row.
MATCHED_FIELDS = (
    "baseline_task", "k", "teacher_tokens_per_answer", "student_tokens_per_answer", "teacher_usd_per_question",
    "student_usd_per_question", "within_budget", "smallest_matching_k",
)  # fmt: skip


def task_row(student: str, task: str, kept: tuple[float, float, float], verdict: str, **fields):
    retention, low, high = kept
    values = {"retention_pct": retention, "retention_ci_low_pct": low, "retention_ci_high_pct": high}
    return comparison_row(student=student, task=task, verdict=verdict, **values, **fields)


KD_COST = {
    "throughput_ratio": 2.1, "throughput_ratio_ci_low": 1.85, "throughput_ratio_ci_high": 2.38,
    "usd_per_mtok_ratio": 0.48, "usd_per_mtok_ratio_ci_low": 0.42, "usd_per_mtok_ratio_ci_high": 0.54,
    "j_per_token_ratio": None, "j_per_token_ratio_ci_low": None, "j_per_token_ratio_ci_high": None,
    "capacity_ratio": 2.2, "capacity_ratio_ci_low": 1.9, "capacity_ratio_ci_high": 2.5,
    "cost_verdict": "≥ 1.85x cheaper",
}  # fmt: skip
NASTY_COST = KD_COST | {"throughput_ratio": 2.4, "throughput_ratio_ci_low": 1.2, "throughput_ratio_ci_high": 3.6}


def evidence_rows() -> list[compare.ComparisonRow]:
    """Two students with intervals, a student without results, and a control pair (kd against label)."""
    binary = {"interval_method": "newcombe", "n_paired": 200}
    return [
        task_row("kd", "toy_add", (97.5, 94.0, 101.0), "non-inferior", teacher_score=0.8, student_score=0.78,
                 diff_mean=-0.02, diff_ci_low=-0.05, diff_ci_high=0.01, discordant_student_only=6,
                 discordant_teacher_only=10, mcnemar_p=0.4545, **binary, **KD_COST),
        task_row("kd", "toy_sort", (105.0, 98.0, 112.0), "better", teacher_score=0.6, student_score=0.63,
                 diff_mean=0.03, diff_ci_low=0.01, diff_ci_high=0.07, discordant_student_only=14,
                 discordant_teacher_only=2, mcnemar_p=0.0042, **binary, **KD_COST),
        task_row(NASTY, "toy_add", (80.0, 70.0, 90.0), "inferior", **binary, **NASTY_COST),
        task_row(NASTY, "toy_sort", (99.0, 95.0, 103.0), "non-inferior", **binary, **NASTY_COST),
        comparison_row(student="tiny", task=None, metric=None, filter=None, verdict="no-data", workload=None,
                       level=None, retention_pct=None, n_blocks=0, **dict.fromkeys(KD_COST)),
        comparison_row(teacher="kd", student="label", control=True, task=None, metric=None, verdict="no-data",
                       **KD_COST | {"throughput_ratio": 1.03, "throughput_ratio_ci_low": 0.91,
                                    "throughput_ratio_ci_high": 1.17}),
    ]  # fmt: skip


def write_board(out: Path) -> leaderboard.Leaderboard:
    board = leaderboard.build_leaderboard(evidence_rows())
    leaderboard.write_leaderboard(board, out, source="results/<q1>")
    return board


# -- entries from compare's rows --------------------------------------------------------------------------------


def test_an_entry_summarises_a_students_tasks_beside_its_speed(results):
    small = entries_of(results)["small"]
    # toy_add keeps 172/180 (inconclusive at margin 0.05), toy_sort 160/100 (better); chat compared at level 4.
    assert (small.task_metrics, small.passing, small.worst_verdict) == (2, 1, "inconclusive")
    assert small.mean_retention_pct == pytest.approx((172 / 180 + 160 / 100) / 2 * 100)
    assert (small.workload, small.level, small.throughput_ratio, small.usd_per_mtok_ratio) == ("chat", 4.0, 2.5, 0.25)


def test_a_student_without_results_is_listed_last_with_no_data(results):
    entries = leaderboard.build_entries(compare.compare_results(results))
    ranked = [(e.rank, e.student, e.worst_verdict) for e in entries]
    assert ranked == [(1, "small", "inconclusive"), (2, "tiny", "no-data")]


def test_the_worst_task_decides_whether_a_student_passes(tmp_path):
    small = entries_of(build_results(tmp_path, retention_margin=0.1))["small"]
    assert (small.passing, small.worst_verdict) == (2, "non-inferior")


def test_passing_students_rank_first_then_by_speed():
    rows = [
        comparison_row(student="fast-bad", verdict="inferior", throughput_ratio=9.0),
        comparison_row(student="slow-ok", verdict="non-inferior", throughput_ratio=1.5),
        comparison_row(student="fast-ok", verdict="better", throughput_ratio=3.0),
        comparison_row(student="slow-unsure", verdict="inconclusive", throughput_ratio=1.2),
    ]
    ranked = [e.student for e in leaderboard.build_entries(rows)]
    assert ranked == ["fast-ok", "slow-ok", "slow-unsure", "fast-bad"]


# -- intervals and controls -----------------------------------------------------------------------------------


def test_quality_kept_is_the_mean_of_task_retentions_with_the_mean_of_their_bounds():
    kd = {e.student: e for e in leaderboard.build_entries(evidence_rows())}["kd"]
    assert kd.mean_retention_pct == pytest.approx((97.5 + 105.0) / 2)
    assert (kd.retention_ci_low_pct, kd.retention_ci_high_pct) == (pytest.approx(96.0), pytest.approx(106.5))
    assert (kd.throughput_ratio_ci_low, kd.throughput_ratio_ci_high, kd.n_blocks) == (1.85, 2.38, 5)
    assert (kd.capacity_ratio, kd.cost_verdict) == (2.2, "≥ 1.85x cheaper")


def test_a_task_without_an_interval_leaves_the_entry_without_one():
    rows = [task_row("s", "a", (90.0, 85.0, 95.0), "non-inferior"), task_row("s", "b", (99.0, 95.0, 103.0), "better")]
    rows[1] = comparison_row(**{**rows[1].__dict__, "retention_ci_low_pct": None})
    (entry,) = leaderboard.build_entries(rows)
    assert entry.mean_retention_pct == pytest.approx(94.5)
    assert (entry.retention_ci_low_pct, entry.retention_ci_high_pct) == (None, None)


def matched_row(student: str, k: int, verdict: str, within: bool | None, smallest: int | None, **fields):
    """A compute-matched row of `student`: maj@k on add_sampled against the teacher's pass@1 on add."""
    values = {"task": "add_sampled", "baseline_task": "add", "filter": f"maj@{k}", "n_paired": 200}
    values |= {"within_budget": within, "smallest_matching_k": smallest, "retention_pct": None}
    return comparison_row(student=student, k=k, verdict=verdict, compute_matched=True, **values | fields)


def test_entries_show_the_smallest_matching_k_within_budget_or_why_there_is_none(tmp_path):
    matched = [
        matched_row("kd", 1, "inferior", True, 3), matched_row("kd", 3, "non-inferior", True, 3),
        matched_row("kd", 5, "better", False, 3),
        matched_row(NASTY, 1, "inferior", True, None), matched_row(NASTY, 3, "non-inferior", False, None),
        matched_row("tiny", 1, "non-inferior", None, None, workload=None, level=None),
    ]  # fmt: skip
    plain = {entry.student: entry for entry in leaderboard.build_entries(evidence_rows())}
    board = leaderboard.build_leaderboard(evidence_rows() + matched)
    entries = {entry.student: entry for entry in board.entries}
    assert {name: (entry.matched_status, entry.smallest_matching_k) for name, entry in entries.items()} == {
        "kd": (leaderboard.MatchedStatus.MATCHED, 3),
        NASTY: (leaderboard.MatchedStatus.NONE_WITHIN_BUDGET, None),
        "tiny": (leaderboard.MatchedStatus.NOT_PRICED, None),
    }
    # Compute-matched rows are no task metrics: quality kept, verdicts and ranks are those without them.
    for name, entry in plain.items():
        assert dataclasses.replace(entries[name], matched_status=None, smallest_matching_k=None) == entry
    lines = leaderboard.to_markdown(board).splitlines()
    assert lines[0].endswith("| compute-matched k | docs to decision |")
    assert [line.rsplit("|", 3)[1].strip() for line in lines[2:5]] == ["k=3", "none within budget", "not priced"]
    leaderboard.write_leaderboard(board, tmp_path, source="results")
    page = (tmp_path / "index.html").read_text()
    assert "<th>compute-matched k</th>" in page and "<td>k=3</td>" in page
    assert page.count("Compute-matched quality:") == 3 and "<td>add_sampled vs add</td>" in page
    stored = pq.read_table(tmp_path / "leaderboard.parquet").select(["student", "matched_status"]).to_pylist()
    assert {row["student"]: row["matched_status"] for row in stored}["kd"] == "matched"


def test_an_entry_without_compute_matched_rows_has_no_status():
    (entry,) = leaderboard.build_entries([task_row("kd", "toy_add", (97.5, 94.0, 101.0), "non-inferior")])
    assert (entry.matched_status, entry.smallest_matching_k, leaderboard.matched_text(entry)) == (None, None, "-")
    only_no_data = [
        task_row("kd", "toy_add", (97.5, 94.0, 101.0), "non-inferior"),
        matched_row("kd", 1, "no-data", None, None, n_paired=0),
    ]
    (entry,) = leaderboard.build_entries(only_no_data)
    assert entry.matched_status is leaderboard.MatchedStatus.NO_DATA


def test_controls_are_listed_apart_and_never_ranked():
    board = leaderboard.build_leaderboard(evidence_rows())
    assert [(e.rank, e.student) for e in board.entries] == [(1, "kd"), (2, NASTY), (3, "tiny")]
    (control,) = board.controls
    assert (control.model_a, control.model_b, control.throughput_ratio) == ("kd", "label", 1.03)
    assert control.throughput_ci_contains_1 is True
    assert [row.task for row in board.rows_of(board.entries[0])] == ["toy_add", "toy_sort"]


def test_format_interval():
    assert leaderboard.format_interval(2.1, 1.85, 2.384, ".2f") == "2.10 [1.85, 2.38]"
    assert leaderboard.format_interval(2.1, None, None, ".2f") == "2.10"
    assert leaderboard.format_interval(None, 1.0, 2.0, ".2f") == "-"


# -- files ---------------------------------------------------------------------------------------------------


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 100.0), (2.0, 95.0), (1.5, 90.0), (3.0, 80.0), (2.0, 95.0)]
    assert leaderboard_page.pareto_front(points) == [(1.0, 100.0), (2.0, 95.0), (3.0, 80.0)]


def test_markdown_shows_intervals_and_escapes_names(tmp_path):
    write_board(tmp_path)
    markdown = (tmp_path / "leaderboard.md").read_text()
    lines = markdown.splitlines()
    assert lines[0].startswith("| # | student | teacher | run | quality kept % [CI] |")
    assert lines[2].startswith("| 1 | kd | teacher | q1 | 101.2 [96.0, 106.5] | 2/2 | non-inferior | chat@8 |")
    assert "| 2.10 [1.85, 2.38] | 0.48 [0.42, 0.54] | - | 2.20 [1.90, 2.50] | 5 | ≥ 1.85x cheaper |" in lines[2]
    assert "| 2 | &lt;b&gt;lab\\|el&lt;/b&gt; &amp; $co$ --&gt; |" in markdown and "<b>" not in markdown
    assert "| label / kd | q1 | chat@8 | 1.03 [0.91, 1.17] |" in markdown and markdown.count("| yes |") == 1


def test_svg_has_an_error_bar_per_interval(tmp_path):
    write_board(tmp_path)
    ids = {element.get("id") for element in ET.parse(tmp_path / "pareto.svg").iter()}
    for rank in (1, 2):
        assert {f"errorbar-cost-{rank}", f"errorbar-quality-{rank}", f"point-{rank}"} <= ids
    assert not {"errorbar-cost-3", "errorbar-quality-3", "point-3"} & ids  # tiny has nothing to plot


def test_a_plot_of_many_entries_names_the_best_ranked_and_the_front_with_their_error_bars():
    """At leaderboard scale every entry is a point; the best-ranked and those on the Pareto front are named and
    carry error bars (a thousand bars would hide the points)."""
    fields = dict.fromkeys(f.name for f in dataclasses.fields(leaderboard.LeaderboardEntry))
    fields |= {"student": "s", "worst_verdict": "inconclusive", "workload": "chat", "level": 8.0}
    entries = [
        leaderboard.LeaderboardEntry(**fields | {
            "rank": rank, "throughput_ratio": 2.0 - rank / 1000, "throughput_ratio_ci_low": 1.5,
            "throughput_ratio_ci_high": 2.5, "mean_retention_pct": 90.0 - rank / 100 + (rank == 300) * 20,
            "retention_ci_low_pct": 80.0, "retention_ci_high_pct": 99.0,
        })
        for rank in range(1, 301)
    ]  # fmt: skip
    svg = ET.fromstring(leaderboard_page.plot_pareto(entries))
    ids = {element.get("id") for element in svg.iter()}
    texts = [text.text for text in svg.iter("{http://www.w3.org/2000/svg}text")]
    named = [int(text.split()[0][1:]) for text in texts if text.startswith("#")]
    assert sorted(named) == [*range(1, leaderboard_page._LABELLED + 1), 300]  # 300 is on the front: 110 % kept
    assert {f"point-{rank}" for rank in range(1, 301)} <= ids
    assert {f"errorbar-cost-{rank}" for rank in named} <= ids and "errorbar-cost-200" not in ids


def test_page_escapes_names_and_has_a_drill_down_per_entry(tmp_path):
    write_board(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert page.count("<svg") == 1 and "<?xml" not in page
    assert "&lt;b&gt;lab|el&lt;/b&gt; &amp; $co$ --&gt;" in page and "<b>lab" not in page
    assert "results/&lt;q1&gt;" in page
    assert [page.count(f"id='drill-{rank}'") for rank in (1, 2, 3)] == [1, 1, 1]
    assert "<td>0.0042</td>" in page and "<td>14</td>" in page and "Controls (not ranked)" in page


def test_written_files_hold_the_entries(results, tmp_path):
    board = leaderboard.build_leaderboard(compare.compare_results(results))
    paths = leaderboard.write_leaderboard(board, tmp_path, source="results/")
    assert sorted(p.name for p in paths) == sorted(leaderboard.FILES)
    parquet = tmp_path / "leaderboard.parquet"
    table = duckdb.sql(f"select rank, student, throughput_ratio from '{parquet}' order by rank")
    assert table.fetchall() == [(1, "small", 2.5), (2, "tiny", None)]
    assert duckdb.sql(f"select count(*) from '{tmp_path / 'controls.parquet'}'").fetchall() == [(0,)]
    markdown = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert markdown[0].startswith("| # | student | teacher |") and "| 1 | small | big |" in markdown[2]
    svg = (tmp_path / "pareto.svg").read_text()
    assert "<svg" in svg and "#1 small (chat@4)" in svg
    page = (tmp_path / "index.html").read_text()
    assert page.count("<svg") == 1 and "<?xml" not in page and "<td>small</td>" in page


def test_controls_parquet_holds_the_controls(tmp_path):
    write_board(tmp_path)
    query = f"select model_a, model_b, throughput_ci_contains_1 from '{tmp_path / 'controls.parquet'}'"
    assert duckdb.sql(query).fetchall() == [("kd", "label", True)]


def test_command_writes_the_leaderboard(results, tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", str(results), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted(leaderboard.FILES)


def test_command_without_pairs_exits_non_zero(tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path), "--out", str(tmp_path / "site")])
    assert result.exit_code == 1
    assert "no teacher/student pair" in result.stderr
    assert not (tmp_path / "site").exists()


def test_results_readme_lists_exactly_the_leaderboard_columns():
    text = README.read_text().split("## The leaderboard's files")[1]
    sections = text.split("controls.parquet, one row per")
    for section, record in zip(sections, (leaderboard.LeaderboardEntry, leaderboard.ControlEntry), strict=True):
        documented = re.findall(r"^\| `(\w+)` \| ", section, flags=re.MULTILINE)
        assert documented == [field.name for field in dataclasses.fields(record)]
