"""The parquet history: exact schema, atomic per-run files, one dataset for pandas/pyarrow/DuckDB/polars."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from klingflow.report.schema import REPORT_SCHEMA, SCHEMA_VERSION
from klingflow.report.writer import (
    ReportSchemaError,
    RunInfo,
    conform_table,
    read_history,
    record_to_row,
    records_to_table,
    run_file_name,
    write_run_report,
)
from tests.report.test_support import T0, failed, succeeded, three_run_history, write_run

EXPECTED = {"jobs": 7, "succeeded": 3, "cost": 6.048, "estimated": 11.424}


def test_record_mapping_covers_every_schema_column() -> None:
    """A JobRecord maps onto exactly the REPORT_SCHEMA column names (no more, no fewer)."""
    row = record_to_row(succeeded("j", 1), run_id="r", run_started_at=T0, backend="simulator", endpoint="e")
    assert set(row) == set(REPORT_SCHEMA.names)


def test_records_to_table_derives_columns() -> None:
    """Derived columns: source_* from the probe dict, counts, URLs and the three durations."""
    table = records_to_table(
        [succeeded("j", 1, queued=2.5, processing=60.0)],
        run_id="r",
        run_started_at=T0,
        backend="simulator",
        endpoint="e",
    )
    row = table.to_pylist()[0]
    assert table.schema.equals(REPORT_SCHEMA, check_metadata=True)
    assert row["schema_version"] == SCHEMA_VERSION
    assert (row["source_width"], row["source_bytes"], row["source_has_audio"]) == (1280, 123_456, True)
    assert row["input_url"] == "https://sim.local/files/j.mp4"
    assert (row["n_images"], row["n_elements"]) == (1, 1)
    assert (row["queued_s"], row["processing_s"], row["total_s"]) == (2.5, 60.0, 62.5)
    assert row["estimated_seconds"] == 5.0 and isinstance(row["estimated_seconds"], float)


def test_source_colour_columns() -> None:
    """Schema v4: the source's colour description as converted from (untagged HD read as BT.709 limited);
    a BT.2020 full-range source is named as such; a job without a probe has nulls."""
    record = succeeded("j", 1)
    row = record_to_row(record, run_id="r", run_started_at=T0, backend="b", endpoint="e")
    colour = [row[f"source_color_{k}"] for k in ("primaries", "transfer", "matrix", "range")]
    assert SCHEMA_VERSION == 4 and colour == ["bt709", "bt709", "bt709", "tv"]
    wide = {**record.source, "color_primaries": 9, "color_transfer": 14, "color_space": 9, "color_range": 2}
    row = record_to_row(record.with_(source=wide), run_id="r", run_started_at=T0, backend="b", endpoint="e")
    assert [row[f"source_color_{k}"] for k in ("primaries", "transfer", "matrix", "range")] == [
        "bt2020",
        "bt2020-10",
        "bt2020nc",
        "pc",
    ]
    row = record_to_row(failed("k", 2).with_(source=None), run_id="r", run_started_at=T0, backend="b", endpoint="e")
    assert row["source_color_primaries"] is None


def test_naive_datetimes_are_taken_as_utc() -> None:
    """A naive run start is stored as the same wall time in UTC, not shifted by the local zone."""
    table = records_to_table(
        [failed("j", 1)], run_id="r", run_started_at=datetime(2025, 3, 1, 9, 0), backend="b", endpoint="e"
    )
    assert table.column("run_started_at")[0].as_py() == T0


def test_all_failed_run_keeps_float_cost_columns(tmp_path: Path) -> None:
    """A run where every job failed still writes float64/timestamp columns (all null), not null-typed ones."""
    path = write_run(tmp_path, "r", [failed("a", 1), failed("b", 2)])
    schema = pq.read_schema(path)
    assert schema.field("cost_usd").type == pa.float64()
    assert schema.field("submitted_at").type == pa.timestamp("us", tz="UTC")
    assert pq.read_table(path).column("cost_usd").null_count == 2


def test_empty_run_is_written_with_the_schema(tmp_path: Path) -> None:
    """A run with no jobs writes an empty file that still has every column."""
    path = write_run(tmp_path, "empty", [])
    assert pq.read_schema(path).equals(REPORT_SCHEMA)
    assert pq.read_metadata(path).num_rows == 0


def test_ints_where_floats_are_expected_are_cast(tmp_path: Path) -> None:
    """A table with int64 costs and null-typed columns is written with REPORT_SCHEMA's types."""
    good = records_to_table([succeeded("a", 1)], run_id="r", run_started_at=T0, backend="b", endpoint="e")
    drifted = good.set_column(good.schema.get_field_index("cost_usd"), "cost_usd", pa.array([2], pa.int64()))
    drifted = drifted.set_column(
        drifted.schema.get_field_index("billed_seconds"), "billed_seconds", pa.nulls(1, pa.null())
    )
    path = write_run_report(drifted, tmp_path, run_id="r")
    written = pq.read_table(path)
    assert written.schema.equals(REPORT_SCHEMA)
    assert written.column("cost_usd").to_pylist() == [2.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["cost_usd"]), "missing"),
        (lambda t: t.append_column("surprise", pa.array([1])), "extra"),
        (
            lambda t: t.set_column(t.schema.get_field_index("source_width"), "source_width", pa.array([1280.5])),
            "source_width",
        ),
        (lambda t: t.set_column(t.schema.get_field_index("prompt"), "prompt", pa.nulls(1, pa.string())), "required"),
        (lambda t: t.set_column(t.schema.get_field_index("cost_usd"), "cost_usd", pa.array(["free"])), "cost_usd"),
    ],
    ids=["missing-column", "extra-column", "fractional-int", "null-required", "string-cost"],
)
def test_drifted_tables_are_rejected_and_nothing_is_written(tmp_path: Path, change, message: str) -> None:
    """Missing/extra columns, lossy casts and nulls in required columns raise; no file appears."""
    good = records_to_table([succeeded("a", 1)], run_id="r", run_started_at=T0, backend="b", endpoint="e")
    with pytest.raises(ReportSchemaError, match=message):
        write_run_report(change(good), tmp_path, run_id="r")
    assert list(tmp_path.iterdir()) == []


def test_rows_of_another_run_are_rejected(tmp_path: Path) -> None:
    """A table whose run_id column disagrees with the file's run id is refused."""
    table = records_to_table([failed("a", 1)], run_id="other", run_started_at=T0, backend="b", endpoint="e")
    with pytest.raises(ReportSchemaError, match="other"):
        write_run_report(table, tmp_path, run_id="r")


def test_conform_table_is_identity_for_good_tables() -> None:
    """A table already in REPORT_SCHEMA comes back equal, metadata included."""
    table = records_to_table(
        [succeeded("a", 1), failed("b", 2)], run_id="r", run_started_at=T0, backend="b", endpoint="e"
    )
    assert conform_table(table).equals(table, check_metadata=True)


def test_file_is_per_run_atomic_and_idempotent(tmp_path: Path) -> None:
    """One file per run id, no temp files left; rewriting a run replaces its file instead of adding rows."""
    write_run(tmp_path, "r/1 x", [succeeded("a", 1)])
    write_run(tmp_path, "r/1 x", [succeeded("a", 1), failed("b", 2)])
    assert [p.name for p in tmp_path.iterdir()] == [run_file_name("r/1 x")] == ["run-r_1_x.parquet"]
    assert len(read_history(tmp_path)) == 2


def test_schema_version_in_column_and_file_metadata(tmp_path: Path) -> None:
    """Each file says its schema version in the schema_version column and in the parquet metadata."""
    path = write_run(tmp_path, "r", [succeeded("a", 1)])
    assert pq.read_schema(path).metadata[b"klingflow.schema_version"] == str(SCHEMA_VERSION).encode()
    assert pq.read_table(path).column("schema_version").to_pylist() == [SCHEMA_VERSION]


def test_every_reader_sees_the_same_history(tmp_path: Path) -> None:
    """pandas, pyarrow.dataset, DuckDB and polars read the folder (with _html/ and a temp file) with equal totals."""
    three_run_history(tmp_path)
    html = tmp_path / "_html" / "thumbs"
    html.mkdir(parents=True)
    (tmp_path / "_html" / "run-a.html").write_text("<html></html>")
    (html / "x.jpg").write_bytes(b"\xff\xd8 not parquet")
    (tmp_path / ".run-z.parquet.123.tmp").write_bytes(b"half written")
    folder, glob = str(tmp_path), str(tmp_path / "*.parquet")

    frames = {
        "read_history": read_history(tmp_path),
        "pandas": pd.read_parquet(folder),
        "pyarrow": ds.dataset(folder, format="parquet").to_table().to_pandas(),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df(),
        "polars": pl.read_parquet(glob).to_pandas(),
        "polars-scan": pl.scan_parquet(glob).collect().to_pandas(),
    }
    for name, df in frames.items():
        got = {
            "jobs": len(df),
            "succeeded": int((df["status"] == "succeeded").sum()),
            "cost": round(float(df["cost_usd"].sum()), 6),
            "estimated": round(float(df["estimated_cost_usd"].sum()), 6),
        }
        assert got == EXPECTED, name
        assert set(df["run_id"]) == {"run-a", "run-b", "run-c"}, name


def test_engines_agree_on_types_and_sums(tmp_path: Path) -> None:
    """DuckDB aggregates in SQL to the same per-run spend as pandas, and sees typed timestamps/floats."""
    three_run_history(tmp_path)
    glob = str(tmp_path / "*.parquet")
    sql = f"SELECT run_id, sum(cost_usd) AS spend, count(*) AS n FROM read_parquet('{glob}') GROUP BY 1 ORDER BY 1"
    duck = duckdb.sql(sql).fetchall()
    pandas = read_history(tmp_path).groupby("run_id")["cost_usd"].agg(["sum", "count", "size"])
    assert [(r, round(s or 0.0, 6), n) for r, s, n in duck] == [
        (r, round(pandas.loc[r, "sum"], 6), int(pandas.loc[r, "size"])) for r in ("run-a", "run-b", "run-c")
    ]
    types = dict(
        duckdb.sql(f"DESCRIBE SELECT cost_usd, run_started_at FROM read_parquet('{glob}')").fetchall()[i][:2]
        for i in range(2)
    )
    assert types == {"cost_usd": "DOUBLE", "run_started_at": "TIMESTAMP WITH TIME ZONE"}
    lazy = pl.scan_parquet(glob).group_by("run_id").agg(pl.col("cost_usd").sum()).sort("run_id").collect()
    assert lazy["cost_usd"].round(6).to_list() == [5.04, 1.008, 0.0]


def test_read_history_of_missing_or_empty_folder(tmp_path: Path) -> None:
    """No history yet reads as an empty frame with every schema column."""
    assert list(read_history(tmp_path / "nope").columns) == REPORT_SCHEMA.names
    assert read_history(tmp_path).empty


def test_read_history_fills_columns_added_later(tmp_path: Path) -> None:
    """An older file lacking a (nullable) column still reads, with that column as nulls."""
    old = records_to_table([succeeded("a", 1)], run_id="old", run_started_at=T0, backend="b", endpoint="e")
    pq.write_table(old.drop_columns(["status_polls"]), tmp_path / "run-old.parquet")
    write_run(tmp_path, "new", [succeeded("b", 1)], started=T0 + timedelta(hours=1))
    df = read_history(tmp_path)
    assert list(df["run_id"]) == ["old", "new"]
    assert df["status_polls"].isna().tolist() == [True, False]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_reports_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Reports are for analysts: their mode is what the user's umask makes of a new file (not tempfile's 0600)."""
    previous = os.umask(umask)
    try:
        path = write_run(tmp_path / "reports", "run-a", [succeeded("a1", 1)])
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_the_jobs_table_puts_status_and_error_first(tmp_path: Path) -> None:
    """The UI's table artifact shows status and error without scrolling."""
    from klingflow.report.artifacts import job_table

    three_run_history(tmp_path)
    (first, *_) = job_table(read_history(tmp_path))
    assert list(first)[:6] == ["row", "job_id", "status", "error_stage", "error", "warning"]


def test_the_jobs_table_warns_of_a_trimmed_clip(tmp_path: Path) -> None:
    """A succeeded row whose clip was trimmed carries a warning (from preprocess_actions); others carry none."""
    from klingflow.report.artifacts import job_table

    whole = succeeded("whole", 1)
    long = succeeded("long", 2)
    long = long.model_copy(update={"preprocess_actions": ["trim"], "input_duration_s": 10.0})
    write_run(tmp_path / "reports", "r1", [whole, long])
    rows = {row["job_id"]: row for row in job_table(read_history(tmp_path / "reports"))}
    assert rows["whole"]["warning"] is None
    source = rows["long"]["warning"]
    assert source is not None and source.startswith("trimmed: only the first 10.0 s of the ") and "edited" in source


def test_schema_v3_names_the_run_and_its_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's rows carry its name and the manifest's absolute path and sha256 (which batch, which version)."""
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,prompt,video\na,p,a.mp4\n")
    monkeypatch.chdir(tmp_path)  # a relative manifest path is recorded absolute
    run = RunInfo.of("batch.csv", "march batch")
    write_run(tmp_path / "reports", "r1", [succeeded("a", 1), failed("b", 2)], run=run)
    df = read_history(tmp_path / "reports")
    assert set(df["schema_version"]) == {SCHEMA_VERSION}
    assert set(df["run_name"]) == {"march batch"}
    assert set(df["manifest_path"]) == {str(manifest)}
    assert set(df["manifest_sha256"]) == {hashlib.sha256(manifest.read_bytes()).hexdigest()}


def test_a_v2_file_still_reads_beside_v3_files(tmp_path: Path) -> None:
    """A file written with schema v2 (no run_name/manifest columns) reads with those columns as nulls."""
    v3 = records_to_table([succeeded("a", 1)], run_id="old", run_started_at=T0, backend="b", endpoint="e")
    new_columns = ["run_name", "manifest_path", "manifest_sha256"]
    v2_schema = pa.schema(
        [f for f in REPORT_SCHEMA if f.name not in new_columns], metadata={"klingflow.schema_version": "2"}
    )
    v2 = pa.Table.from_arrays(
        [pa.array([2], pa.int16()) if f.name == "schema_version" else v3.column(f.name) for f in v2_schema],
        schema=v2_schema,
    )
    pq.write_table(v2, tmp_path / "run-old.parquet")
    write_run(tmp_path, "new", [succeeded("b", 1)], started=T0 + timedelta(hours=1), run=RunInfo(run_name="n2"))
    df = read_history(tmp_path)
    assert list(df["schema_version"]) == [2, SCHEMA_VERSION]
    assert df["run_name"].isna().tolist() == [True, False] and df["run_name"].iloc[1] == "n2"
    assert df["manifest_path"].isna().tolist() == [True, True]
