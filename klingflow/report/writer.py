"""Job records → one pyarrow table with exactly REPORT_SCHEMA → one parquet file per run.

The report directory is an append-only dataset: every run adds `run-<run_id>.parquet`, written to a
dot-prefixed temp file and renamed, so readers (pandas, pyarrow.dataset, DuckDB, polars) never see a
half-written file. Every table is built or cast against REPORT_SCHEMA before it is written, so column
types cannot drift between runs (an all-null column is still float64, an int cost becomes float64,
a fractional value in an int column or a missing column is rejected).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import ValidationError

from klingflow.errors import ReportSchemaError
from klingflow.media.plan import Colour, source_colour
from klingflow.media.probe import VideoProbe
from klingflow.models import JobRecord
from klingflow.report.schema import REPORT_SCHEMA, SCHEMA_VERSION

HTML_SUBDIR = "_html"  # under report_dir; '_' keeps it out of pyarrow/pandas dataset discovery
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetime; a naive one is taken as UTC (the pipeline stamps times in UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (_utc(end) - _utc(start)).total_seconds()


def _source_columns(source: dict | None) -> dict[str, Any]:
    """The original input's probe (a VideoProbe dict) as source_* columns."""
    src = source or {}
    keys = (
        "container",
        "video_codec",
        "pix_fmt",
        "width",
        "height",
        "rotation",
        "fps",
        "is_vfr",
        "is_hdr",
        "has_audio",
        "duration_s",
    )
    cols = {f"source_{key}": src.get(key) for key in keys}
    cols["source_bytes"] = src.get("size_bytes")
    colour = _source_colour(src)
    for key in ("primaries", "transfer", "matrix", "range"):
        cols[f"source_color_{key}"] = getattr(colour, key) if colour else None
    return cols


def _source_colour(src: dict) -> Colour | None:
    """The colour description preprocessing converted from: the tags, with untagged values guessed by size."""
    try:
        return source_colour(VideoProbe.model_validate(src))
    except ValidationError:  # no probe (the job failed before it) or an incomplete one
        return None


@dataclass(frozen=True)
class RunInfo:
    """What names a run in its report: the run name a person gave (or Prefect's) and the manifest it ran."""

    run_name: str | None = None
    manifest_path: str | None = None
    manifest_sha256: str | None = None

    @classmethod
    def of(cls, manifest: str | None, run_name: str | None) -> RunInfo:
        """The absolute manifest path and its sha256 (None when it is not a readable local file)."""
        if not manifest:
            return cls(run_name=run_name)
        path = Path(manifest.removeprefix("file://")).expanduser().absolute()
        return cls(run_name=run_name, manifest_path=str(path), manifest_sha256=_sha256(path))


def _sha256(path: Path) -> str | None:
    """The file's sha256, so a report names exactly which manifest version ran (None when unreadable)."""
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def record_to_row(
    record: JobRecord,
    *,
    run_id: str,
    run_started_at: datetime,
    backend: str,
    endpoint: str,
    run: RunInfo | None = None,
) -> dict[str, Any]:
    """One JobRecord as a dict keyed by every REPORT_SCHEMA column (the mapping is checked, see below)."""
    run = run or RunInfo()
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "run_started_at": _utc(run_started_at),
        "run_name": run.run_name,
        "manifest_path": run.manifest_path,
        "manifest_sha256": run.manifest_sha256,
        "job_id": record.job_id,
        "row": record.row,
        "job_key": record.job_key,
        "prompt": record.prompt,
        "status": record.status,
        "error": record.error,
        "error_stage": record.error_stage,
        "backend": backend,
        "endpoint": endpoint,
        "source_path": record.video,
        "source_sha256": record.source_sha256,
        **_source_columns(record.source),
        "preprocess_actions": list(record.preprocess_actions),
        "input_path": record.input_path,
        "input_sha256": record.input_sha256,
        "input_bytes": record.input_bytes,
        "input_duration_s": record.input_duration_s,
        "input_width": record.input_width,
        "input_height": record.input_height,
        "input_url": record.video_url,
        "upload_cache_hits": record.upload_cache_hits,
        "uploaded_bytes": record.uploaded_bytes,
        "keep_audio": record.keep_audio,
        "shot_type": record.shot_type,
        "n_images": len(record.images),
        "n_elements": len(record.elements),
        "request_id": record.request_id,
        "status_polls": record.status_polls,
        "output_url": record.output_url,
        "output_path": record.output_path,
        "output_sha256": record.output_sha256,
        "output_bytes": record.output_bytes,
        "output_duration_s": record.output_duration_s,
        "estimated_seconds": record.estimated_seconds,
        "estimated_cost_usd": record.estimated_cost_usd,
        "billed_seconds": record.billed_seconds,
        "cost_usd": record.cost_usd,
        "cost_source": record.cost_source,
        "unit_price_usd": record.unit_price_usd,
        "price_source": record.price_source,
        "reused": record.reused,
        "submitted_at": _utc(record.submitted_at),
        "started_at": _utc(record.started_at),
        "completed_at": _utc(record.completed_at),
        "queued_s": _seconds_between(record.submitted_at, record.started_at),
        "processing_s": _seconds_between(record.started_at, record.completed_at),
        "total_s": _seconds_between(record.submitted_at, record.completed_at),
    }
    return row


def _check_mapping(row: dict[str, Any]) -> None:
    """Fail loudly when the record mapping and REPORT_SCHEMA disagree (a column added to one only)."""
    missing = set(REPORT_SCHEMA.names) - row.keys()
    extra = row.keys() - set(REPORT_SCHEMA.names)
    if missing or extra:
        raise ReportSchemaError(
            f"record mapping out of sync with REPORT_SCHEMA: missing={sorted(missing)} extra={sorted(extra)}"
        )


def records_to_table(
    records: list[JobRecord],
    *,
    run_id: str,
    run_started_at: datetime,
    backend: str,
    endpoint: str,
    run: RunInfo | None = None,
) -> pa.Table:
    """The run's records as a table with exactly REPORT_SCHEMA (column order, types, metadata)."""
    rows = [
        record_to_row(r, run_id=run_id, run_started_at=run_started_at, backend=backend, endpoint=endpoint, run=run)
        for r in records
    ]
    _check_mapping(rows[0] if rows else dict.fromkeys(REPORT_SCHEMA.names))
    columns = [_column(field, (row[field.name] for row in rows)) for field in REPORT_SCHEMA]
    return conform_table(pa.Table.from_arrays(columns, schema=REPORT_SCHEMA))


def _column(field: pa.Field, values: Iterable[Any]) -> pa.Array:
    try:
        return pa.array(list(values), type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise ReportSchemaError(f"column {field.name!r} does not fit {field.type}: {exc}") from exc


def conform_table(table: pa.Table) -> pa.Table:
    """`table` cast to exactly REPORT_SCHEMA, or ReportSchemaError; never a table with other types.

    Safe casts only (int→float, null→anything); a fractional value in an int column, a missing or an
    unknown column, or a null in a required column raise instead of writing a drifted file.
    """
    names = set(table.column_names)
    missing = [n for n in REPORT_SCHEMA.names if n not in names]
    extra = sorted(names - set(REPORT_SCHEMA.names))
    if missing or extra:
        raise ReportSchemaError(f"table does not match REPORT_SCHEMA: missing={missing} extra={extra}")
    arrays = []
    for field in REPORT_SCHEMA:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ReportSchemaError(
                    f"column {field.name!r}: cannot cast {column.type} to {field.type}: {exc}"
                ) from exc
        if not field.nullable and column.null_count:
            raise ReportSchemaError(f"column {field.name!r} is required but has {column.null_count} null(s)")
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=REPORT_SCHEMA)


def run_file_name(run_id: str, suffix: str = ".parquet") -> str:
    """`run-<run_id><suffix>` with anything outside [A-Za-z0-9._-] replaced (no dot/underscore prefix)."""
    return f"run-{_SAFE_NAME.sub('_', run_id)}{suffix}"


def thumb_cache_dir(report_dir: Path) -> Path:
    """Where the HTML reports cache their thumbnails: report_dir/_html/thumbs."""
    return Path(report_dir) / HTML_SUBDIR / "thumbs"


@contextmanager
def atomic_path(final: Path, *, fsync: bool = False) -> Iterator[Path]:
    """A dot-prefixed temp path next to `final`, renamed over it when the block succeeds (else removed).

    Readers never see a half-written file, and dataset discovery skips the temp file. The file follows the
    umask (reports are for analysts; tempfile's 0600 would hide them), like any file the user writes.
    """
    tmp = final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_run_report(table: pa.Table, report_dir: Path, *, run_id: str) -> Path:
    """Write the run's table as `report_dir/run-<run_id>.parquet` atomically and return its path.

    Rewriting the same run id replaces its file (a retried report task does not duplicate rows).
    """
    table = conform_table(table)
    run_ids = set(table.column("run_id").to_pylist())
    if run_ids - {run_id}:
        raise ReportSchemaError(f"table holds rows of run(s) {sorted(run_ids - {run_id})}, not only {run_id!r}")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    final = report_dir / run_file_name(run_id)
    with atomic_path(final, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return final


def read_history_table(report_dir: Path) -> pa.Table:
    """The whole history (or one run's report file) as an arrow table (empty with REPORT_SCHEMA when there is
    none yet).

    Read as one pyarrow dataset with REPORT_SCHEMA, so older files gain later columns as nulls.
    """
    report_dir = Path(report_dir)
    if report_dir.is_file():
        return ds.dataset(str(report_dir), format="parquet", schema=REPORT_SCHEMA).to_table()
    if not report_dir.is_dir() or not any(report_dir.glob("*.parquet")):
        return REPORT_SCHEMA.empty_table()
    dataset = ds.dataset(
        str(report_dir), format="parquet", schema=REPORT_SCHEMA, ignore_prefixes=[".", "_"], exclude_invalid_files=False
    )
    table = dataset.to_table()
    return table.sort_by([("run_started_at", "ascending"), ("run_id", "ascending"), ("row", "ascending")])


def read_history(report_dir: Path) -> pd.DataFrame:
    """The whole history, every run, as one DataFrame sorted by run start then manifest row."""
    return read_history_table(report_dir).to_pandas()
