"""The leaderboard: every student ranked, as Parquet, Markdown, a static HTML page and a Pareto plot.

Built from comparison rows only (`compare.compare_results`), so it re-renders from stored results at any
time and each number traces back to them. One entry per (run, student, workload): the student's quality
over every task metric it was compared on (mean retention, and the worst verdict: a student is only as
non-inferior as its worst task) beside its speed and cost ratios to its teacher for that workload.
Ranking: students that are non-inferior (or better) on every task first, fastest first; then the rest,
inconclusive before inferior, each fastest first.
The Pareto plot puts the throughput ratio against the mean retention, one point per entry.
"""

from __future__ import annotations

import dataclasses
import html
import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import store
from bench.compare import ComparisonRow
from bench.report import format_value, markdown_table

VERDICTS_WORST_FIRST = ("no-data", "inferior", "inconclusive", "non-inferior", "better")
PASSING = frozenset({"non-inferior", "better"})
FILES = ("leaderboard.parquet", "leaderboard.md", "pareto.svg", "index.html")


@dataclass(frozen=True)
class LeaderboardEntry:
    """One student on one workload, against its teacher in the same run (file `leaderboard.parquet`)."""

    rank: int
    run_id: str
    student: str
    teacher: str
    task_metrics: int  # (task, metric) pairs compared
    passing: int  # of those, verdict "non-inferior" or "better"
    mean_retention_pct: float | None
    worst_verdict: str
    workload: str | None
    level: float | None
    throughput_ratio: float | None  # student / teacher output tokens per second
    usd_per_mtok_ratio: float | None
    j_per_token_ratio: float | None


GroupKey = tuple[str, str, str, str | None, float | None]  # run, student, teacher, workload, level


def _group(rows: Sequence[ComparisonRow]) -> dict[GroupKey, list[ComparisonRow]]:
    groups: dict[GroupKey, list[ComparisonRow]] = {}
    for row in rows:
        groups.setdefault((row.run_id, row.student, row.teacher, row.workload, row.level), []).append(row)
    return groups


def _entry(key: GroupKey, rows: list[ComparisonRow]) -> LeaderboardEntry:
    quality = [row for row in rows if row.task is not None]
    retentions = [row.retention_pct for row in quality if row.retention_pct is not None]
    verdicts = [row.verdict for row in quality] or ["no-data"]
    first = rows[0]
    return LeaderboardEntry(
        rank=0,
        run_id=key[0],
        student=key[1],
        teacher=key[2],
        task_metrics=len(quality),
        passing=sum(row.verdict in PASSING for row in quality),
        mean_retention_pct=statistics.fmean(retentions) if retentions else None,
        worst_verdict=min(verdicts, key=VERDICTS_WORST_FIRST.index),
        workload=key[3],
        level=key[4],
        throughput_ratio=first.throughput_ratio,
        usd_per_mtok_ratio=first.usd_per_mtok_ratio,
        j_per_token_ratio=first.j_per_token_ratio,
    )


def _rank_key(entry: LeaderboardEntry) -> tuple:
    speed = entry.throughput_ratio if entry.throughput_ratio is not None else float("-inf")
    # Passing students by speed alone; the others by how badly their worst task failed, then speed.
    passing = entry.worst_verdict in PASSING
    failure = 0 if passing else -VERDICTS_WORST_FIRST.index(entry.worst_verdict)
    return (not passing, failure, -speed, entry.run_id, entry.student, entry.workload or "")


def build_entries(rows: Sequence[ComparisonRow]) -> list[LeaderboardEntry]:
    """Entries from comparison rows, ranked (1 = best)."""
    entries = sorted((_entry(key, group) for key, group in _group(rows).items()), key=_rank_key)
    return [dataclasses.replace(entry, rank=rank) for rank, entry in enumerate(entries, start=1)]


_COLUMNS: tuple[tuple[str, Callable[[LeaderboardEntry], str]], ...] = (
    ("#", lambda e: str(e.rank)),
    ("student", lambda e: e.student),
    ("teacher", lambda e: e.teacher),
    ("run", lambda e: e.run_id),
    ("quality kept %", lambda e: format_value(e.mean_retention_pct, ".1f")),
    ("tasks passing", lambda e: f"{e.passing}/{e.task_metrics}"),
    ("worst verdict", lambda e: e.worst_verdict),
    ("workload", lambda e: f"{e.workload}@{format_value(e.level, 'g')}" if e.workload else "-"),
    ("throughput x", lambda e: format_value(e.throughput_ratio, ".2f")),
    ("$/Mtok x", lambda e: format_value(e.usd_per_mtok_ratio, ".2f")),
    ("J/token x", lambda e: format_value(e.j_per_token_ratio, ".2f")),
)


def to_markdown(entries: Sequence[LeaderboardEntry]) -> str:
    """The leaderboard as a Markdown table; x = student / teacher."""
    return "\n".join(markdown_table(_COLUMNS, entries)) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on both), by increasing x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def plot_pareto(entries: Sequence[LeaderboardEntry]) -> str:
    """Throughput ratio against mean retention, one point per entry, the teacher at (1, 100); SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [e for e in entries if e.throughput_ratio is not None and e.mean_retention_pct is not None]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter([1.0], [100.0], marker="*", s=180, color="black", label="teacher", zorder=3)
    axes.axhline(100.0, color="black", linewidth=0.8, alpha=0.4)
    for passing in (True, False):
        group = [e for e in plotted if (e.worst_verdict in PASSING) == passing]
        if not group:
            continue
        label = "non-inferior on every task" if passing else "inferior or inconclusive somewhere"
        xs, ys = [e.throughput_ratio for e in group], [e.mean_retention_pct for e in group]
        axes.scatter(xs, ys, s=50, color="tab:green" if passing else "tab:red", label=label, zorder=3)
    for entry in plotted:
        name = f"{entry.student} ({entry.workload}@{entry.level:g})"
        axes.annotate(name, (entry.throughput_ratio, entry.mean_retention_pct), fontsize=8,
                      xytext=(5, 4), textcoords="offset points")  # fmt: skip
    front = pareto_front([(1.0, 100.0)] + [(e.throughput_ratio, e.mean_retention_pct) for e in plotted])
    axes.plot([x for x, _ in front], [y for _, y in front], linestyle="--", color="grey", label="Pareto front")
    axes.set_xlabel("throughput, student / teacher (x)")
    axes.set_ylabel("quality kept, mean over tasks (%)")
    axes.set_title("distilled students: speed against quality kept")
    axes.grid(alpha=0.3)
    axes.margins(0.2)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    svg = io.StringIO()
    figure.savefig(svg, format="svg")
    plt.close(figure)
    return svg.getvalue()


def to_html(entries: Sequence[LeaderboardEntry], plot_svg: str, source: str) -> str:
    """A self-contained static page: the plot (inline SVG) and the ranked table."""
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in _COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(entry))}</td>" for _, cell in _COLUMNS) + "</tr>" for entry in entries
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}"
        "table{border-collapse:collapse}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}"
        "th:nth-child(-n+4),td:nth-child(-n+4){text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>distill-bench leaderboard</title>"
        f"<style>{style}</style></head><body><h1>distill-bench leaderboard</h1>"
        f"<p>From {html.escape(source)}. x = student / teacher, measured on the same hardware in the same run.</p>"
        f"{plot_svg}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def write_leaderboard(entries: Sequence[LeaderboardEntry], out_dir: Path, source: str) -> list[Path]:
    """Write leaderboard.parquet, leaderboard.md, pareto.svg and index.html into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet = store.write_records(out_dir / "leaderboard.parquet", LeaderboardEntry, entries)
    markdown = out_dir / "leaderboard.md"
    markdown.write_text(to_markdown(entries))
    svg = out_dir / "pareto.svg"
    plot = plot_pareto(entries)
    svg.write_text(plot)
    page = out_dir / "index.html"
    page.write_text(to_html(entries, plot[plot.index("<svg") :], source))  # inline: no XML prolog
    return [parquet, markdown, svg, page]
