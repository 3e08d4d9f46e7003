"""Credentials: Key auth on every public route, and the raw key is never persisted or exposed."""

from __future__ import annotations

from pathlib import Path

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator import Simulator
from klingflow.simulator.auth import key_id
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/{ENDPOINT_ID}"),
        ("GET", "/fal-ai/kling-video/requests/x/status"),
        ("GET", "/fal-ai/kling-video/requests/x"),
        ("PUT", "/fal-ai/kling-video/requests/x/cancel"),
        ("POST", "/storage/auth/token?storage_type=fal-cdn-v3"),
        ("POST", "/storage/upload/initiate?storage_type=gcs"),
    ],
)
def test_missing_key_is_401(sim: Simulator, method: str, path: str):
    """Without `Authorization: Key ...` fal answers 401 with a detail."""
    for headers in ({}, {"Authorization": "Key"}, {"Authorization": "Basic abc"}):
        response = httpx.request(method, sim.url + path, headers=headers, json={})
        assert response.status_code == 401 and "detail" in response.json()


def test_raw_key_is_never_stored(sim: Simulator, client: fal_client.SyncClient, media):
    """Ledger, counters, request table and admin views hold only the short key id."""
    client.subscribe(ENDPOINT_ID, edit_args(client.upload_file(media.silent)))
    secret_part = TEST_FAL_KEY.split(":")[1]
    assert sim.ledger()[0].key_id == key_id(TEST_FAL_KEY)
    stored = {p.relative_to(sim.config.state_dir): p.read_text() for p in sim.config.state_dir.rglob("*.json*")}
    assert Path("ledger.jsonl") in stored and any(p.parts[0] == "requests" for p in stored)
    texts = [str(sim.counters()), httpx.get(f"{sim.url}/_simulator/requests").text, *stored.values()]
    assert all(TEST_FAL_KEY not in t and secret_part not in t for t in texts)
