"""State that outlives a simulator: ledger, results, queued work, and result expiry."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID, cost_usd
from klingflow.simulator.ledger import Ledger
from klingflow.simulator.models import LedgerEntry, utcnow
from tests.simulator.conftest import edit_args, submit


def test_ledger_entry_contents(sim, client: fal_client.SyncClient, media):
    """A billed request records id, endpoint, key id, payload, seconds, cost and timestamps."""
    args = edit_args(client.upload_file(media.clip))
    handle = submit(client, args)
    handle.get()
    (entry,) = sim.ledger()
    assert entry.request_id == handle.request_id and entry.endpoint == ENDPOINT_ID
    assert entry.input == args and entry.billed_seconds == 3
    assert entry.cost_usd == cost_usd(3) == Decimal("1.008")
    assert entry.submitted_at <= entry.started_at <= entry.completed_at
    lines = (sim.config.state_dir / "ledger.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["request_id"] == handle.request_id
    assert httpx.get(f"{sim.url}/_simulator/ledger").json()[0]["request_id"] == handle.request_id
    response = httpx.get(handle.response_url, headers={"Authorization": "Key k"})
    assert response.headers["x-fal-billable-units"] == "3"


def test_results_and_ledger_survive_restart_on_another_port(make_sim, client: fal_client.SyncClient, media, tmp_path):
    """After a restart on the same state dir, old results, old file URLs and the ledger are still there."""
    first = make_sim()
    video_url = client.upload_file(media.silent)
    handle = submit(client, edit_args(video_url))
    result = handle.get()
    first.stop()
    second = make_sim()
    assert second.url != first.url
    again = client.get_handle(ENDPOINT_ID, handle.request_id).get()
    assert again["video"]["file_size"] == result["video"]["file_size"]
    assert again["video"]["url"].startswith(second.url)
    assert httpx.get(again["video"]["url"]).status_code == 200
    # an input URL cached before the restart (old port) is resolved from disk
    assert "video" in client.subscribe(ENDPOINT_ID, edit_args(video_url))
    assert second.ledger()[0].request_id == handle.request_id
    assert len(second.ledger()) == 2


def test_queued_and_running_requests_resume_after_restart(make_sim, client: fal_client.SyncClient, media):
    """Requests queued or running at shutdown are re-queued on restart and billed exactly once."""
    first = make_sim(concurrency_per_key=1, time_scale=3.0)
    url = client.upload_file(media.silent)
    handles = [submit(client, edit_args(url, prompt=f"edit {i}")) for i in range(2)]
    time.sleep(0.3)
    assert isinstance(handles[0].status(), fal_client.InProgress)
    first.stop()
    second = make_sim(concurrency_per_key=1)
    for handle in handles:
        assert "video" in client.get_handle(ENDPOINT_ID, handle.request_id).get()
    ids = [e.request_id for e in second.ledger()]
    assert sorted(ids) == sorted(h.request_id for h in handles)


def test_ledger_bills_each_request_once(tmp_path: Path):
    """The ledger refuses a second entry for a request id, also after reopening the file."""
    now = utcnow()
    entry = LedgerEntry(
        request_id="r1", endpoint=ENDPOINT_ID, key_id="k", input={}, billed_seconds=3,
        cost_usd=cost_usd(3), submitted_at=now, started_at=now, completed_at=now,
    )  # fmt: skip
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert ledger.bill(entry) and not ledger.bill(entry)
    assert not Ledger(tmp_path / "ledger.jsonl").bill(entry)
    assert len(Ledger(tmp_path / "ledger.jsonl").entries()) == 1


def test_results_expire_after_retention(make_sim, client: fal_client.SyncClient, media):
    """After result_retention_s, status and result answer 404 like fal."""
    make_sim(result_retention_s=0.5)
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    assert "video" in handle.get()
    time.sleep(0.8)
    for call in (handle.status, handle.get):
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            call()
        assert err.value.status_code == 404
