"""bench.leaderboard on the synthetic results tree of test_compare: entries, ranking, files and the command."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from bench import compare, leaderboard
from bench.cli import app
from tests.unit.test_compare import build_results
from tests.unit.test_store import make_record


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return build_results(tmp_path_factory.mktemp("leaderboard"))


def entries_of(results: Path) -> dict[str, leaderboard.LeaderboardEntry]:
    return {entry.student: entry for entry in leaderboard.build_entries(compare.compare_results(results))}


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


def row(student: str, verdict: str, throughput: float | None) -> compare.ComparisonRow:
    return make_record(
        compare.ComparisonRow, student=student, verdict=verdict, throughput_ratio=throughput, workload="chat"
    )


def test_passing_students_rank_first_then_by_speed():
    rows = [
        row("fast-bad", "inferior", 9.0),
        row("slow-ok", "non-inferior", 1.5),
        row("fast-ok", "better", 3.0),
        row("slow-unsure", "inconclusive", 1.2),
    ]
    ranked = [e.student for e in leaderboard.build_entries(rows)]
    assert ranked == ["fast-ok", "slow-ok", "slow-unsure", "fast-bad"]


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 100.0), (2.0, 95.0), (1.5, 90.0), (3.0, 80.0), (2.0, 95.0)]
    assert leaderboard.pareto_front(points) == [(1.0, 100.0), (2.0, 95.0), (3.0, 80.0)]


def test_written_files_hold_the_entries(results, tmp_path):
    entries = leaderboard.build_entries(compare.compare_results(results))
    paths = leaderboard.write_leaderboard(entries, tmp_path, source="results/")
    assert sorted(p.name for p in paths) == sorted(leaderboard.FILES)
    parquet = tmp_path / "leaderboard.parquet"
    table = duckdb.sql(f"select rank, student, throughput_ratio from '{parquet}' order by rank")
    assert table.fetchall() == [(1, "small", 2.5), (2, "tiny", None)]
    markdown = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert markdown[0].startswith("| # | student | teacher |") and "| 1 | small | big |" in markdown[2]
    svg = (tmp_path / "pareto.svg").read_text()
    assert "<svg" in svg and "small (chat@4)" in svg
    page = (tmp_path / "index.html").read_text()
    assert page.count("<svg") == 1 and "<?xml" not in page and "<td>small</td>" in page


def test_command_writes_the_leaderboard(results, tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", str(results), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted(leaderboard.FILES)


def test_command_without_pairs_exits_non_zero(tmp_path):
    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path), "--out", str(tmp_path / "site")])
    assert result.exit_code == 1
    assert "no teacher/student pair" in result.stderr
    assert not (tmp_path / "site").exists()
