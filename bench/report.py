"""Reports rendered from comparison rows: the one-line summary, the cost verdict, the terminal table,
Markdown and JSON, and the number formats they share.

Everything here reads `ComparisonRow`s only, so a report re-renders from stored results at any time.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from bench.compare import ComparisonRow

T = TypeVar("T")


# -- number formats ---------------------------------------------------------------------------------------


def format_value(value: float | None, spec: str) -> str:
    """A number for a table cell; "-" when missing."""
    return "-" if value is None else format(value, spec)


def format_ci(low: float | None, high: float | None) -> str:
    """A confidence interval of a difference as "low..high"; "-" when missing."""
    return "-" if low is None or high is None else f"{low:+.3f}..{high:+.3f}"


def format_ci_pct(low: float | None, high: float | None) -> str:
    """An interval of percentages as "low..high"; "-" when missing."""
    return "-" if low is None or high is None else f"{low:.1f}..{high:.1f}"


def format_ratio(ratio: float | None, low: float | None, high: float | None) -> str:
    """A ratio with its interval as "2.50 (2.10..2.90)", the ratio alone without one; "-" when missing."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" if low is None or high is None else f"{ratio:.2f} ({low:.2f}..{high:.2f})"


def format_p(p: float | None) -> str:
    """A p-value with two significant digits; "-" when missing."""
    return "-" if p is None else f"{p:.2g}"


def _load(row: ComparisonRow) -> str:
    """workload@level, or workload@capacity for a sweep; "-" without perf."""
    if row.workload is None:
        return "-"
    return f"{row.workload}@{'capacity' if row.level is None else format(row.level, 'g')}"


def _discordant(row: ComparisonRow) -> str:
    if row.discordant_student_only is None or row.discordant_teacher_only is None:
        return "-"
    return f"{row.discordant_student_only}/{row.discordant_teacher_only}"


def _ratio_cell(name: str) -> Callable[[ComparisonRow], str]:
    """The cell of ratio field `name` with its interval (`name`_ci_low, `name`_ci_high)."""
    return lambda row: format_ratio(*(getattr(row, f"{name}{part}") for part in ("", "_ci_low", "_ci_high")))


def _blocks(row: ComparisonRow) -> str:
    if not row.n_blocks:
        return "-"
    return f"{row.n_blocks}" + (f" ({row.blocks_cross_session} cross-session)" if row.blocks_cross_session else "")


# -- sentences --------------------------------------------------------------------------------------------


def cost_verdict(row: ComparisonRow) -> str | None:
    """The cost claim the $/Mtok interval supports; None without a $/Mtok ratio.

    "≥ N.Nx cheaper" only when the interval's upper bound is below 1 (N = 1 / upper, rounded down to one
    decimal, so the claim holds at the row's confidence); otherwise the ratio with its interval.
    """
    ratio, low, high = row.usd_per_mtok_ratio, row.usd_per_mtok_ratio_ci_low, row.usd_per_mtok_ratio_ci_high
    if ratio is None:
        return None
    if low is None or high is None:
        return f"$/Mtok {ratio:.2f}x: no interval (needs 2 blocks)"
    if high < 1:
        return f"≥ {math.floor(10 / high) / 10:.1f}x cheaper"
    return f"not shown cheaper: $/Mtok {ratio:.2f}x, {row.confidence:.0%} CI {low:.2f}..{high:.2f}x"


def _ratios(row: ComparisonRow) -> str:
    parts = [
        (row.throughput_ratio, row.throughput_ratio_ci_low, row.throughput_ratio_ci_high, "throughput"),
        (row.usd_per_mtok_ratio, row.usd_per_mtok_ratio_ci_low, row.usd_per_mtok_ratio_ci_high, "$/Mtok"),
        (row.j_per_token_ratio, row.j_per_token_ratio_ci_low, row.j_per_token_ratio_ci_high, "J/token"),
        (row.capacity_ratio, row.capacity_ratio_ci_low, row.capacity_ratio_ci_high, "capacity"),
    ]
    texts = [
        f"{ratio:.2f}x {unit}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")
        for ratio, low, high, unit in parts
        if ratio is not None
    ]
    blocks = f"{row.n_blocks} block" + ("s" if row.n_blocks != 1 else ": no intervals")
    if row.blocks_cross_session:
        blocks += f", {row.blocks_cross_session} paired across sessions (a resumed run)"
    return f"{', '.join(texts)} ({_load(row)}, {blocks})"


def _control_summary(row: ComparisonRow) -> str:
    text = f"control {row.student} vs {row.teacher}"
    if row.workload is None:
        return text + ": no comparable perf results"
    text += f": {_ratios(row)}"
    sweep = row.capacity_ratio is not None
    low, high = (
        (row.capacity_ratio_ci_low, row.capacity_ratio_ci_high)
        if sweep
        else (row.throughput_ratio_ci_low, row.throughput_ratio_ci_high)
    )
    what = "capacity" if sweep else "throughput"
    if low is None or high is None:
        return text + f": no {what} interval to check"
    if low <= 1 <= high:
        return text + f": the {what} interval contains 1, as it should for two models of the same architecture"
    return text + f": the {what} interval excludes 1 although both models have the same architecture: measurement noise"


def summary(row: ComparisonRow) -> str:
    """One line a person can read: how much quality the student keeps, at what speed and cost, with evidence."""
    if row.control:
        return _control_summary(row)
    if row.task is None and row.workload is None:
        return f"{row.student} vs {row.teacher}: no comparable results"
    text = f"{row.student} vs {row.teacher}"
    if row.task is not None:
        kept = (
            f"keeps {row.retention_pct:.1f}% of {row.teacher}'s {row.metric}"
            if row.retention_pct is not None
            else f"scores {row.student_score:.3f} vs {row.teacher}'s {row.teacher_score:.3f} {row.metric}"
        )
        evidence = f"CI of diff {format_ci(row.diff_ci_low, row.diff_ci_high)}, n={row.n_paired}"
        if row.discordant_student_only is not None:
            evidence += f", student-only/teacher-only right {_discordant(row)}, McNemar p={format_p(row.mcnemar_p)}"
        text = f"{row.student} {kept} on {row.task} ({evidence})"
    if row.workload is not None:
        text += f" at {_ratios(row)}"
    if row.task is not None:
        text += f": {row.verdict} at margin {row.retention_margin:g}"
    if row.cost_verdict is not None and row.n_blocks > 1:  # one block is no evidence: the ratios say so
        text += f"; cost: {row.cost_verdict}"
    if row.distillation_usd is not None and row.workload is not None:
        text += f"; {break_even_text(row)}"
    return text


def break_even_text(row: ComparisonRow) -> str:
    """When the student's distillation cost is repaid by its saving per token at this workload's $/Mtok."""
    made = f"distilling cost ${row.distillation_usd:.4g}"
    if row.saving_usd_per_mtok is None:
        return f"{made}; no $/Mtok to repay it from"
    if row.break_even_mtok is None:
        return f"{made}; never repaid: it saves nothing per token ({row.saving_usd_per_mtok:+.3g} $/Mtok)"
    if row.break_even_ci_low_mtok is None:
        return f"{made}; repaid after {row.break_even_mtok:.3g}M output tokens (no interval: one block)"
    high = "unbounded" if row.break_even_ci_high_mtok is None else f"{row.break_even_ci_high_mtok:.3g}"
    return f"{made}; repaid after {row.break_even_mtok:.3g}M output tokens [{row.break_even_ci_low_mtok:.3g}, {high}]"


def matched_summary(row: ComparisonRow, problem: str | None = None) -> str:
    """One line for a compute-matched row: maj@k (pass@k) against pass@1, the verdict, and what k answers cost."""
    if row.k is None:
        head = f"{row.student} vs {row.teacher}, compute-matched ({row.task} against {row.baseline_task})"
    else:
        head = f"{row.student} {row.scoring}@{row.k} on {row.task} vs {row.teacher} pass@1 on {row.baseline_task}"
    if problem is not None or row.student_score is None or row.teacher_score is None:
        return f"{head}: no data: {problem or 'no document answered by both'}"
    evidence = f"CI of diff {format_ci(row.diff_ci_low, row.diff_ci_high)}, n={row.n_paired}"
    evidence += f", student-only/teacher-only right {_discordant(row)}, McNemar p={format_p(row.mcnemar_p)}"
    text = f"{head}: {row.student_score:.3f} vs {row.teacher_score:.3f} {row.metric} ({evidence})"
    text += f": {row.verdict} at margin {row.retention_margin:g}; "
    if row.within_budget is None:
        return text + f"not priced: {unpriced_reason(row)}"
    answers = f"{row.k} answer" + ("s" if row.k != 1 else "")
    budget = "within" if row.within_budget else "over"
    return text + (
        f"$/question {row.student_usd_per_question:.3g} ({answers}) vs {row.teacher_usd_per_question:.3g} at "
        f"{_load(row)}: {budget} the teacher's budget"
    )


def unpriced_reason(row: ComparisonRow) -> str:
    """Why a compute-matched row has no $/question."""
    if row.teacher_tokens_per_answer is None or row.student_tokens_per_answer is None:
        return "eval_samples without response_tokens (results stored before schema 5)"
    if row.workload is None:
        return "no perf workload that both models ran"
    return f"no $/Mtok measured at {_load(row)}"


# -- tables -----------------------------------------------------------------------------------------------

_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("run", lambda r: markdown_text(r.run_id)),
    ("teacher", lambda r: markdown_text(r.teacher)),
    ("student", lambda r: markdown_text(r.student)),
    ("control", lambda r: "yes" if r.control else ""),
    ("task", lambda r: markdown_text(r.task or "-")),
    ("metric", lambda r: markdown_text(r.metric or "-")),
    ("teacher score", lambda r: format_value(r.teacher_score, ".3f")),
    ("student score", lambda r: format_value(r.student_score, ".3f")),
    ("retention %", lambda r: format_value(r.retention_pct, ".1f")),
    ("retention CI %", lambda r: format_ci_pct(r.retention_ci_low_pct, r.retention_ci_high_pct)),
    ("diff CI", lambda r: format_ci(r.diff_ci_low, r.diff_ci_high)),
    ("interval", lambda r: r.interval_method or "-"),
    ("n", lambda r: str(r.n_paired)),
    ("student-only/teacher-only right", _discordant),
    ("McNemar p", lambda r: format_p(r.mcnemar_p)),
    ("verdict", lambda r: r.verdict),
    ("workload", lambda r: markdown_text(r.workload or "-")),
    ("level", lambda r: format_value(r.level, "g") if r.workload is None or r.level is not None else "capacity"),
    ("blocks", _blocks),
    ("throughput x", _ratio_cell("throughput_ratio")),
    ("$/Mtok x", _ratio_cell("usd_per_mtok_ratio")),
    ("J/token x", _ratio_cell("j_per_token_ratio")),
    ("capacity x", _ratio_cell("capacity_ratio")),
    ("cost verdict", lambda r: markdown_text(r.cost_verdict or "-")),
)


def _stacked_ratio(name: str) -> Callable[[ComparisonRow], str]:
    """A ratio over its interval on a second line, so the terminal columns stay narrow."""
    return lambda row: _ratio_cell(name)(row).replace(" (", "\n(")


# The terminal table is the compact view: run id in the title, metric beside the task, workload@level,
# intervals under the ratios, and no column that is empty in every row (J/token without NVML, capacity
# without a sweep).
_TERMINAL_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("student", lambda r: r.student + (" (control)" if r.control else "")),
    ("teacher", lambda r: r.teacher),
    ("task / metric", lambda r: f"{r.task or '-'} {r.metric or ''}".strip()),
    ("teacher", lambda r: format_value(r.teacher_score, ".3f")),
    ("student", lambda r: format_value(r.student_score, ".3f")),
    ("kept %", lambda r: format_value(r.retention_pct, ".1f")),
    ("diff CI", lambda r: format_ci(r.diff_ci_low, r.diff_ci_high)),
    ("n", lambda r: str(r.n_paired)),
    ("b/c", _discordant),
    ("p", lambda r: format_p(r.mcnemar_p)),
    ("verdict", lambda r: r.verdict),
    ("load", _load),
    ("blocks", lambda r: str(r.n_blocks) + ("*" if r.blocks_cross_session else "") if r.n_blocks else "-"),
    ("tok/s x", _stacked_ratio("throughput_ratio")),
    ("$/Mtok x", _stacked_ratio("usd_per_mtok_ratio")),
    ("J/tok x", _stacked_ratio("j_per_token_ratio")),
    ("capacity x", _stacked_ratio("capacity_ratio")),
)
_TERMINAL_TEXT = {0, 1, 2, 10, 11}  # left-aligned: names, verdict, load
_NO_WRAP = {"diff CI", "verdict", "load"}


def _terminal_cells(rows: Sequence[ComparisonRow]) -> list[tuple[str, bool, list[str]]]:
    """(header, left-aligned, cells) of each terminal column that is not empty in every row."""
    cells = [[cell(row) for row in rows] for _, cell in _TERMINAL_COLUMNS]
    return [
        (_TERMINAL_COLUMNS[index][0], index in _TERMINAL_TEXT, column)
        for index, column in enumerate(cells)
        if index < 2 or any(value != "-" for value in column)
    ]


def _title(rows: Sequence[ComparisonRow], most_runs: int | None = None) -> str:
    runs = sorted({row.run_id for row in rows})
    if most_runs is not None and len(runs) > most_runs:
        return f"student vs teacher ({len(runs)} runs, {runs[0]} .. {runs[-1]})"
    return f"student vs teacher ({', '.join(runs)})"


def _caption(rows: Sequence[ComparisonRow], where: str) -> str:
    confidence = "/".join(sorted({f"{row.confidence:.0%}" for row in rows}))
    return (
        f"x = student / teacher, its {confidence} CI {where}; b/c = documents right only for the student / only for "
        "the teacher, p = exact McNemar; * = some blocks paired across sessions"
    )


def render_table(rows: Sequence[ComparisonRow]) -> Table:
    """A compact rich table of the rows, in the order given (all columns: `to_json` / `to_markdown`)."""
    table = Table(title=Text(_title(rows)), caption=_caption(rows, "below"))
    columns = _terminal_cells(rows)
    for header, left, _ in columns:
        table.add_column(header, justify="left" if left else "right", no_wrap=header in _NO_WRAP)
    for position in range(len(rows)):
        # Text, not markup: names come from a results tree, and "[/]" in one would end the table in a traceback.
        table.add_row(*(Text(cells[position]) for _, _, cells in columns))
    return table


def render_text(rows: Sequence[ComparisonRow]) -> str:
    """The terminal table's columns as plain aligned text, each interval beside its ratio: for thousands of
    rows, where rich's layout (tens of microseconds per cell, twice) would take most of a minute."""
    columns = [(head, left, [cell.replace("\n", " ") for cell in cells]) for head, left, cells in _terminal_cells(rows)]
    widths = [max(len(header), *(len(cell) for cell in cells)) for header, _, cells in columns]

    def line(values: Sequence[str]) -> str:
        padded = (
            value.ljust(width) if left else value.rjust(width)
            for value, width, (_, left, _) in zip(values, widths, columns, strict=True)
        )
        return " | ".join(padded).rstrip()

    body = [line([cells[position] for _, _, cells in columns]) for position in range(len(rows))]
    rule = "-+-".join("-" * width for width in widths)
    header = line([header for header, _, _ in columns])
    return "\n".join([_title(rows, most_runs=5), header, rule, *body, _caption(rows, "in parentheses")]) + "\n"


def _usd(value: float | None) -> str:
    return format_value(value, ".3g")


def _budget(row: ComparisonRow) -> str:
    return {True: "yes", False: "no", None: "-"}[row.within_budget]


# Plain text; `to_markdown` escapes each cell.
MATCHED_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("student", lambda r: r.student),
    ("teacher", lambda r: r.teacher),
    ("task vs baseline", lambda r: f"{r.task} vs {r.baseline_task}"),
    ("k", lambda r: format_value(r.k, "d")),
    ("scoring", lambda r: f"{r.scoring}@k" if r.scoring else "-"),
    ("student @k", lambda r: format_value(r.student_score, ".3f")),
    ("teacher pass@1", lambda r: format_value(r.teacher_score, ".3f")),
    ("diff CI", lambda r: format_ci(r.diff_ci_low, r.diff_ci_high)),
    ("n", lambda r: str(r.n_paired)),
    ("verdict", lambda r: r.verdict),
    ("load", _load),
    ("student $/q", lambda r: _usd(r.student_usd_per_question)),
    ("teacher $/q", lambda r: _usd(r.teacher_usd_per_question)),
    ("within budget", _budget),
    ("smallest matching k", lambda r: format_value(r.smallest_matching_k, "d")),
)


def render_matched_table(rows: Sequence[ComparisonRow]) -> Table:
    """The compute-matched rows as a rich table: one line per (k, scoring)."""
    caption = (
        "student maj@k (pass@k) vs teacher pass@1 on the documents both answered; pass@k (any of the k answers "
        "right) is an upper bound on what any selector of one answer achieves, not deployable without an oracle; "
        "$/q = tokens per answer x $/Mtok at the load (k answers for the student); smallest matching k: maj@k "
        "within budget, non-inferior or better"
    )
    runs = ", ".join(sorted({row.run_id for row in rows}))
    table = Table(title=Text(f"compute-matched quality ({runs})"), caption=caption)
    for index, (header, _) in enumerate(MATCHED_COLUMNS):
        table.add_column(header, justify="left" if index < 3 or header in ("scoring", "verdict", "load") else "right")
    for row in rows:
        table.add_row(*(Text(cell(row)) for _, cell in MATCHED_COLUMNS))
    return table


def markdown_text(text: str) -> str:
    """Text safe in a Markdown table cell: HTML escaped, `|` and backslashes escaped, one line."""
    escaped = html.escape(text.replace("\\", "\\\\"), quote=False).replace("|", "\\|")
    return " ".join(escaped.splitlines())


def markdown_table(columns: Sequence[tuple[str, Callable[[T], str]]], items: Iterable[T]) -> list[str]:
    """The lines of a Markdown table: one column per (header, cell function), one row per item."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(item) for _, cell in columns) + " |" for item in items]


def to_markdown(rows: Sequence[ComparisonRow]) -> str:
    """A Markdown table of the rows, then the compute-matched rows' table if any, then one summary line per row."""
    matched = [row for row in rows if row.compute_matched]
    lines = markdown_table(_COLUMNS, [row for row in rows if not row.compute_matched])
    if matched:
        escaped = [(header, lambda row, cell=cell: markdown_text(cell(row))) for header, cell in MATCHED_COLUMNS]
        lines += ["", "Compute-matched quality:", "", *markdown_table(escaped, matched)]
    lines += ["", *(f"- {markdown_text(row.summary)}" for row in rows)]
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[ComparisonRow]) -> str:
    """The rows as a JSON list of objects, one per line (sorted keys; missing values are null).

    One line per row rather than `indent=2`: json's C encoder only writes compact objects, and the indenting
    Python one takes a second per few thousand rows.
    """
    if not rows:
        return "[]\n"
    names = [field.name for field in dataclasses.fields(rows[0])]
    lines = [json.dumps({name: getattr(row, name) for name in names}, sort_keys=True, allow_nan=False) for row in rows]
    return "[\n" + ",\n".join(f"  {line}" for line in lines) + "\n]\n"
