"""The leaderboard's pictures: the Pareto plot (SVG) and the static, self-contained HTML page.

The plot puts each entry's throughput ratio (x) against its quality kept (y), with both intervals drawn as
error bars. Every error bar is its own SVG group with a stable id, `errorbar-cost-<rank>` (horizontal) and
`errorbar-quality-<rank>` (vertical), and every point `point-<rank>`, so a test (or a reader's script) can
find them in the DOM. The page holds the plot inline, the ranked table, under each entry a drill-down
(`<details>`) with the evidence per task and per cost ratio, and the controls. Every name is HTML-escaped.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence

from bench.compare import ComparisonRow
from bench.leaderboard import (
    PASSING,
    READING,
    ControlEntry,
    Leaderboard,
    LeaderboardEntry,
    contains_one_text,
    format_interval,
    format_load,
    quality_text,
    ratio_text,
)
from bench.report import format_value

_PASSING_COLOR, _FAILING_COLOR = "tab:green", "tab:red"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on both), by increasing x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def _error_bar(axes, entry: LeaderboardEntry, axis: str, color: str) -> None:
    """One interval of an entry as an error bar whose SVG group has the id errorbar-<axis>-<rank>."""
    x, y = entry.throughput_ratio, entry.mean_retention_pct
    low, high, what = (
        (entry.throughput_ratio_ci_low, entry.throughput_ratio_ci_high, "cost")
        if axis == "x"
        else (entry.retention_ci_low_pct, entry.retention_ci_high_pct, "quality")
    )
    if low is None or high is None:
        return
    centre = x if axis == "x" else y
    # max(0, ...): a point estimate a hair outside its interval (rounding) must not make a negative bar.
    error = [[max(0.0, centre - low)], [max(0.0, high - centre)]]
    bars = axes.errorbar([x], [y], **{f"{axis}err": error}, fmt="none", ecolor=color, elinewidth=1.3,
                         capsize=3, alpha=0.75, zorder=2)  # fmt: skip
    _, caps, (lines,) = bars.lines
    lines.set_gid(f"errorbar-{what}-{entry.rank}")
    for index, cap in enumerate(caps):
        cap.set_gid(f"errorbar-{what}-{entry.rank}-cap{index}")


def plot_pareto(entries: Sequence[LeaderboardEntry]) -> str:
    """Throughput ratio against quality kept, with both intervals, the teacher at (1, 100); SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [e for e in entries if e.throughput_ratio is not None and e.mean_retention_pct is not None]
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.scatter([1.0], [100.0], marker="*", s=180, color="black", label="teacher", zorder=3)
    axes.axhline(100.0, color="black", linewidth=0.8, alpha=0.4)
    axes.axvline(1.0, color="black", linewidth=0.8, alpha=0.4)
    labelled = set()
    for entry in plotted:
        passing = entry.worst_verdict in PASSING
        color = _PASSING_COLOR if passing else _FAILING_COLOR
        _error_bar(axes, entry, "x", color)
        _error_bar(axes, entry, "y", color)
        label = "non-inferior on every task" if passing else "inferior or inconclusive somewhere"
        point = axes.scatter([entry.throughput_ratio], [entry.mean_retention_pct], s=50, color=color, zorder=3,
                             label=None if label in labelled else label)  # fmt: skip
        point.set_gid(f"point-{entry.rank}")
        labelled.add(label)
        name = f"#{entry.rank} {entry.student} ({format_load(entry.workload, entry.level)})"
        axes.annotate(name, (entry.throughput_ratio, entry.mean_retention_pct), fontsize=8,
                      xytext=(6, 5), textcoords="offset points", parse_math=False)  # fmt: skip
    front = pareto_front([(1.0, 100.0)] + [(e.throughput_ratio, e.mean_retention_pct) for e in plotted])
    if len(front) > 1:  # one undominated point is no front to draw
        axes.plot([x for x, _ in front], [y for _, y in front], linestyle="--", color="grey", label="Pareto front")
    axes.set_xlabel("throughput, student / teacher (x), with its interval over blocks")
    axes.set_ylabel("quality kept, mean over tasks (%), with its interval")
    axes.set_title("distilled students: speed against quality kept")
    axes.grid(alpha=0.3)
    axes.margins(0.2)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    svg = io.StringIO()
    figure.savefig(svg, format="svg")
    plt.close(figure)
    return svg.getvalue()


# -- the page -----------------------------------------------------------------------------------------

_VERDICT_CLASS = {"better": "good", "non-inferior": "good", "inconclusive": "unsure", "inferior": "bad"}


def _verdict(text: str) -> str:
    return f"<span class='verdict {_VERDICT_CLASS.get(text, 'none')}'>{html.escape(text)}</span>"


def _p_value(p: float | None) -> str:
    return "-" if p is None else "<0.001" if p < 0.001 else f"{p:.3g}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


_ENTRY_COLUMNS: tuple[tuple[str, Callable[[LeaderboardEntry], str]], ...] = (
    ("#", lambda e: str(e.rank)),
    ("student", lambda e: html.escape(e.student)),
    ("teacher", lambda e: html.escape(e.teacher)),
    ("run", lambda e: html.escape(e.run_id)),
    ("quality kept % [CI]", lambda e: quality_text(e)),
    ("tasks passing", lambda e: f"{e.passing}/{e.task_metrics}"),
    ("worst verdict", lambda e: _verdict(e.worst_verdict)),
    ("workload", lambda e: html.escape(format_load(e.workload, e.level))),
    ("throughput x [CI]", lambda e: ratio_text(e, "throughput_ratio")),
    ("$/Mtok x [CI]", lambda e: ratio_text(e, "usd_per_mtok_ratio")),
    ("blocks", lambda e: str(e.n_blocks)),
    ("cost verdict", lambda e: html.escape(e.cost_verdict or "-")),
)
_TEXT_COLUMNS = 4  # the first columns are names (left-aligned); the rest are numbers

_TASK_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("task", lambda r: html.escape(r.task or "-")),
    ("metric (filter)", lambda r: html.escape(f"{r.metric or '-'} ({r.filter or '-'})")),
    ("teacher", lambda r: format_value(r.teacher_score, ".3f")),
    ("student", lambda r: format_value(r.student_score, ".3f")),
    ("kept % [CI]", lambda r: format_interval(r.retention_pct, r.retention_ci_low_pct, r.retention_ci_high_pct, ".1f")),
    ("diff [CI]", lambda r: format_interval(r.diff_mean, r.diff_ci_low, r.diff_ci_high, "+.3f")),
    ("interval", lambda r: html.escape(r.interval_method or "-")),
    ("n", lambda r: str(r.n_paired)),
    ("b: student only right", lambda r: _count(r.discordant_student_only)),
    ("c: teacher only right", lambda r: _count(r.discordant_teacher_only)),
    ("McNemar p", lambda r: _p_value(r.mcnemar_p)),
    ("verdict", lambda r: _verdict(str(r.verdict))),
)

_CONTROL_COLUMNS: tuple[tuple[str, Callable[[ControlEntry], str]], ...] = (
    ("model b / model a", lambda c: f"{html.escape(c.model_b)} / {html.escape(c.model_a)}"),
    ("run", lambda c: html.escape(c.run_id)),
    ("workload", lambda c: html.escape(format_load(c.workload, c.level))),
    ("throughput x [CI]", lambda c: ratio_text(c, "throughput_ratio")),
    ("$/Mtok x [CI]", lambda c: ratio_text(c, "usd_per_mtok_ratio")),
    ("capacity x [CI]", lambda c: ratio_text(c, "capacity_ratio")),
    ("blocks", lambda c: str(c.n_blocks)),
    ("CI contains 1", lambda c: contains_one_text(c.throughput_ci_contains_1)),
)


def _table(columns: Sequence[tuple[str, Callable]], items: Sequence, css: str) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(item)}</td>" for _, cell in columns) + "</tr>" for item in items)
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cost_list(entry: LeaderboardEntry) -> str:
    ratios = (
        ("throughput", "throughput_ratio"),
        ("$/Mtok", "usd_per_mtok_ratio"),
        ("J/token", "j_per_token_ratio"),
        ("capacity under the SLO", "capacity_ratio"),
    )
    items = "".join(f"<li>{html.escape(name)} x: {ratio_text(entry, ratio)}</li>" for name, ratio in ratios)
    cross = f", {entry.blocks_cross_session} across sessions" if entry.blocks_cross_session else ""
    return (
        f"<p class='cost'>Cost on {html.escape(format_load(entry.workload, entry.level))}, student / teacher, "
        f"over {entry.n_blocks} block(s){cross}: <b>{html.escape(entry.cost_verdict or 'no cost verdict')}</b></p>"
        f"<ul class='cost'>{items}</ul>"
    )


def _entry_rows(entry: LeaderboardEntry, rows: Sequence[ComparisonRow]) -> str:
    cells = "".join(f"<td>{cell(entry)}</td>" for _, cell in _ENTRY_COLUMNS)
    tasks = [row for row in rows if row.task is not None]
    task_table = _table(_TASK_COLUMNS, tasks, "tasks") if tasks else "<p>No task compared.</p>"
    summary = f"evidence: {len(tasks)} task metric(s), cost ratios over {entry.n_blocks} block(s)"
    drill = (
        # The leader's evidence is open on arrival: the first thing a reader checks is why it leads.
        f"<details id='drill-{entry.rank}'{' open' if entry.rank == 1 else ''}><summary>{summary}</summary>"
        f"<p>Confidence {entry.confidence:.0%}. b and c: documents only the student / only the teacher got "
        f"right (binary metrics); McNemar p: exact test of b against c.</p>{task_table}{_cost_list(entry)}</details>"
    )
    return (
        f"<tbody class='entry' id='entry-{entry.rank}'><tr class='summary'>{cells}</tr>"
        f"<tr class='drill'><td colspan='{len(_ENTRY_COLUMNS)}'>{drill}</td></tr></tbody>"
    )


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:84em;padding:0 1em;color:#222}"
    "h1{margin-bottom:.2em}p.key{max-width:60em;color:#444}"
    ".plot svg{max-width:52em;height:auto}"
    "table{border-collapse:collapse;margin:.6em 0}"
    "th,td{padding:.35em .7em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
    "th{background:#f4f4f4;font-weight:600;white-space:normal;vertical-align:bottom}"
    "table.board{width:100%;font-size:.95em}"
    f"table.board>thead th:nth-child(-n+{_TEXT_COLUMNS}),"
    f"table.board>tbody>tr.summary>td:nth-child(-n+{_TEXT_COLUMNS}){{text-align:left}}"
    # Names wrap (a long one must not push the numbers off the page); numbers and intervals never do.
    f"table.board>tbody>tr.summary>td:nth-child(-n+{_TEXT_COLUMNS}),table.board>tbody>tr.summary>td:last-child"
    "{white-space:normal;overflow-wrap:anywhere;max-width:14em}"
    "table.board>tbody.entry>tr.summary>td{border-top:2px solid #bbb;font-variant-numeric:tabular-nums}"
    "tr.drill>td{text-align:left;white-space:normal;background:#fafafa;padding-left:2em}"
    "details>summary{cursor:pointer;color:#0550ae}"
    "table.tasks{font-size:.9em}table.tasks td:nth-child(-n+2),table.tasks th:nth-child(-n+2){text-align:left}"
    "ul.cost{margin:.2em 0 .6em;font-variant-numeric:tabular-nums}"
    ".verdict{padding:.05em .45em;border-radius:.6em;font-size:.9em}"
    ".verdict.good{background:#dafbe1}.verdict.unsure{background:#fff8c5}.verdict.bad{background:#ffebe9}"
    ".verdict.none{background:#eee}"
    "table.controls td:nth-child(-n+3),table.controls th:nth-child(-n+3){text-align:left}"
)


def to_html(board: Leaderboard, plot_svg: str, source: str) -> str:
    """A self-contained static page: the plot (inline SVG), the ranked table with drill-downs, the controls."""
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in _ENTRY_COLUMNS)
    entries = "".join(_entry_rows(entry, board.rows_of(entry)) for entry in board.entries)
    controls = (
        "<h2>Controls (not ranked)</h2><p class='key'>Two models of the same architecture measured like a student "
        "against its teacher: their throughput interval should contain 1. If it does not, the cost ratios above "
        f"are less trustworthy than their intervals say.</p>{_table(_CONTROL_COLUMNS, board.controls, 'controls')}"
        if board.controls
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>distill-bench leaderboard</title>"
        f"<style>{_STYLE}</style></head><body><h1>distill-bench leaderboard</h1>"
        f"<p class='key'>From {html.escape(source)}. {html.escape(READING)}</p>"
        f"<div class='plot'>{plot_svg}</div>"
        f"<table class='board'><thead><tr>{head}</tr></thead>{entries}</table>{controls}</body></html>\n"
    )
