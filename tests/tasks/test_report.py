"""The report task inside a real Prefect flow: files written, table/markdown/link/progress artifacts readable."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import get_run_context

from klingflow.report.artifacts import (
    LINK_KEY,
    PROGRESS_KEY,
    SUMMARY_KEY,
    TABLE_KEY,
    UI_REPORT_KEY,
    UI_REPORT_MAX_BYTES,
    ProgressTracker,
    ReportPaths,
    html_path_for,
    ui_report_markdown,
)
from klingflow.report.summary import summarize
from klingflow.report.writer import read_history, records_to_table
from tasks.report import report
from tests.report.test_support import T0, clip_pair, failed, succeeded


@flow
async def _report_flow(report_dir: str, media: str, manifest: str) -> tuple[str, ReportPaths]:
    before, after = clip_pair(Path(media), "f")
    records = [
        succeeded("ok", 1, seconds=5, video=str(before), output_path=str(after)),
        failed("bad", 2, error="HTTP 422: video too short"),
    ]
    progress = await ProgressTracker.start(total=len(records))
    threads = [threading.Thread(target=progress.advance) for _ in records]  # advance from worker threads ...
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    await asyncio.sleep(0)
    progress.advance()  # ... and from the event loop (clamped at total)
    await progress.aclose()
    run_id = str(get_run_context().flow_run.id)
    paths = await report(
        records,
        run_id=run_id,
        run_started_at=T0,
        backend="simulator",
        endpoint="fal-ai/kling-video/o3/pro/video-to-video/edit",
        report_dir=report_dir,
        manifest=manifest,
    )
    return run_id, paths


def _artifacts(run_id: str) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        by_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        found = client.read_artifacts(artifact_filter=by_run)
    return {a.key: a for a in found}


@pytest.mark.usefixtures("prefect_server")
def test_report_task_writes_files_and_artifacts(tmp_path: Path) -> None:
    """The flow run gets table (one row per job), markdown totals, link to the HTML, and a progress artifact at 100%."""
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,prompt,video\nok,p,a.mp4\n")
    run_id, paths = asyncio.run(_report_flow(str(tmp_path / "reports"), str(tmp_path / "media"), str(manifest)))

    assert paths.parquet_path == tmp_path / "reports" / f"run-{run_id}.parquet"
    assert paths.html_path == html_path_for(tmp_path / "reports", run_id) and paths.html_path.is_file()
    assert paths.totals.jobs == 2 and paths.totals.cost_usd == pytest.approx(1.68)
    assert list(read_history(tmp_path / "reports")["job_id"]) == ["ok", "bad"]
    assert "data:image/jpeg;base64," in paths.html_path.read_text()

    artifacts = _artifacts(run_id)
    assert {TABLE_KEY, SUMMARY_KEY, LINK_KEY, PROGRESS_KEY, UI_REPORT_KEY} <= set(artifacts)
    rows = json.loads(artifacts[TABLE_KEY].data)
    assert [(r["job_id"], r["status"], r["cost_usd"]) for r in rows] == [
        ("ok", "succeeded", 1.68),
        ("bad", "failed", None),
    ]
    markdown = artifacts[SUMMARY_KEY].data
    for expected in (
        "| jobs | 2 |",
        "| succeeded | 1 |",
        "| failed | 1 |",
        "| total cost (billed) | $1.68 |",
        "| estimated cost | $3.02 |",
        "| billed - estimated | -$1.34 over 2 job(s), not counting reused or dry-run rows |",  # 1 was sent to fal
        "| total_s |",
        "HTTP 422: video too short",
    ):
        assert expected in markdown
    assert paths.html_path.absolute().as_uri() in artifacts[LINK_KEY].data
    assert artifacts[PROGRESS_KEY].data == 100.0
    _check_run_identity(run_id, tmp_path, manifest, markdown)
    _check_ui_report(artifacts[UI_REPORT_KEY].data)
    assert artifacts[PROGRESS_KEY].description == "2/2 job(s) finished"


def _check_run_identity(run_id: str, tmp_path: Path, manifest: Path, markdown: str) -> None:
    """The report names the run (Prefect's flow-run name: no --name given) and the manifest with its sha256."""
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(run_id).name
    history = read_history(tmp_path / "reports")
    assert set(history["run_name"]) == {name}
    assert set(history["manifest_path"]) == {str(manifest.absolute())}
    assert set(history["manifest_sha256"]) == {hashlib.sha256(manifest.read_bytes()).hexdigest()}
    assert f"| run name | {name} |" in markdown
    assert f"| manifest | {manifest.absolute()} (sha256 {history['manifest_sha256'][0][:12]}) |" in markdown


def _check_ui_report(ui: str) -> None:
    """The UI's report artifact: the summary, one row per job with status, cost and output link, and the
    output's thumbnail inline (a data URI, which the UI shows; a file:// link it does not open)."""
    assert "| run name |" in ui and "| total cost (billed) | $1.68 |" in ui
    assert "| succeeded | ok | $1.680 |" in ui and "[output](https://sim.local/out/ok.mp4)" in ui
    assert "| failed | bad | — |" in ui and "HTTP 422: video too short" in ui
    assert ui.count("](data:image/jpeg;base64,") == 1  # the succeeded job's output
    assert "left out" not in ui and len(ui.encode()) < UI_REPORT_MAX_BYTES


def test_ui_report_leaves_thumbnails_out_past_its_size_cap(tmp_path: Path) -> None:
    """Past the byte cap the UI report drops thumbnails (every job row stays) and says how many it left out."""
    before, after = clip_pair(tmp_path, "f")
    records = [succeeded(f"j{i}", i, seconds=5, video=str(before), output_path=str(after)) for i in range(1, 4)]
    df = records_to_table(records, run_id="r", run_started_at=T0, backend="simulator", endpoint="e").to_pandas()
    full = ui_report_markdown(df, summarize(df), run_id="r", parquet=tmp_path / "r.parquet", html=None)
    one_thumb = (len(full.encode()) - len(full.split("](data:", 1)[0].encode())) // 3
    capped = ui_report_markdown(
        df,
        summarize(df),
        run_id="r",
        parquet=tmp_path / "r.parquet",
        html=None,
        max_bytes=len(full.encode()) + 2_000 - one_thumb // 2,
    )
    assert full.count("](data:image/jpeg;base64,") == 3
    assert 0 < capped.count("](data:image/jpeg;base64,") < 3
    assert all(f"| succeeded | j{i} |" in capped for i in range(1, 4))
    assert "thumbnail(s) left out to keep this artifact under" in capped


def test_progress_tracker_outside_a_flow_is_a_noop() -> None:
    """Without a flow run the tracker only counts (no artifact, no warning, no error)."""
    tracker = ProgressTracker(total=4)
    tracker.advance()
    tracker.advance(2)
    assert (tracker.done, tracker.percent) == (3, 75.0)
    tracker.advance(5)
    assert (tracker.done, tracker.percent) == (4, 100.0)  # clamped at total
    assert tracker._artifact_id is None
