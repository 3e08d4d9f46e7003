"""Input validation as the provider does it, reported in fal's 422 shape:
`{"detail": [{"loc": ["body", field, ...], "msg": ..., "type": ...}]}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from klingflow.endpoint import (
    MAX_DURATION_S,
    MAX_SIDE_PX,
    MIN_DURATION_S,
    MIN_SIDE_PX,
    EditInput,
    dangling_reference_errors,
    duration_in_limits,
    reference_count_error,
    size_in_limits,
)
from klingflow.media.probe import VideoProbe


class FieldError(BaseModel):
    """One item of a 422 `detail` list."""

    loc: list[str | int]
    msg: str
    type: str


def parse_input(payload: Any) -> tuple[EditInput | None, list[FieldError]]:
    """The typed input, or the schema errors (missing prompt, wrong types, unknown fields)."""
    try:
        return EditInput.model_validate(payload), []
    except ValidationError as exc:
        return None, [
            FieldError(loc=["body", *e["loc"]], msg=e["msg"], type=e["type"]) for e in exc.errors(include_url=False)
        ]


def reference_errors(edit: EditInput) -> list[FieldError]:
    """Too many references, or @ImageN/@ElementN/@Video1 in the prompt that point at nothing."""
    n_images, n_elements = len(edit.image_urls), len(edit.elements)
    errors = []
    if count := reference_count_error(n_images, n_elements):
        errors.append(FieldError(loc=["body", "image_urls"], msg=count, type="too_many_references"))
    for reason in dangling_reference_errors(edit.prompt, has_video=True, n_images=n_images, n_elements=n_elements):
        errors.append(FieldError(loc=["body", "prompt"], msg=reason, type="invalid_prompt_reference"))
    return errors


def video_errors(probe: VideoProbe) -> list[FieldError]:
    """Container, duration and displayed-size limits of the input video (fetch enforces the byte limit)."""
    loc: list[str | int] = ["body", "video_url"]
    errors = []
    if not probe.is_mp4_family:
        errors.append(
            FieldError(
                loc=loc,
                msg=f"Only .mp4/.mov videos are supported, got {probe.container}",
                type="unsupported_video_format",
            )
        )
    if not duration_in_limits(probe.duration_s):
        short = probe.duration_s < MIN_DURATION_S
        errors.append(
            FieldError(
                loc=loc,
                msg=f"Video duration must be {MIN_DURATION_S:g}-{MAX_DURATION_S:g} seconds, "
                f"got {probe.duration_s:.2f} s",
                type="video_duration_too_short" if short else "video_duration_too_long",
            )
        )
    if not size_in_limits(probe.width, probe.height):
        low = min(probe.width, probe.height) < MIN_SIDE_PX
        errors.append(
            FieldError(
                loc=loc,
                msg=f"Video width and height must be {MIN_SIDE_PX}-{MAX_SIDE_PX} px, got {probe.width}x{probe.height}",
                type="video_resolution_too_low" if low else "video_resolution_too_high",
            )
        )
    return errors
