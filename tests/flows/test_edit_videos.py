"""The real `edit_videos` flow, end to end, on the simulator with the real fal_client."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from klingflow.fal.urls import current_urls
from klingflow.media.probe import probe_video
from klingflow.media.synth import make_clip, make_image
from klingflow.simulator import FaultConfig
from tests.conftest import fast_params, run_flow

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e-media")
    return {
        "a": make_clip(root / "a.mp4", seconds=3, width=1280, height=720),
        "b": make_clip(root / "b.mp4", seconds=4, width=720, height=720, audio=False),
        "c": make_clip(root / "c.mov", seconds=3, width=720, height=1280),
        "img": make_image(root / "ref.png"),
    }


def _manifest(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("id,prompt,video,images,keep_audio\n" + "\n".join(rows) + "\n")
    return path


async def test_batch_with_a_failing_job_reports_every_row_and_matches_the_ledger(
    tmp_path: Path, simulator, clips: dict[str, Path]
) -> None:
    """Good jobs succeed, bad ones fail alone, and the report's bill equals the simulator's ledger."""
    simulator.set_faults(FaultConfig(fail_prompts_containing=["EXPLODE"]))
    manifest = _manifest(
        tmp_path,
        [
            f"ok-a,Make @Video1 snowy,{clips['a']},,true",
            f"ok-b,Restyle @Video1 like @Image1,{clips['b']},{clips['img']},false",
            f"boom,EXPLODE @Video1,{clips['c']},,true",
            f"missing,Edit @Video1,{tmp_path / 'nope.mp4'},,true",
        ],
    )
    before = (current_urls(), os.environ.get("NO_PROXY"))
    state, summary = await run_flow(fast_params(tmp_path, manifest))

    assert (current_urls(), os.environ.get("NO_PROXY")) == before  # fal_client is pointed back where it was
    assert state == "COMPLETED"  # 2/4 succeeded: the run is named by its count (test_the_run_ends_...)
    assert summary.statuses == {"ok-a": "succeeded", "ok-b": "succeeded", "boom": "failed", "missing": "failed"}
    report = pd.read_parquet(tmp_path / "reports").set_index("job_id")
    assert "nope.mp4" in report.loc["missing", "error"] and "row 4" in report.loc["missing", "error"]
    assert report.loc["boom", "request_id"]
    ledger = {e.request_id: e for e in simulator.ledger()}
    billed = report[report["status"] == "succeeded"]
    assert set(billed["request_id"]) == set(ledger)
    assert round(billed["cost_usd"].sum(), 2) == round(sum(float(e.cost_usd) for e in ledger.values()), 2)
    assert (billed["cost_source"] == "header").all()
    for _, row in billed.iterrows():
        out = probe_video(row["output_path"])
        assert abs(out.duration_s - row["input_duration_s"]) < 0.5
    assert probe_video(billed.loc["ok-a", "output_path"]).has_audio
    assert not probe_video(billed.loc["ok-b", "output_path"]).has_audio


async def test_rerun_reuses_results_and_forced_rerun_uploads_nothing(
    tmp_path: Path, simulator, clips: dict[str, Path]
) -> None:
    """A second run pays nothing; a forced run pays again but finds every file in the upload cache."""
    manifest = _manifest(tmp_path, [f"a,Make @Video1 snowy,{clips['a']},{clips['img']},true"])
    params = fast_params(tmp_path, manifest)
    assert (await run_flow(params))[0] == "COMPLETED"
    first_uploads = simulator.counters()["upload_bytes"]
    assert first_uploads > 0

    state, again = await run_flow(params)
    assert state == "COMPLETED"
    assert again.cost_usd == 0
    assert len(simulator.ledger()) == 1

    state, _forced = await run_flow(params.model_copy(update={"force": True}))
    assert state == "COMPLETED"
    assert len(simulator.ledger()) == 2
    assert simulator.counters()["upload_bytes"] == first_uploads
    history = pd.read_parquet(tmp_path / "reports").sort_values("run_started_at")
    assert list(history["reused"]) == [False, True, False]
    assert list(history["uploaded_bytes"])[2] == 0
    assert list(history["upload_cache_hits"])[2] == 2


async def test_concurrency_limit_holds_on_the_simulator(tmp_path: Path, simulator, clips: dict[str, Path]) -> None:
    """With max_concurrency=2, the simulator never sees more than 2 requests in flight."""
    simulator.stop()
    from klingflow.simulator import Simulator, SimulatorConfig

    wide = Simulator(SimulatorConfig(state_dir=tmp_path / "wide", time_scale=0.05, concurrency_per_key=10)).start()
    try:
        import os

        os.environ["KLINGFLOW_SIMULATOR_URL"] = wide.url
        rows = [f"j{i},Edit {i} @Video1,{clips['a']},,true" for i in range(6)]
        state, summary = await run_flow(fast_params(tmp_path, _manifest(tmp_path, rows), max_concurrency=2))
        assert state == "COMPLETED"
        assert summary.succeeded == 6
        in_flight = [k["max_in_flight"] for k in wide.counters()["keys"].values()]
        assert max(in_flight) == 2
    finally:
        wide.stop()


async def test_a_trickling_input_url_delays_only_its_own_job(tmp_path: Path, simulator, clips: dict[str, Path]) -> None:
    """One input URL sends 1 KiB every 0.2 s: the other rows are submitted and done long before its fetch
    deadline fails it; the estimate counts it at its upper bound."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tests.trickle import trickling

    with trickling(clips["a"]) as url:
        rows = [f"slow,Slow edit @Video1,{url},,true", f"q1,Quick edit @Video1,{clips['a']},,true"]
        rows.append(f"q2,Another edit @Video1,{clips['b']},,false")
        params = fast_params(tmp_path, _manifest(tmp_path, rows), estimate_wait_s=0.5, input_fetch_timeout_s=8)
        state, summary = await run_flow(params)
    assert state == "COMPLETED" and summary.statuses == {"slow": "failed", "q1": "succeeded", "q2": "succeeded"}
    report = pd.read_parquet(summary.report_path).set_index("job_id")
    assert "download failed: not complete after 8 s" in report.loc["slow", "error"]
    started = report["run_started_at"].iloc[0]
    quick = report.loc[["q1", "q2"]]
    assert ((quick["submitted_at"] - started).dt.total_seconds() < 6).all(), quick["submitted_at"]
    async with get_client() as client:
        [estimate] = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["klingflow-estimate"])),
            limit=1,
            sort="CREATED_DESC",
        )
    assert "1 still being prepared after 0.5 s" in str(estimate.data) and "at most $" in str(estimate.data)
