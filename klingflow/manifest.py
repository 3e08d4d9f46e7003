"""Read a manifest (CSV, JSONL or YAML) into job records, one per row.

Relative paths resolve against the manifest's folder; `file://` URLs are paths, http(s) URLs stay
URLs, and any other scheme fails its row. A row that cannot be read becomes a failed job naming the
row and the reason; the rest of the batch goes on. A manifest that cannot be read at all, or has no
rows, raises ManifestError.

Spreadsheets are read as people save them: a UTF-8 BOM, `;` or tab as the delimiter (sniffed),
headers in any case. Columns klingflow does not know are said once and left out of the request.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import ValidationError

from klingflow.errors import ManifestError
from klingflow.inputs import InputPolicy
from klingflow.models import ElementSpec, JobRecord, JobStatus, ManifestRow, Stage

SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".yaml": "yaml", ".yml": "yaml"}
_LIST_FIELDS = ("images", "elements")
MAX_ID_CHARS = 128
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}
COLUMNS = frozenset(ManifestRow.model_fields)
DELIMITERS = ",;\t"
URL_SCHEMES = ("http://", "https://")

log = logging.getLogger(__name__)


def load_manifest(
    path: str | Path,
    logger: logging.Logger | logging.LoggerAdapter | None = log,
    inputs: InputPolicy | None = None,
) -> list[JobRecord]:
    """Every row of the manifest as a job record (failed rows carry their error); unknown columns are said to
    `logger` (None: not said, for a check the run repeats). A row naming a file or host `inputs` does not allow
    fails (the address a host resolves to is checked when it is fetched)."""
    inputs = inputs or InputPolicy()
    manifest = Path(path).expanduser().resolve()
    if manifest.is_dir():
        raise ManifestError(f"manifest {manifest}: is a folder; give the manifest file in it (.csv, .jsonl or .yaml)")
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest}: file not found")
    if problem := inputs.path_problem(str(manifest)):
        raise ManifestError(f"manifest {problem}")
    kind = SUFFIXES.get(manifest.suffix.lower())
    if kind is None:
        raise ManifestError(f"manifest {manifest}: unknown format {manifest.suffix!r} (use .csv, .jsonl or .yaml)")
    try:
        raw_rows = _READERS[kind](manifest)
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"manifest {manifest}: is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 (in Excel: Save As, 'CSV UTF-8')"
        ) from exc
    except (OSError, csv.Error, yaml.YAMLError) as exc:
        raise ManifestError(f"manifest {manifest}: cannot be read ({exc})") from exc
    if not raw_rows:
        raise ManifestError(f"manifest {manifest}: the manifest has no rows")
    raw_rows = _known_columns(raw_rows, manifest, logger)
    records = [_allowed(_record(i, raw, manifest), inputs, manifest) for i, raw in enumerate(raw_rows, start=1)]
    return _fail_duplicate_ids(records, manifest)


def _known_columns(rows: list[Any], manifest: Path, logger: logging.Logger | logging.LoggerAdapter | None) -> list[Any]:
    """Rows with their column names lower-cased and unknown columns left out (said once, for the file)."""
    unknown: set[str] = set()
    kept: list[Any] = []
    for row in rows:
        if not isinstance(row, dict):
            kept.append(row)
            continue
        named = {str(k).strip().lower(): v for k, v in row.items() if k is not None and str(k).strip()}
        unknown |= named.keys() - COLUMNS
        kept.append({k: v for k, v in named.items() if k in COLUMNS})
    if unknown and logger is not None:
        logger.warning(
            "manifest %s: column(s) %s are not klingflow's and are left out of the requests (klingflow reads: %s)",
            manifest,
            ", ".join(sorted(unknown)),
            ", ".join(sorted(COLUMNS)),
        )
    return kept


def _read_csv(path: Path) -> list[Any]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(64 * 1024)
        fh.seek(0)
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample.partition("\n")[0], DELIMITERS)
        except csv.Error:
            dialect = csv.excel  # one column, or nothing to tell: the comma
        return [_from_csv(row) for row in csv.DictReader(fh, delimiter=dialect.delimiter)]


def _read_jsonl(path: Path) -> list[Any]:
    rows: list[Any] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            rows.append(_Unreadable(f"invalid JSON ({exc.msg})"))
    return rows


def _read_yaml(path: Path) -> list[Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data is None:
        return []
    if isinstance(data, dict):
        data = data.get("jobs")
    if not isinstance(data, list):
        raise ManifestError(f"manifest {path}: YAML must be a list of rows or a mapping with a 'jobs' list")
    return data


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "yaml": _read_yaml}


class _Unreadable:
    """A row that could not even be parsed; becomes a failed job."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _from_csv(row: dict[str, str | None]) -> dict[str, Any] | _Unreadable:
    """CSV cells are strings: lists are JSON or ';'-separated, elements are JSON, booleans are words."""
    out: dict[str, Any] = {
        k.strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k and k.strip()
    }
    for key in _LIST_FIELDS:
        cell = out.get(key)
        if not cell:
            out.pop(key, None)
        elif cell.startswith("["):
            try:
                out[key] = json.loads(cell)
            except json.JSONDecodeError as exc:
                return _Unreadable(f"column {key!r} is not valid JSON ({exc.msg})")
        else:
            out[key] = [part.strip() for part in cell.split(";") if part.strip()]
    if out.get("keep_audio") in ("", None):
        out.pop("keep_audio", None)
    elif isinstance(out.get("keep_audio"), str):
        word = out["keep_audio"].lower()
        if word not in _TRUE | _FALSE:
            return _Unreadable(f"keep_audio {out['keep_audio']!r} is not true/false")
        out["keep_audio"] = word in _TRUE
    for key in ("id", "shot_type"):
        if out.get(key) == "":
            out.pop(key)
    return out


def _record(index: int, raw: Any, manifest: Path) -> JobRecord:
    base = manifest.parent
    if isinstance(raw, dict) and (bad := _bad_reference(raw)):
        return _failed_row(index, bad, manifest, job_id=str(raw.get("id") or "") or None)
    if isinstance(raw, _Unreadable):
        return _failed_row(index, raw.reason, manifest)
    if not isinstance(raw, dict):
        return _failed_row(index, "a row must be a mapping of column to value", manifest)
    try:
        row = ManifestRow.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
        return _failed_row(index, reasons, manifest, job_id=str(raw.get("id") or "") or None)
    if row.id is not None and (problem := id_problem(row.id)):
        return _failed_row(index, problem, manifest, job_id=repr(row.id)[1:-1][:MAX_ID_CHARS])
    return JobRecord(
        job_id=row.id or f"row-{index:04d}",
        row=index,
        prompt=row.prompt,
        video=_resolve(row.video, base),
        images=[_resolve(i, base) for i in row.images],
        elements=[
            ElementSpec(frontal=_resolve(e.frontal, base), references=[_resolve(r, base) for r in e.references])
            for e in row.elements
        ],
        keep_audio=row.keep_audio,
        shot_type=row.shot_type,
    )


def _allowed(record: JobRecord, inputs: InputPolicy, manifest: Path) -> JobRecord:
    """The record, or the record failed on its first input the run may not read."""
    if not record.ok:
        return record
    refs = [record.video, *record.images, *(p for e in record.elements for p in (e.frontal, *e.references))]
    for ref in refs:
        problem = inputs.host_problem(ref) if ref.lower().startswith(URL_SCHEMES) else inputs.path_problem(ref)
        if problem:
            return record.fail(Stage.manifest, problem, path=str(manifest))
    return record


def id_problem(job_id: str) -> str | None:
    """Why an id cannot name an output file (it is part of one), or None. Checked before any spend."""
    if not job_id.strip():
        return "id is empty"
    if len(job_id) > MAX_ID_CHARS:
        return f"id is {len(job_id)} characters long; at most {MAX_ID_CHARS} are allowed"
    if any(ord(c) < 32 or ord(c) == 127 for c in job_id):
        return f"id {job_id!r} contains control characters"
    if "/" in job_id or "\\" in job_id or job_id in (".", "..") or job_id.startswith(".."):
        return (
            f"id {job_id!r} contains a path separator or '..'; ids name output files, "
            "so use letters, digits, '-', '_' or '.'"
        )
    return None


def _failed_row(index: int, reason: str, manifest: Path, job_id: str | None = None) -> JobRecord:
    job_id = job_id or f"row-{index:04d}"
    return JobRecord(job_id=job_id, row=index, prompt="", video="").fail(Stage.manifest, reason, path=str(manifest))


def _references(raw: dict[str, Any]) -> list[str]:
    """Every file reference of a raw row: its video, images and element images."""
    refs = [raw.get("video"), *(raw.get("images") or [])]
    for element in raw.get("elements") or []:
        if isinstance(element, dict):
            refs += [element.get("frontal"), *(element.get("references") or [])]
    return [r.strip() for r in refs if isinstance(r, str)]


def _bad_reference(raw: dict[str, Any]) -> str | None:
    """Why a row names a file by a URL scheme klingflow cannot fetch (ftp://, s3://, ...), or None."""
    for ref in _references(raw):
        scheme, sep, _ = ref.partition("://")
        if sep and scheme.isascii() and scheme.replace("+", "").replace("-", "").isalnum():
            if ref.lower().startswith(("file://", *URL_SCHEMES)):
                continue
            return f"{ref!r}: the {scheme}:// scheme is not supported; use a local path, file://, http:// or https://"
    return None


def _resolve(ref: str, base: Path) -> str:
    """http(s) URLs stay as they are; file:// URLs and local paths become absolute paths, relative ones to the
    manifest's folder."""
    ref = ref.strip()
    if ref.lower().startswith(URL_SCHEMES):
        return ref
    if ref.lower().startswith("file://"):
        ref = unquote(urlsplit(ref).path)
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _fail_duplicate_ids(records: list[JobRecord], manifest: Path) -> list[JobRecord]:
    seen: dict[str, int] = {}
    out = []
    for rec in records:
        first = seen.setdefault(rec.job_id, rec.row)
        if first != rec.row and rec.status is not JobStatus.failed:
            reason = f"id {rec.job_id!r} is already used by row {first}; ids must be unique"
            rec = rec.fail(Stage.manifest, reason, path=str(manifest))
        out.append(rec)
    return out
