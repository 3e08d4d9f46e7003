"""Provider-side validation: accepted, processed, COMPLETED with an error, result 422, billed only at
FaultConfig.invalid_billed_rate."""

from __future__ import annotations

from typing import Any

import fal_client
import httpx
import pytest

from klingflow.endpoint import ENDPOINT_ID, billable_seconds, cost_usd
from klingflow.media.probe import probe_video
from klingflow.simulator import FaultConfig, Simulator
from tests.conftest import TEST_FAL_KEY
from tests.simulator.conftest import edit_args


def _rejection(client: fal_client.SyncClient, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit through fal_client and return the 422 detail list."""
    handle = client.submit(ENDPOINT_ID, args)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 422
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error
    return err.value.message if isinstance(err.value.message, list) else err.value.response.json()["detail"]


def _types(detail: list[dict[str, Any]]) -> set[str]:
    return {d["type"] for d in detail}


@pytest.mark.parametrize(
    ("name", "clip", "expected"),
    [
        (
            "mkv",
            {"seconds": 3, "width": 720, "height": 720, "container_format": "matroska"},
            "unsupported_video_format",
        ),
        ("short.mp4", {"seconds": 2, "width": 720, "height": 720}, "video_duration_too_short"),
        ("long.mp4", {"seconds": 11, "width": 720, "height": 720, "fps": 24}, "video_duration_too_long"),
        ("small.mp4", {"seconds": 3, "width": 640, "height": 480}, "video_resolution_too_low"),
        (
            "4k.mp4",
            {"seconds": 3, "width": 3840, "height": 2160, "fps": 4, "audio": False},
            "video_resolution_too_high",
        ),
    ],
)
def test_video_limits_are_422(sim: Simulator, client, media, name: str, clip: dict[str, Any], expected: str):
    """Wrong container, 2 s, 11 s, 640x480 and 3840x2160 inputs complete with a 422 on video_url."""
    url = client.upload_file(media.extra(name if "." in name else f"clip.{name}", **clip))
    detail = _rejection(client, edit_args(url))
    assert expected in _types(detail)
    assert all(d["loc"] == ["body", "video_url"] for d in detail)
    assert sim.ledger() == []


def test_unbilled_422_has_no_billable_units(sim: Simulator, client, media):
    """By default a 422 writes no ledger line and its result carries no x-fal-billable-units header."""
    handle = client.submit(ENDPOINT_ID, {"video_url": client.upload_file(media.silent)})
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 422 and "x-fal-billable-units" not in err.value.response.headers
    assert sim.ledger() == [] and sim.counters()["billed"] == 0


def test_invalid_input_billed_at_rate(make_sim, client, media):
    """At invalid_billed_rate=1 a 422 is billed: the probed input's seconds (3 if never probed), with the header."""
    sim = make_sim(faults=FaultConfig(invalid_billed_rate=1.0))
    long_clip = media.extra("long.mp4", seconds=11, width=720, height=720, fps=24)
    probed = client.submit(ENDPOINT_ID, edit_args(client.upload_file(long_clip)))
    unprobed = client.submit(ENDPOINT_ID, {"prompt": "no video at all"})
    expected = {probed.request_id: billable_seconds(probe_video(long_clip).duration_s), unprobed.request_id: 3}
    for handle in (probed, unprobed):
        with pytest.raises(fal_client.FalClientHTTPError) as err:
            handle.get()
        assert err.value.status_code == 422
        assert err.value.response.headers["x-fal-billable-units"] == str(expected[handle.request_id])
    entries = {e.request_id: e for e in sim.ledger()}
    assert {rid: e.billed_seconds for rid, e in entries.items()} == expected and expected[probed.request_id] == 11
    assert all(e.cost_usd == cost_usd(e.billed_seconds) for e in entries.values())
    raw = httpx.get(probed.response_url, headers={"Authorization": f"Key {TEST_FAL_KEY}"})
    assert raw.status_code == 422 and raw.headers["x-fal-billable-units"] == "11"
    counters = sim.counters()
    assert counters["billed"] == 2 and counters["faults"]["job.invalid_billed"] == 2


def test_too_many_references(sim: Simulator, client, media):
    """More than 4 images + elements is rejected on image_urls."""
    video, image = client.upload_file(media.silent), client.upload_file(media.image)
    detail = _rejection(client, edit_args(video, image_urls=[image] * 3, elements=[{"frontal_image_url": image}] * 2))
    assert "too_many_references" in _types(detail)


def test_dangling_image_reference(sim: Simulator, client, media):
    """@Image2 with one image given is rejected on prompt."""
    video, image = client.upload_file(media.silent), client.upload_file(media.image)
    detail = _rejection(client, edit_args(video, prompt="Style like @Image2", image_urls=[image]))
    assert detail[0]["loc"] == ["body", "prompt"] and detail[0]["type"] == "invalid_prompt_reference"


def test_missing_prompt_and_wrong_type(sim: Simulator, client, media):
    """A missing prompt and a non-boolean keep_audio are pydantic-style 422 errors."""
    video = client.upload_file(media.silent)
    detail = _rejection(client, {"video_url": video, "keep_audio": "maybe"})
    locs = {tuple(d["loc"]) for d in detail}
    assert ("body", "prompt") in locs and ("body", "keep_audio") in locs
    assert "missing" in _types(detail)


def test_unfetchable_image_and_video(sim: Simulator, client, media):
    """Input URLs that cannot be fetched are 422 file_download_error."""
    video = client.upload_file(media.silent)
    detail = _rejection(client, edit_args(video, image_urls=[f"{sim.url}/nope/missing.png"]))
    assert detail[0]["loc"] == ["body", "image_urls", 0] and detail[0]["type"] == "file_download_error"
    detail = _rejection(client, edit_args(f"{sim.url}/files/AAAAAAAAAAAA/missing.mp4"))
    assert detail[0]["type"] == "file_download_error"


def test_valid_references_are_accepted(sim: Simulator, client, media):
    """@Video1, @Image1 and @Element1 all pointing at given inputs produce a billed video."""
    video, image = client.upload_file(media.silent), client.upload_file(media.image)
    args = edit_args(
        video,
        prompt="Make @Video1 look like @Image1 with @Element1",
        image_urls=[image],
        elements=[{"frontal_image_url": image, "reference_image_urls": [image]}],
    )
    assert "video" in client.subscribe(ENDPOINT_ID, args)
    assert len(sim.ledger()) == 1
