"""The run's report files and the Prefect artifacts that point at them (the report task is tasks/report.py).

The parquet file is the record of what was paid for, so it is written first and its failure fails the
task; the HTML page and the artifacts are views of it and only log a warning when they fail.
`report` is an async task (the flow awaits it); file and video work runs in a worker thread so the
flow's event loop keeps serving other jobs' polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pyarrow as pa
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_logger
from pydantic import BaseModel

from klingflow.orchestrator import PrefectLink
from klingflow.report.html import decode_frames, local_file, safe_href, write_html
from klingflow.report.summary import Summary, Totals, format_usd, manifest_label, number, run_label, summarize
from klingflow.report.writer import HTML_SUBDIR, run_file_name, thumb_cache_dir, write_run_report

TABLE_KEY = "klingflow-jobs"
SUMMARY_KEY = "klingflow-summary"
LINK_KEY = "klingflow-html-report"
PROGRESS_KEY = "klingflow-progress"
UI_REPORT_KEY = "klingflow-report"
_PROMPT_CHARS = 120
# Prefect 3.8 puts no cap on an artifact's data (a JSON column; ArtifactCreate has no max_length), but the
# server refuses events over PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES (1.5 MB by default) and the UI renders
# the markdown in the browser: the UI report stays under 1 MB, thumbnails included.
UI_REPORT_MAX_BYTES = 1_000_000
UI_THUMB_WIDTH = 160


class ReportPaths(BaseModel):
    """Where the report went; html_path is None when the page could not be rendered (see the log)."""

    parquet_path: Path
    html_path: Path | None
    totals: Totals  # the run's headline numbers, as the markdown artifact, the HTML page and the CLI show them


def html_path_for(report_dir: Path, run_id: str) -> Path:
    """report_dir/_html/run-<run_id>.html (under '_' so dataset readers skip it)."""
    return Path(report_dir) / HTML_SUBDIR / run_file_name(run_id, ".html")


def write_files(table: pa.Table, report_dir: Path, run_id: str) -> tuple[Path, Path | None, pd.DataFrame, Summary]:
    """Parquet (must succeed), then the HTML page (may fail with a warning)."""
    parquet = write_run_report(table, report_dir, run_id=run_id)
    df = table.to_pandas()
    summary = summarize(df)
    try:
        html = write_html(
            df,
            html_path_for(report_dir, run_id),
            title=f"klingflow run {run_id}",
            summary=summary,
            thumb_cache_dir=thumb_cache_dir(report_dir),
        )
    except Exception:  # noqa: BLE001 - the parquet is written; a broken page must not fail a paid run
        get_logger("klingflow.report").exception("HTML report for run %s failed", run_id)
        html = None
    return parquet, html, df, summary


async def publish_artifacts(
    df: pd.DataFrame, summary: Summary, *, run_id: str, parquet: Path, html: Path | None
) -> None:
    await acreate_table_artifact(table=job_table(df), key=TABLE_KEY, description=f"Jobs of run {run_id}")
    await acreate_markdown_artifact(
        markdown=summary_markdown(summary, run_id=run_id, parquet=parquet, html=html),
        key=SUMMARY_KEY,
        description=f"Summary of run {run_id}",
    )
    await acreate_markdown_artifact(
        markdown=await asyncio.to_thread(ui_report_markdown, df, summary, run_id=run_id, parquet=parquet, html=html),
        key=UI_REPORT_KEY,
        description=f"Report of run {run_id}: jobs, output links and thumbnails (opens in the Prefect UI)",
    )
    if html is not None:
        await acreate_link_artifact(
            link=html.absolute().as_uri(),
            link_text=f"HTML report of run {run_id}",
            key=LINK_KEY,
            description=f"Offline HTML report of run {run_id}",
        )


def _cell(value: Any) -> Any:
    if value is None or (not isinstance(value, (list, str)) and pd.isna(value)):
        return None
    if isinstance(value, float):
        return round(value, 4)
    return value.item() if hasattr(value, "item") else value


def row_warning(rec: dict[str, Any]) -> str | None:
    """What a row says beside its status, from its report columns: a trimmed clip (preprocess_actions) had only
    its first seconds edited."""
    actions = rec.get("preprocess_actions")
    if not pd.api.types.is_list_like(actions) or "trim" not in list(actions):
        return None
    source, edited = _cell(rec.get("source_duration_s")), _cell(rec.get("input_duration_s"))
    if source is None or edited is None:
        return "trimmed: only the start of the clip was edited"
    return f"trimmed: only the first {edited:.1f} s of the {source:.1f} s clip was edited"


def job_table(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One artifact row per job: identity, then status, error and warning (first, so the UI's table shows them
    without scrolling), money, timing and where the output is."""
    columns = [
        "row",
        "job_id",
        "status",
        "error_stage",
        "error",
        "prompt",
        "estimated_cost_usd",
        "cost_usd",
        "billed_seconds",
        "cost_source",
        "queued_s",
        "processing_s",
        "total_s",
        "output_url",
        "output_path",
    ]
    rows = []
    for rec in df.to_dict("records"):
        row = {c: _cell(rec[c]) for c in columns[:5]} | {"warning": row_warning(rec)}
        row |= {c: _cell(rec[c]) for c in columns[5:]}
        if row["prompt"] and len(row["prompt"]) > _PROMPT_CHARS:
            row["prompt"] = row["prompt"][: _PROMPT_CHARS - 1] + "…"
        rows.append(row)
    return rows


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} s"


def summary_markdown(summary: Summary, *, run_id: str, parquet: Path, html: Path | None) -> str:
    """The markdown summary artifact: counts, spend vs estimate, latency percentiles, top errors."""
    t = summary.totals
    rate = "—" if t.success_rate is None else f"{t.success_rate:.0%}"
    run = summary.by_run[0] if summary.by_run else {"run_id": run_id}
    lines = [
        f"# klingflow run {_md(run_label(run))}",
        "",
        "| run | |",
        "|---|---|",
        f"| run name | {_md(run.get('run_name') or '—')} |",
        f"| run id | `{run_id}` |",
        f"| manifest | {_md(manifest_label(run))} |",
        f"| jobs | {t.jobs} |",
        f"| succeeded | {t.succeeded} |",
        f"| failed | {t.failed} |",
        f"| other (dry run, pending) | {t.other} |",
        f"| success rate | {rate} |",
        f"| total cost (billed) | {format_usd(t.cost_usd)} |",
        f"| estimated cost | {format_usd(t.estimated_cost_usd)} |",
        f"| billed - estimated | {format_usd(t.estimate_delta_usd)} over {t.estimate_delta_jobs} job(s)"
        + ", not counting reused or dry-run rows"
        + (f"; {t.budget_skipped} budget-skipped left out |" if t.budget_skipped else " |"),
        f"| billed / estimated seconds | {t.billed_seconds:,.0f} / {t.estimated_seconds:,.0f} |",
    ]
    if t.reused:
        lines.append(f"| reused (no new spend) | {t.reused} |")
    lines += ["", "| duration | n | p50 | p95 | max |", "|---|---:|---:|---:|---:|"]
    for name, d in t.durations.items():
        cells = " | ".join(_secs(d[q]) for q in ("p50", "p95", "max"))
        lines.append(f"| {name} | {d['n']} | {cells} |")
    if summary.failures:
        lines += [
            "",
            "**Failures by error**",
            "",
            "| n | stage | error kind | example message |",
            "|---:|---|---|---|",
        ]
        for f in summary.failures[:10]:
            lines.append(
                f"| {f['count']} | {f['error_stage'] or '—'} | {_md(f['kind'])} | {_md(str(f['error'])[:200])} |"
            )
    lines += ["", f"Parquet: `{parquet}`", f"HTML: `{html}`" if html else "HTML: not written (see the task log)"]
    return "\n".join(lines)


def _md(text: Any) -> str:
    """`text` safe in one markdown table cell: pipes escaped, no newlines, no HTML tags."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _thumb(row: dict[str, Any]) -> str | None:
    """A small JPEG data URI of the output's middle frame (None when there is no local, decodable output)."""
    path = local_file(row.get("output_path"))
    duration = number(row.get("output_duration_s"))
    if path is None or not path.is_file():
        return None
    return decode_frames(path, [round((duration or 0) / 2, 3)], UI_THUMB_WIDTH)[0].uri


def _job_line(row: dict[str, Any], thumb: str | None) -> str:
    """One job as a markdown table row: status, job, cost, output link, thumbnail, error."""
    href = safe_href(row.get("output_url"))
    link = f"[output]({href})" if href and href.startswith(("http://", "https://")) else "—"
    image = f"![{_md(row['job_id'])}]({thumb})" if thumb else "—"
    error = _md(str(row.get("error"))[:200]) if row.get("error") else ""
    cost = format_usd(row.get("cost_usd"), 3)
    return (
        f"| {_md(row.get('status'))} | {_md(row['job_id'])} | {cost} | {format_usd(row.get('estimated_cost_usd'), 3)}"
        f" | {link} | {image} | {error} |"
    )


def ui_report_markdown(
    df: pd.DataFrame,
    summary: Summary,
    *,
    run_id: str,
    parquet: Path,
    html: Path | None,
    max_bytes: int = UI_REPORT_MAX_BYTES,
) -> str:
    """The report as it opens in the Prefect UI (a file:// link does not): the summary, then one row per job
    with its output link and an inline thumbnail, thumbnails left out (and said so) past `max_bytes`."""
    head = summary_markdown(summary, run_id=run_id, parquet=parquet, html=html)
    columns = ["job_id", "status", "cost_usd", "estimated_cost_usd", "output_url", "output_path", "output_duration_s"]
    rows = [{k: _cell(v) for k, v in r.items()} for r in df[[*columns, "error"]].to_dict("records")]
    plain = [_job_line(r, None) for r in rows]
    budget = max_bytes - len(head.encode()) - sum(len(line) for line in plain) - 2_000
    lines, left_out = [], 0
    for row, bare in zip(rows, plain, strict=True):
        thumb = _thumb(row) if budget > 0 else None
        line = _job_line(row, thumb) if thumb else bare
        if thumb and len(line) - len(bare) > budget:
            line, left_out = bare, left_out + 1
        elif thumb:
            budget -= len(line) - len(bare)
        elif budget <= 0 and local_file(row.get("output_path")):
            left_out += 1
        lines.append(line)
    note = (
        [
            f"_{left_out} thumbnail(s) left out to keep this artifact under {max_bytes / 1e6:.1f} MB; "
            "the HTML report has them all._",
            "",
        ]
        if left_out
        else []
    )
    table = ["| status | job | cost | estimated | output | thumbnail | error |", "|---|---|---:|---:|---|---|---|"]
    return "\n".join([head, "", f"## Jobs ({len(rows)})", "", *note, *table, *lines])


class ProgressTracker:
    """A Prefect progress artifact that moves as jobs finish.

    `advance` never waits on Prefect: it counts (from coroutines or threads) and wakes one background task
    that sends the update through the run's PrefectLink (bounded, skipped while the server is down: measured,
    one synchronous update to a killed server held the whole event loop for a minute of Prefect's retries).
    Updates are at most one per `every_s`, plus the last. Outside a flow run it only counts.
    """

    def __init__(
        self, total: int, *, key: str = PROGRESS_KEY, every_s: float = 2.0, link: PrefectLink | None = None
    ) -> None:
        self.total = max(0, total)
        self.done = 0
        self.key = key
        self.every_s = every_s
        self._link = link or PrefectLink()
        self._lock = threading.Lock()
        self._artifact_id: UUID | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, total: int, *, key: str = PROGRESS_KEY, every_s: float = 2.0, link: PrefectLink | None = None
    ) -> ProgressTracker:
        """A tracker whose artifact exists (inside a flow or task run) and moves in the background."""
        tracker = cls(total, key=key, every_s=every_s, link=link)
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return tracker
        tracker._artifact_id = await tracker._link.best_effort(
            lambda: acreate_progress_artifact(progress=tracker.percent, key=key, description=tracker._description()),
            "creating the progress artifact",
        )
        if tracker._artifact_id is not None:
            tracker._loop = asyncio.get_running_loop()
            tracker._sender = asyncio.create_task(tracker._send(), name="klingflow-progress")
        return tracker

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else min(100.0, 100.0 * self.done / self.total)

    def _description(self) -> str:
        return f"{self.done}/{self.total} job(s) finished"

    def advance(self, n: int = 1) -> None:
        """Count `n` more finished jobs; the artifact follows in the background."""
        with self._lock:
            self.done = min(self.total, self.done + n)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _send(self) -> None:
        sent = -1
        while sent < self.total:
            await self._wake.wait()
            self._wake.clear()
            if self.done == sent:
                continue
            sent, artifact_id = self.done, self._artifact_id
            await self._link.best_effort(
                lambda artifact_id=artifact_id: aupdate_progress_artifact(
                    artifact_id=artifact_id, progress=self.percent, description=self._description()
                ),
                "moving the progress artifact",
            )
            if sent < self.total:
                await asyncio.sleep(self.every_s)

    async def aclose(self, wait_s: float = 5.0) -> None:
        """Let the last update go out (within `wait_s`), then stop the background task."""
        if self._sender is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._sender), wait_s)
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
