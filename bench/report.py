"""Reports rendered from comparison rows: the terminal table, Markdown and JSON.

Everything here reads `ComparisonRow`s only, so a report re-renders from stored results at any time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from rich.table import Table

from bench.compare import ComparisonRow, format_ci, format_value

T = TypeVar("T")

_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("run", lambda r: r.run_id),
    ("teacher", lambda r: r.teacher),
    ("student", lambda r: r.student),
    ("task", lambda r: r.task or "-"),
    ("metric", lambda r: r.metric or "-"),
    ("teacher score", lambda r: format_value(r.teacher_score, ".3f")),
    ("student score", lambda r: format_value(r.student_score, ".3f")),
    ("retention %", lambda r: format_value(r.retention_pct, ".1f")),
    ("diff CI", lambda r: format_ci(r.diff_ci_low, r.diff_ci_high)),
    ("n", lambda r: str(r.n_paired)),
    ("verdict", lambda r: r.verdict),
    ("workload", lambda r: r.workload or "-"),
    ("level", lambda r: format_value(r.level, "g")),
    ("throughput x", lambda r: format_value(r.throughput_ratio, ".2f")),
    ("$/Mtok x", lambda r: format_value(r.usd_per_mtok_ratio, ".2f")),
    ("J/token x", lambda r: format_value(r.j_per_token_ratio, ".2f")),
)


# The terminal table is the compact view: run id in the title, metric beside the task, workload@level.
_TERMINAL_COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("student", lambda r: r.student),
    ("teacher", lambda r: r.teacher),
    ("task / metric", lambda r: f"{r.task or '-'} {r.metric or ''}".strip()),
    ("teacher", lambda r: format_value(r.teacher_score, ".3f")),
    ("student", lambda r: format_value(r.student_score, ".3f")),
    ("kept %", lambda r: format_value(r.retention_pct, ".1f")),
    ("diff CI", lambda r: format_ci(r.diff_ci_low, r.diff_ci_high)),
    ("n", lambda r: str(r.n_paired)),
    ("verdict", lambda r: r.verdict),
    ("load", lambda r: f"{r.workload}@{format_value(r.level, 'g')}" if r.workload else "-"),
    ("tok/s x", lambda r: format_value(r.throughput_ratio, ".2f")),
    ("$/Mtok x", lambda r: format_value(r.usd_per_mtok_ratio, ".2f")),
    ("J/tok x", lambda r: format_value(r.j_per_token_ratio, ".2f")),
)
_TERMINAL_TEXT = {0, 1, 2, 8, 9}


def render_table(rows: Sequence[ComparisonRow]) -> Table:
    """A compact rich table of the rows, in the order given (all columns: `to_json` / `to_markdown`)."""
    runs = sorted({row.run_id for row in rows})
    table = Table(title=f"student vs teacher ({', '.join(runs)}); x = student / teacher")
    for index, (header, _) in enumerate(_TERMINAL_COLUMNS):
        table.add_column(header, justify="left" if index in _TERMINAL_TEXT else "right")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in _TERMINAL_COLUMNS))
    return table


def markdown_table(columns: Sequence[tuple[str, Callable[[T], str]]], items: Iterable[T]) -> list[str]:
    """The lines of a Markdown table: one column per (header, cell function), one row per item."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(item) for _, cell in columns) + " |" for item in items]


def to_markdown(rows: Sequence[ComparisonRow]) -> str:
    """A Markdown table of the rows, then one summary line per row."""
    lines = [*markdown_table(_COLUMNS, rows), "", *(f"- {row.summary}" for row in rows)]
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[ComparisonRow]) -> str:
    """The rows as a JSON list of objects (sorted keys; missing values are null)."""
    return json.dumps([dataclasses.asdict(row) for row in rows], indent=2, sort_keys=True, allow_nan=False) + "\n"
