"""bench.comparison_file: a run's comparison rows are written once, reused while current, recomputed when not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import compare, comparison_file, report, store
from bench.config import CompareConfig
from bench.pairing import TABLES
from bench.records import EvalScore
from tests.unit.test_compare import build_results
from tests.unit.test_store import make_record

STORED = "stored, not recomputed"


def rows_json(results: Path, **options) -> list[dict]:
    return json.loads(report.to_json(compare.compare_results(results, **options)))


def mark_stored(path: Path) -> None:
    """Rewrite a stored comparison's summaries, keeping its metadata: rows that say so were read, not computed."""
    table = pq.read_table(path)
    index = table.schema.get_field_index("summary")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array([STORED] * table.num_rows)), path)


@pytest.fixture
def results(tmp_path) -> Path:
    return build_results(tmp_path)


def test_the_first_comparison_writes_the_file_and_the_next_reads_it(results):
    computed = rows_json(results)
    path = results / "r1" / comparison_file.NAME
    metadata = pq.read_schema(path).metadata
    assert metadata[comparison_file.KEY_METADATA] == comparison_file.fingerprint(results / "r1", TABLES).encode()
    cells = {p.stem for table in TABLES for p in (results / "r1" / table).glob("*.parquet")}
    assert set(json.loads(metadata[b"cell_keys"])) == cells
    assert pq.read_table(path).num_rows == len(computed)
    mark_stored(path)
    assert {row["summary"] for row in rows_json(results)} == {STORED}


@pytest.mark.parametrize(
    "change",
    [
        lambda run: store.write_cell(run, "eval_scores", "extra", "small", [make_record(EvalScore, task="x")]),
        lambda run: (run / "eval_samples" / "small-toy_sort.parquet").unlink(),
        lambda run: store.write_manifest(run, {"config": {"compare": {"retention_margin": 0.2}}}),
        lambda run: os.utime(run / "perf_summary" / "big-chat.parquet", ns=(0, 0)),
        lambda run: (run / "models" / "notes.txt").write_text("stray"),
    ],
    ids=["a cell added", "a cell removed", "the manifest changed", "a file rewritten", "a stray entry"],
)
def test_a_change_to_what_the_rows_depend_on_recomputes_them(results, change):
    rows_json(results)
    mark_stored(results / "r1" / comparison_file.NAME)
    change(results / "r1")
    again = rows_json(results, skipped=[])
    assert STORED not in {row["summary"] for row in again}


def test_a_copied_run_folder_does_not_use_the_comparison_it_carries(results):
    computed = rows_json(results)
    shutil.copytree(results / "r1", results / "r1-copy")  # keeps mtimes and r1's comparison.parquet
    skipped: list = []
    assert rows_json(results, skipped=skipped) == computed  # r1's rows once: the copy's stored rows are not used
    assert {item.kind for item in skipped} == {"foreign rows"}  # and its files are reported, as before


def test_a_run_with_a_skipped_file_or_other_settings_is_not_stored(results):
    (results / "r1" / "eval_scores" / "notes.txt").write_text("stray")
    rows_json(results, skipped=[])
    assert not (results / "r1" / comparison_file.NAME).exists()
    (results / "r1" / "eval_scores" / "notes.txt").unlink()
    rows_json(results, settings=CompareConfig(retention_margin=0.3))
    rows_json(results, seed=1)
    assert not (results / "r1" / comparison_file.NAME).exists()


def test_a_damaged_stored_comparison_is_recomputed_and_replaced(results):
    computed = rows_json(results)
    path = results / "r1" / comparison_file.NAME
    path.write_bytes(b"PAR1 not a comparison")
    assert rows_json(results) == computed
    assert pq.read_table(path).num_rows == len(computed)


def test_a_run_where_the_file_cannot_be_written_is_compared_all_the_same(results):
    computed = rows_json(results, settings=CompareConfig(bootstrap_samples=1000))  # computed, not stored
    (results / "r1" / comparison_file.NAME).mkdir()  # as a read-only tree would, the write fails
    assert rows_json(results) == rows_json(results) == computed


def test_results_readme_lists_exactly_the_comparison_columns():
    import dataclasses
    import re

    from tests.unit.test_store import README

    text = README.read_text().split("### A run's comparison: `comparison.parquet`")[1].split("\n### ")[0]
    documented = re.findall(r"^\| `(\w+)` \| ", text, flags=re.MULTILINE)
    assert documented == [field.name for field in dataclasses.fields(compare.ComparisonRow)]
    assert [f.name for f in store.record_schema(compare.ComparisonRow)] == documented
