"""The inbox flow: manifests dropped into a folder are run once each and filed under done/ or failed/."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.inbox import CLAIM_PREFIX, InboxParams, ManifestOutcome, claim, process_inbox
from klingflow.media.synth import make_clip

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("inbox-media") / "clip.mp4", seconds=3, width=1280, height=720)


@pytest.fixture
def inbox(tmp_path: Path, clip: Path) -> Path:
    """An inbox with its media next to the manifests, referenced by relative paths."""
    folder = tmp_path / "inbox"
    (folder / "media").mkdir(parents=True)
    shutil.copy(clip, folder / "media" / "clip.mp4")
    return folder


def _params(tmp_path: Path, inbox: Path) -> InboxParams:
    return InboxParams(
        inbox=str(inbox),
        settle_s=0,
        backend="simulator",
        output_dir=str(tmp_path / "outputs"),
        report_dir=str(tmp_path / "reports"),
        state_dir=str(tmp_path / "state"),
        poll_interval_s=0.05,
        poll_max_interval_s=0.2,
        job_timeout_s=60,
        concurrency_limit=f"klingflow-test-{tmp_path.name}",
    )


def _drop(inbox: Path, name: str, rows: list[tuple[str, str, str]]) -> Path:
    path = inbox / name
    path.write_text("id,prompt,video\n" + "".join(f"{i},{p},{v}\n" for i, p, v in rows))
    return path


def _sidecar(path: Path) -> ManifestOutcome:
    return ManifestOutcome.model_validate_json(path.with_name(path.name + ".result.json").read_text())


async def _process(params: InboxParams) -> tuple[str, list[ManifestOutcome]]:
    state = await process_inbox(params, return_state=True)
    return state.type.value, await state.aresult(raise_on_failure=False)


async def test_good_manifests_go_to_done_and_bad_ones_to_failed_with_the_reason(
    tmp_path: Path, inbox: Path, simulator
) -> None:
    """A fully successful manifest lands in done/; one with a failed job or unreadable lands in failed/ with why."""
    clip = "media/clip.mp4"
    _drop(inbox, "good.csv", [("g1", "Make @Video1 snowy", clip), ("g2", "Make @Video1 rainy", clip)])
    _drop(inbox, "half.csv", [("h1", "Make @Video1 foggy", clip), ("h2", "Edit @Video1", "media/nope.mp4")])
    (inbox / "broken.yaml").write_text("- id: [unclosed\n")
    (inbox / "notes.txt").write_text("not a manifest")

    state, outcomes = await _process(_params(tmp_path, inbox))

    assert state == "FAILED"
    assert {o.manifest: o.ok for o in outcomes} == {"good.csv": True, "half.csv": False, "broken.yaml": False}
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["notes.txt"]
    good = _sidecar(inbox / "done" / "good.csv")
    assert good.ok and good.summary is not None and good.summary.succeeded == 2
    half = _sidecar(inbox / "failed" / "half.csv")
    assert not half.ok and "h2" in half.reason and half.summary.statuses == {"h1": "succeeded", "h2": "failed"}
    broken = _sidecar(inbox / "failed" / "broken.yaml")
    assert not broken.ok and "cannot be read" in broken.reason
    assert len(simulator.ledger()) == 3  # g1, g2, h1: each paid job once


async def test_a_claimed_manifest_is_never_processed_twice(tmp_path: Path, inbox: Path, simulator) -> None:
    """A manifest claimed by another run is left alone, and two overlapping inbox runs run each manifest once."""
    taken = _drop(inbox, "taken.csv", [("t1", "Make @Video1 sunny", "media/clip.mp4")])
    assert claim(taken) == inbox / f"{CLAIM_PREFIX}taken.csv"
    assert claim(taken) is None
    for n in range(3):
        _drop(inbox, f"batch{n}.csv", [(f"b{n}", f"Make @Video1 style {n}", "media/clip.mp4")])

    params = _params(tmp_path, inbox)
    results = await asyncio.gather(_process(params), _process(params))

    assert [state for state, _ in results] == ["COMPLETED", "COMPLETED"]
    handled = sorted(o.manifest for _, outcomes in results for o in outcomes)
    assert handled == ["batch0.csv", "batch1.csv", "batch2.csv"]
    assert sorted(p.name for p in (inbox / "done").glob("*.csv")) == handled
    assert (inbox / f"{CLAIM_PREFIX}taken.csv").exists()  # still the other run's
    assert len(simulator.ledger()) == 3
    assert all(json.loads(p.read_text())["ok"] for p in (inbox / "done").glob("*.result.json"))


async def test_an_inbox_manifest_reads_only_the_inbox_and_public_hosts(
    tmp_path: Path, inbox: Path, clip: Path, simulator
) -> None:
    """Whoever can drop a file reaches neither the worker's other files nor its network: a row naming a file
    outside the inbox, or a loopback URL, fails alone (never opened, never paid); the inbox's own row is paid."""
    outside, loopback = str(clip), f"{simulator.url}/storage/clip.mp4"
    _drop(
        inbox,
        "mixed.csv",
        [
            ("in", "Make @Video1 sunny", "media/clip.mp4"),
            ("out", "Edit @Video1", outside),
            ("net", "Edit @Video1", loopback),
        ],
    )

    state, (outcome,) = await _process(_params(tmp_path, inbox))

    assert state == "FAILED" and outcome.summary is not None
    assert outcome.summary.statuses == {"in": "succeeded", "out": "failed", "net": "failed"}
    report = pd.read_parquet(tmp_path / "reports").set_index("job_id")
    assert "is outside the allowed input folders" in report.loc["out", "error"]
    assert report.loc["out", "error_stage"] == "manifest"
    assert "resolves to the non-public address 127.0.0.1" in report.loc["net", "error"]
    assert len(simulator.ledger()) == 1
