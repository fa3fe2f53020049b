"""The leaderboard's pictures: the Pareto plot (SVG) and the static, self-contained HTML page.

The plot (SVG written directly) puts each entry's throughput ratio (x) against its quality kept (y), with both
intervals drawn as error bars. Every error bar is its own SVG group with a stable id, `errorbar-cost-<rank>`
(horizontal) and `errorbar-quality-<rank>` (vertical), and every point `point-<rank>`, so a test (or a
reader's script) can find them in the DOM. The page holds the plot inline, the ranked table, under each entry
a drill-down (`<details>`) with the evidence per task and per cost ratio, and the controls. Every name is
HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

from bench.compare import ComparisonRow
from bench.leaderboard import (
    PASSING,
    READING,
    ControlEntry,
    Leaderboard,
    LeaderboardEntry,
    contains_one_text,
    docs_to_decision_text,
    format_interval,
    format_load,
    matched_text,
    quality_rows,
    quality_text,
    ratio_text,
)
from bench.report import MATCHED_COLUMNS, format_value

_PASSING_COLOR, _FAILING_COLOR = "#2ca02c", "#d62728"
_LABELLED = 30  # entries named, with error bars, on the plot: the best-ranked (and those on the front)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on both), by increasing x.

    One sweep from the highest x down: a point is on the front when its y is above every y seen so far.
    """
    front, best = [], -math.inf
    for x, y in sorted(set(points), key=lambda point: (-point[0], -point[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * f for f in (1, 2, 2.5, 5, 10) if power * f >= raw)
    first = math.ceil(low / step)
    return [round(i * step, 10) for i in range(first, math.floor(high / step) + 1)]


class _Canvas:
    """Data coordinates to SVG pixels inside the plot area; the axes' ranges padded like matplotlib's margins."""

    WIDTH, HEIGHT = 800, 500
    LEFT, RIGHT, TOP, BOTTOM = 75, 20, 40, 60

    def __init__(self, xs: Sequence[float], ys: Sequence[float]):
        (self.x0, self.x1), (self.y0, self.y1) = (self._padded(values) for values in (xs, ys))

    @staticmethod
    def _padded(values: Sequence[float]) -> tuple[float, float]:
        low, high = min(values), max(values)
        pad = (high - low) * 0.2 or 1.0
        return low - pad, high + pad

    def x(self, value: float) -> float:
        span = self.WIDTH - self.LEFT - self.RIGHT
        return round(self.LEFT + (value - self.x0) / (self.x1 - self.x0) * span, 2)

    def y(self, value: float) -> float:
        span = self.HEIGHT - self.TOP - self.BOTTOM
        return round(self.TOP + (self.y1 - value) / (self.y1 - self.y0) * span, 2)


def _interval(entry: LeaderboardEntry, axis: str) -> tuple[float, float] | None:
    low, high = (
        (entry.throughput_ratio_ci_low, entry.throughput_ratio_ci_high)
        if axis == "x"
        else (entry.retention_ci_low_pct, entry.retention_ci_high_pct)
    )
    return None if low is None or high is None else (low, high)


def _error_bar(canvas: _Canvas, entry: LeaderboardEntry, axis: str, color: str) -> str:
    """One interval of an entry as a path with caps, in a group whose id is errorbar-<cost|quality>-<rank>."""
    interval = _interval(entry, axis)
    if interval is None:
        return ""
    x, y = canvas.x(entry.throughput_ratio), canvas.y(entry.mean_retention_pct)
    cap = 3
    if axis == "x":
        low, high = canvas.x(interval[0]), canvas.x(interval[1])
        path, what = f"M{low},{y}H{high}M{low},{y - cap}V{y + cap}M{high},{y - cap}V{y + cap}", "cost"
    else:
        low, high = canvas.y(interval[0]), canvas.y(interval[1])
        path, what = f"M{x},{low}V{high}M{x - cap},{low}H{x + cap}M{x - cap},{high}H{x + cap}", "quality"
    return (
        f'<g id="errorbar-{what}-{entry.rank}"><path d="{path}" stroke="{color}" stroke-width="1.3" '
        f'stroke-opacity="0.75" fill="none"/></g>'
    )


def _star(x: float, y: float, radius: float) -> str:
    corners = [
        (x + r * math.sin(math.pi * i / 5), y - r * math.cos(math.pi * i / 5))
        for i, r in zip(range(10), [radius, radius * 0.4] * 5, strict=True)
    ]
    return " ".join(f"{cx:.2f},{cy:.2f}" for cx, cy in corners)


def _axes(canvas: _Canvas) -> list[str]:
    """The frame, grid, ticks, axis labels and title."""
    left, right = canvas.LEFT, canvas.WIDTH - canvas.RIGHT
    top, bottom = canvas.TOP, canvas.HEIGHT - canvas.BOTTOM
    parts = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#333"/>']
    for value in _ticks(canvas.x0, canvas.x1):
        x = canvas.x(value)
        parts.append(f'<path d="M{x},{top}V{bottom}" stroke="#000" stroke-opacity="0.1"/>')
        parts.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle">{value:g}</text>')
    for value in _ticks(canvas.y0, canvas.y1):
        y = canvas.y(value)
        parts.append(f'<path d="M{left},{y}H{right}" stroke="#000" stroke-opacity="0.1"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{value:g}</text>')
    middle_x, middle_y = (left + right) / 2, (top + bottom) / 2
    parts += [
        f'<text x="{middle_x}" y="{bottom + 38}" text-anchor="middle">throughput, student / teacher (x), '
        "with its interval over blocks</text>",
        f'<text x="20" y="{middle_y}" text-anchor="middle" transform="rotate(-90 20 {middle_y})">quality kept, '
        "mean over tasks (%), with its interval</text>",
        f'<text x="{middle_x}" y="24" text-anchor="middle" font-size="15">distilled students: speed against '
        "quality kept</text>",
    ]
    return parts


def _legend(canvas: _Canvas, shown: list[str]) -> str:
    markers = {
        "teacher": lambda x, y: f'<polygon points="{_star(x, y, 7)}" fill="#000"/>',
        "non-inferior on every task": lambda x, y: f'<circle cx="{x}" cy="{y}" r="4" fill="{_PASSING_COLOR}"/>',
        "inferior or inconclusive somewhere": lambda x, y: f'<circle cx="{x}" cy="{y}" r="4" fill="{_FAILING_COLOR}"/>',
        "Pareto front": lambda x, y: f'<path d="M{x - 9},{y}H{x + 9}" stroke="grey" stroke-dasharray="5,3"/>',
    }
    right, top = canvas.WIDTH - canvas.RIGHT - 8, canvas.TOP + 8
    width, height = 255, 16 * len(shown) + 8
    parts = [f'<rect x="{right - width}" y="{top}" width="{width}" height="{height}" fill="#fff" stroke="#ccc"/>']
    for index, label in enumerate(shown):
        y = top + 12 + 16 * index
        parts.append(markers[label](right - width + 16, y))
        parts.append(f'<text x="{right - width + 32}" y="{y + 4}">{html.escape(label)}</text>')
    return "".join(parts)


def plot_pareto(entries: Sequence[LeaderboardEntry]) -> str:
    """Throughput ratio against quality kept, with both intervals, the teacher at (1, 100); SVG text.

    Written directly (no plotting library): a leaderboard of a thousand entries draws in milliseconds. Every
    entry is a point; the best-ranked `_LABELLED` and those on the Pareto front are named and carry their
    error bars (a thousand bars would hide the points they belong to).
    """
    plotted = [e for e in entries if e.throughput_ratio is not None and e.mean_retention_pct is not None]
    xs = [1.0] + [v for e in plotted for v in (e.throughput_ratio, *(_interval(e, "x") or ()))]
    ys = [100.0] + [v for e in plotted for v in (e.mean_retention_pct, *(_interval(e, "y") or ()))]
    canvas = _Canvas(xs, ys)
    front = pareto_front([(1.0, 100.0)] + [(e.throughput_ratio, e.mean_retention_pct) for e in plotted])
    on_front = set(front)
    parts = _axes(canvas)
    reference = 'stroke="#000" stroke-opacity="0.4"'  # the teacher's speed and quality
    parts.append(f'<path d="M{canvas.x(1.0)},{canvas.TOP}V{canvas.HEIGHT - canvas.BOTTOM}" {reference}/>')
    parts.append(f'<path d="M{canvas.LEFT},{canvas.y(100.0)}H{canvas.WIDTH - canvas.RIGHT}" {reference}/>')
    if len(front) > 1:  # one undominated point is no front to draw
        points = " ".join(f"{canvas.x(x)},{canvas.y(y)}" for x, y in front)
        dashed = 'fill="none" stroke="grey" stroke-width="1.5" stroke-dasharray="6,4"'
        parts.append(f'<polyline points="{points}" {dashed}/>')
    shown = ["teacher"]
    named = {e.rank for e in plotted if e.rank <= _LABELLED or (e.throughput_ratio, e.mean_retention_pct) in on_front}
    # The named entries last, on top of the rest.
    for entry in sorted(plotted, key=lambda e: (e.rank in named, -e.rank)):
        passing = entry.worst_verdict in PASSING
        color = _PASSING_COLOR if passing else _FAILING_COLOR
        label = "non-inferior on every task" if passing else "inferior or inconclusive somewhere"
        shown += [label] if label not in shown else []
        x, y = canvas.x(entry.throughput_ratio), canvas.y(entry.mean_retention_pct)
        if entry.rank in named:
            parts += [_error_bar(canvas, entry, "x", color), _error_bar(canvas, entry, "y", color)]
        parts.append(f'<circle id="point-{entry.rank}" cx="{x}" cy="{y}" r="4.5" fill="{color}"/>')
        if entry.rank in named:
            name = f"#{entry.rank} {entry.student} ({format_load(entry.workload, entry.level)})"
            parts.append(f'<text x="{x + 6}" y="{y - 5}" font-size="11">{html.escape(name)}</text>')
    parts.append(f'<polygon points="{_star(canvas.x(1.0), canvas.y(100.0), 10)}" fill="#000"/>')
    parts.append(_legend(canvas, shown + (["Pareto front"] if len(front) > 1 else [])))
    body = "".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{canvas.WIDTH}" height="{canvas.HEIGHT}" '
        f'viewBox="0 0 {canvas.WIDTH} {canvas.HEIGHT}" font-family="DejaVu Sans, sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="#fff"/>{body}</svg>\n'
    )


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
    ("compute-matched k", lambda e: html.escape(matched_text(e))),
    ("docs to decision", lambda e: docs_to_decision_text(e)),
    ("cost verdict", lambda e: html.escape(e.cost_verdict or "-")),  # last: the one text column that wraps
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

_MATCHED_COLUMNS = tuple((header, lambda r, cell=cell: html.escape(cell(r))) for header, cell in MATCHED_COLUMNS)

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
    tasks = quality_rows(rows)
    task_table = _table(_TASK_COLUMNS, tasks, "tasks") if tasks else "<p>No task compared.</p>"
    matched = [row for row in rows if row.compute_matched]
    if matched:
        task_table += (
            "<p>Compute-matched quality: the student's majority vote over k answers against the teacher's pass@1, "
            f"and what each costs per question.</p>{_table(_MATCHED_COLUMNS, matched, 'tasks')}"
        )
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
