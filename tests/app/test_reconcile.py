"""`klingflow reconcile` on the simulator: fal's billing events against the reports of real runs.

The runs are the real flow; the bill is the simulator's, read through its billing-events route with
its admin key, as `klingflow reconcile` reads fal's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from klingflow.app.cli import build_parser
from klingflow.app.reconcile import reconcile_runs
from klingflow.fal.backend import SIMULATOR_KEY
from klingflow.media.synth import make_clip
from klingflow.report.cli import run as report
from klingflow.report.reconcile import read_reconciliation
from klingflow.simulator import FaultConfig, RouteFaults
from klingflow.simulator.auth import key_id
from tests.conftest import fast_params, run_flow

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("reconcile") / "clip.mp4", seconds=3, width=720, height=720)


def _manifest(tmp_path: Path, clip: Path, prompts: list[str]) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("id,prompt,video\n" + "".join(f"j{i},{p},{clip}\n" for i, p in enumerate(prompts)))
    return path


async def _reconcile(tmp_path: Path, *options: str) -> int:
    args = build_parser().parse_args(["reconcile", str(tmp_path / "reports"), "--state-dir", str(tmp_path), *options])
    return await reconcile_runs(args)


async def test_with_a_discount_the_estimate_budget_and_costs_use_it_and_the_bill_reconciles(
    tmp_path: Path, make_simulator, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20% off for the key: three 3 s jobs fit a $2.50 budget only at the discounted $0.2688/s."""
    sim = make_simulator(key_discounts={key_id(SIMULATOR_KEY): 20.0})
    manifest = _manifest(tmp_path, clip, [f"Discounted edit {i} @Video1" for i in range(3)])
    state, summary = await run_flow(fast_params(tmp_path, manifest, max_budget_usd=2.50))

    assert state == "COMPLETED", summary.statuses  # at the list price ($1.008 each) the third would be skipped
    assert summary.estimated_usd == pytest.approx(3 * 0.8064)
    report_rows = pd.read_parquet(tmp_path / "reports")
    assert (report_rows["unit_price_usd"] == 0.2688).all() and (report_rows["price_source"] == "fal").all()
    assert (report_rows["estimated_cost_usd"] == 0.8064).all()
    assert (report_rows["cost_usd"] == (report_rows["billed_seconds"] * 0.2688).round(4)).all()
    ledger = sim.ledger()
    assert round(sum(float(e.cost_usd) for e in ledger), 4) == round(report_rows["cost_usd"].sum(), 4)
    assert {e.tags["klingflow.run"] for e in ledger} == {summary.run_id}  # every request tagged with its run
    assert {e.tags["klingflow.job"] for e in ledger} == {k[:16] for k in report_rows["job_key"]}

    capsys.readouterr()
    assert await _reconcile(tmp_path) == 0
    out = capsys.readouterr().out
    assert "3 request(s)" in out and "0 problem(s)" in out and "matches the reports to the cent" in out
    after = pd.read_parquet(tmp_path / "reports")
    assert (after["cost_source"] == "billing_event").all()
    assert after["cost_usd"].sum() == pytest.approx(report_rows["cost_usd"].sum())
    recon = read_reconciliation(tmp_path / "reports")
    assert set(recon["status"]) == {"matched"} and set(recon["request_id"]) == {e.request_id for e in ledger}
    assert (recon["fal_percent_discount"] == 20.0).all()

    assert report(build_parser().parse_args(["report", str(tmp_path / "reports")])) == 0
    assert "fal's bill (billing events" in capsys.readouterr().out
    assert report(build_parser().parse_args(["report", str(tmp_path / "reports"), "--format", "json"])) == 0
    (run,) = json.loads(capsys.readouterr().out)["reconciliation"]["by_run"]
    assert (run["requests"], run["problems"], run["fal_cost_usd"]) == (3, 0, round(after["cost_usd"].sum(), 4))


async def test_a_duplicate_charge_from_a_lost_submit_answer_is_listed_and_fails_the_reconciliation(
    tmp_path: Path, make_simulator, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The submit's answer is lost after fal queued it, and fal's history lags past the settle window: the
    job is sent again and fal bills both. Only the tag finds the first one; reconcile lists it."""
    sim = make_simulator(history_lag_s=120.0, faults=FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1)))
    manifest = _manifest(tmp_path, clip, ["Lost answer @Video1"])
    state, summary = await run_flow(fast_params(tmp_path, manifest, settle_window_s=1.0))
    assert state == "COMPLETED", summary.statuses
    ledger = sim.ledger()
    assert len(ledger) == 2  # paid twice: what reconcile exists to show
    reported = set(pd.read_parquet(tmp_path / "reports")["request_id"])
    (duplicate,) = {e.request_id for e in ledger} - reported

    capsys.readouterr()
    assert await _reconcile(tmp_path, "--format", "json") == 1
    body = json.loads(capsys.readouterr().out)
    assert [(p["status"], p["request_id"], p["run_id"]) for p in body["problems"]] == [
        ("unexpected", duplicate, summary.run_id)
    ]
    (run,) = body["runs"]
    assert (run["requests"], run["unexpected"]) == (2, 1)
    assert run["difference_usd"] == pytest.approx(float(next(e.cost_usd for e in ledger if e.request_id == duplicate)))


async def test_a_job_another_machine_paid_for_too_is_named_by_its_job_key(
    tmp_path: Path, simulator, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the run, another machine (its own state dir and reports) sends one of its jobs again on the key: each
    request matches its own report, so only the job's tag shows that the job was paid twice; reconcile names it."""
    import asyncio

    from klingflow.fal.outcomes import Done
    from klingflow.fal.queue import FalQueue, Target
    from klingflow.fal.submit import request_tags, submit_headers

    manifest = _manifest(tmp_path, clip, ["Paid twice @Video1", "Paid once @Video1"])
    state, _ = await run_flow(fast_params(tmp_path, manifest))
    assert state == "COMPLETED"
    rows = pd.read_parquet(tmp_path / "reports").set_index("job_id")
    key = rows.loc["j0", "job_key"]
    async with FalQueue(Target.simulator(simulator.url), SIMULATOR_KEY) as fal:
        args = {"prompt": "Paid twice @Video1", "video_url": await fal.upload(clip)}
        other = await fal.submit_once(args, headers=submit_headers(60, request_tags("the-other-laptop", key)))
        while not isinstance(await fal.status(other.request_id), Done):  # type: ignore[union-attr]
            await asyncio.sleep(0.05)

    capsys.readouterr()
    assert await _reconcile(tmp_path, "--format", "json") == 1
    body = json.loads(capsys.readouterr().out)
    assert body["problems"] == []  # every request of this report matches fal's charge
    (dup,) = body["duplicates"]
    assert dup["job_key"] == key[:16] and dup["job_ids"] == ["j0"]
    named = {(r["request_id"], r["in_reports"]) for r in dup["requests"]}
    assert named == {(rows.loc["j0", "request_id"], True), (other.request_id, False)}  # type: ignore[union-attr]
    assert await _reconcile(tmp_path) == 1
    out = capsys.readouterr().out
    assert "Duplicates: 1 job(s)" in out and key[:16] in out and other.request_id in out  # type: ignore[union-attr]


async def test_the_key_and_the_admin_key_appear_nowhere(
    tmp_path: Path,
    simulator,
    clip: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Sentinel keys in the environment: no log line, report, reconciliation, artifact or parameter has them."""
    from prefect.client.orchestration import get_client

    key, admin = "fal-key-SENTINEL-4f1e", "fal-admin-SENTINEL-9c2a"
    monkeypatch.setenv("FAL_KEY", key)
    monkeypatch.setenv("FAL_ADMIN_KEY", admin)
    caplog.set_level(logging.DEBUG)
    manifest = _manifest(tmp_path, clip, ["Secret-free edit @Video1"])
    state, summary = await run_flow(fast_params(tmp_path, manifest))
    assert state == "COMPLETED"
    assert await _reconcile(tmp_path) == 0
    texts = [caplog.text, capsys.readouterr().out]
    texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "reports").rglob("*.parquet")]
    async with get_client() as client:
        run = await client.read_flow_run(summary.run_id)
        texts.append(json.dumps(run.parameters, default=str))
        artifacts = await client.read_artifacts()
        texts += [json.dumps(a.data, default=str) for a in artifacts if a.flow_run_id == run.id]
        logs = await client.read_logs()
        texts += [entry.message for entry in logs if entry.flow_run_id == run.id]
    assert len(texts) > 4
    assert not [t for t in texts if key in t or admin in t]
