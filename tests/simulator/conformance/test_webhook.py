"""`?fal_webhook=URL`: a loopback receiver gets each request's result once, in fal's payload shape and
with fal's headers, whichever client submitted it; failed deliveries are retried."""

from __future__ import annotations

import time
from collections.abc import Callable

from klingflow.simulator import FaultConfig, Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conformance.conftest import clip_url
from tests.simulator.conformance.drivers import Driver, PythonDriver
from tests.simulator.conformance.receiver import Delivery, Receiver
from tests.simulator.conftest import SimFactory, edit_args

WEBHOOK_HEADERS = {"x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp"}


def _accepted(receiver: Receiver, n: int, timeout_s: float = 20.0) -> list[Delivery]:
    deadline = time.monotonic() + timeout_s
    while len(receiver.accepted()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a duplicate would arrive in this window
    return receiver.accepted()


def test_webhook_delivers_result_once_per_request(
    make_sim: SimFactory, make_driver: Callable[[Simulator], Driver], media
):
    """Two requests, two deliveries: status OK, the output as `payload`, fal's headers; no duplicates."""
    sim = make_sim()
    url = clip_url(media)
    drive = make_driver(sim)
    with Receiver() as receiver:
        ids = {drive("webhook", input=edit_args(url), webhook_url=receiver.url)["request_id"] for _ in range(2)}
        got = _accepted(receiver, 2)
    assert sorted(d.body["request_id"] for d in got) == sorted(ids)
    for delivery in got:
        assert WEBHOOK_HEADERS <= delivery.headers.keys()
        assert delivery.headers["x-fal-webhook-request-id"] == delivery.body["request_id"]
        assert delivery.body["status"] == "OK" and delivery.body["gateway_request_id"] == delivery.body["request_id"]
        assert delivery.body["payload"]["video"]["url"].startswith(sim.url + "/files/")
    assert len(sim.ledger()) == 2


def test_webhook_error_payload_and_retries(make_sim: SimFactory, media):
    """A model error is delivered as status ERROR with the error body; a receiver answering 500 twice
    gets the same delivery again until it accepts it, then never again."""
    sim = make_sim(webhook_retry_base_s=0.05, faults=FaultConfig(reject_prompts_containing=["forbidden"]))
    drive = PythonDriver(sim.url, TEST_FAL_KEY)  # the retry policy is the simulator's, not the client's
    with Receiver(fail_first=2) as receiver:
        rid = drive("webhook", input=edit_args(clip_url(media), "a forbidden scene"), webhook_url=receiver.url)[
            "request_id"
        ]
        got = _accepted(receiver, 1)
        attempts = len(receiver.deliveries)
    assert attempts == 3 and len(got) == 1
    body = got[0].body
    assert body["request_id"] == rid and body["status"] == "ERROR"
    assert body["error"] == "Invalid status code: 422" and body["payload"]["detail"]
