"""Seeded fault injection as fal_client experiences it."""

from __future__ import annotations

import time

import fal_client
import httpx
import pytest
from pydantic import ValidationError

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import FaultConfig, RouteFaults, Simulator
from klingflow.simulator.faults import FaultInjector
from tests.simulator.conftest import edit_args, submit


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


async def test_429_is_retried_and_succeeds(make_sim, aclient: fal_client.AsyncClient, media):
    """Two 429s on submit are retried by fal_client; the third call succeeds; one job is billed."""
    sim = make_sim(faults=FaultConfig(submit=RouteFaults(http_429=1.0, max_count=2)))
    url = await aclient.upload_file(media.silent)
    result = await aclient.subscribe(ENDPOINT_ID, edit_args(url))
    assert "video" in result
    counters = sim.counters()
    assert counters["faults"]["submit.http_429"] == 2 and counters["calls"]["submit"] == 3
    assert len(sim.ledger()) == 1


def test_429_carries_retry_after(make_sim):
    """The 429 response has a Retry-After header."""
    sim = make_sim(faults=FaultConfig(submit=RouteFaults(http_429=1.0), retry_after_s=3))
    response = httpx.post(f"{sim.url}/{ENDPOINT_ID}", json={}, headers={"Authorization": "Key k"})
    assert response.status_code == 429 and response.headers["retry-after"] == "3"


def test_nginx_502_is_retried(make_sim, client: fal_client.SyncClient, media):
    """Ingress 502/503s (nginx HTML, no x-fal-request-id) on status polls are retried transparently."""
    sim = make_sim(faults=FaultConfig(status=RouteFaults(ingress_5xx=1.0, max_count=3)))
    assert "video" in client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.silent)))
    assert sim.counters()["faults"]["status.ingress_5xx"] == 3
    sim.set_faults(FaultConfig(status=RouteFaults(ingress_5xx=1.0)))
    raw = httpx.get(f"{sim.url}/fal-ai/kling-video/requests/x/status", headers={"Authorization": "Key k"})
    assert raw.status_code in (502, 503) and "nginx" in raw.text and "x-fal-request-id" not in raw.headers


def test_plain_500_surfaces(make_sim, client: fal_client.SyncClient, media):
    """A plain 500 on the result is not retried: FalClientHTTPError(500)."""
    sim = make_sim(faults=FaultConfig(result=RouteFaults(http_500=1.0, max_count=1)))
    handle = submit(client, edit_args(client.upload_file(media.silent)))
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 500
    assert "video" in handle.get()  # the budget is spent; the result is intact
    assert sim.counters()["calls"]["result"] == 2


def test_drop_after_accept_creates_a_paid_duplicate(make_sim, client: fal_client.SyncClient, media):
    """A submit whose response is lost after enqueueing is re-POSTed by fal_client: two billed jobs."""
    sim = make_sim(fast_copy=True, faults=FaultConfig(submit=RouteFaults(drop_after=1.0, max_count=1)))
    result = client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.silent)))
    assert "video" in result
    _wait(lambda: len(sim.ledger()) == 2)
    entries = sim.ledger()
    assert entries[0].request_id != entries[1].request_id and entries[0].input == entries[1].input
    assert sim.counters()["submits"] == 2 and sim.counters()["calls"]["submit"] == 2


def test_drop_before_enqueue_creates_no_duplicate(make_sim, client: fal_client.SyncClient, media):
    """A submit dropped before enqueueing is retried and yields exactly one job."""
    sim = make_sim(fast_copy=True, faults=FaultConfig(submit=RouteFaults(drop=1.0, max_count=1)))
    assert "video" in client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.silent)))
    assert sim.counters()["submits"] == 1 and sim.counters()["faults"]["submit.drop"] == 1
    assert len(sim.ledger()) == 1


def test_dropped_status_poll_is_retried(make_sim, client: fal_client.SyncClient, media):
    """Dropped connections on status polls are transport errors fal_client retries."""
    sim = make_sim(faults=FaultConfig(status=RouteFaults(drop=1.0, max_count=2)))
    assert "video" in client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.silent)))
    assert sim.counters()["faults"]["status.drop"] == 2


def test_job_failure_is_500_and_unbilled(make_sim, client: fal_client.SyncClient, media):
    """A targeted failing prompt completes with an error; result 500; nothing billed; others succeed."""
    sim = make_sim(faults=FaultConfig(fail_prompts_containing=["EXPLODE"]))
    url = client.upload_file(media.silent)
    bad, good = submit(client, edit_args(url, prompt="EXPLODE")), submit(client, edit_args(url))
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        bad.get()
    assert err.value.status_code == 500
    status = bad.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "runner_server_error"
    assert "video" in good.get()
    assert [e.request_id for e in sim.ledger()] == [good.request_id]


def test_job_failure_rate(make_sim, client: fal_client.SyncClient, media):
    """job_failure_rate=1 fails every job (500, not a validation 422) and bills nothing."""
    sim = make_sim(faults=FaultConfig(job_failure_rate=1.0))
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.silent)))
    assert err.value.status_code == 500
    assert sim.ledger() == []


def test_hang_until_cancelled(make_sim, client: fal_client.SyncClient, media):
    """A hanging job stays IN_PROGRESS far beyond its processing time until cancelled."""
    sim = make_sim(faults=FaultConfig(hang_prompts_containing=["STUCK"]))
    handle = submit(client, edit_args(client.upload_file(media.silent), prompt="STUCK"))
    time.sleep(1.0)  # 50x the simulated processing time
    assert isinstance(handle.status(), fal_client.InProgress)
    handle.cancel()
    assert isinstance(handle.status(), fal_client.Completed)
    assert sim.ledger() == []


def test_slow_download_is_measurably_slow(make_sim, client: fal_client.SyncClient, media):
    """Throttled downloads take about size / bytes_per_s."""
    sim = make_sim()
    url = client.upload_file(media.clip)
    size = media.clip.stat().st_size
    start = time.monotonic()
    assert len(httpx.get(url).content) == size
    fast = time.monotonic() - start
    sim.set_faults(FaultConfig(slow_download_rate=1.0, slow_download_bytes_per_s=size))
    start = time.monotonic()
    assert len(httpx.get(url).content) == size
    slow = time.monotonic() - start
    assert slow > 0.8 and slow > 5 * fast


def test_faults_settable_over_http(sim: Simulator):
    """PUT /_simulator/faults replaces the faults; invalid configs are 422."""
    body = FaultConfig(token=RouteFaults(http_500=1.0)).model_dump_json()
    assert httpx.put(f"{sim.url}/_simulator/faults", content=body).status_code == 200
    response = httpx.post(f"{sim.url}/storage/auth/token", json={}, headers={"Authorization": "Key k"})
    assert response.status_code == 500
    bad = httpx.put(f"{sim.url}/_simulator/faults", json={"token": {"http_500": 0.8, "http_429": 0.5}})
    assert bad.status_code == 422


def test_fault_draws_are_seeded():
    """Equal seeds give equal fault sequences, other seeds differ; rates summing above 1 are refused."""
    cfg = FaultConfig(status=RouteFaults(http_429=0.3, ingress_5xx=0.3))
    injectors = [FaultInjector(cfg, seed=s) for s in (7, 7, 8)]
    sequences = [[injector.http_fault("status") for _ in range(50)] for injector in injectors]
    assert sequences[0] == sequences[1] != sequences[2]
    assert {"http_429", "ingress_5xx", None} == set(sequences[0])
    with pytest.raises(ValidationError):
        RouteFaults(http_429=0.7, drop=0.7)


def test_money_fault_draws_are_seeded():
    """cancel_ignored/invalid_billed follow their rates from the seeded RNG; at rate 0 they draw nothing."""
    cfg = FaultConfig(cancel_running_completes_rate=0.5, invalid_billed_rate=0.5)
    injectors = [FaultInjector(cfg, seed=s) for s in (3, 3)]
    draws = [[(i.cancel_ignored(), i.invalid_billed()) for _ in range(40)] for i in injectors]
    assert draws[0] == draws[1] and {True, False} <= {d for pair in draws[0] for d in pair}
    quiet, reference = FaultInjector(FaultConfig(), seed=5), FaultInjector(FaultConfig(), seed=5)
    assert not quiet.cancel_ignored() and not quiet.invalid_billed()
    assert quiet.ingress_code() == reference.ingress_code()  # the RNG was not advanced
