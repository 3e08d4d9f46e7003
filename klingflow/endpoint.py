"""Everything klingflow knows about the Kling O3 Pro video-to-video edit endpoint, in one place.

Preprocessing, the fal simulator and the cost math all import these constants and models, so a
change of limits or price is a one-line change here. Source: ../shared/reference/endpoint.md.
Values the provider does not state (image limits, billing rounding) are marked as assumptions.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict, Field

ENDPOINT_ID = "fal-ai/kling-video/o3/pro/video-to-video/edit"

# Price: "$0.336 for every second of video you generated". The list price: a run reads the account's
# own price from fal's pricing API (klingflow.fal.pricing) and uses this only when that cannot be read.
PRICE_PER_SECOND_USD = Decimal("0.336")
PRICE_UNIT = "second"  # the billing unit of fal's pricing API and of X-Fal-Billable-Units for this endpoint

# Video input limits: ".mp4/.mov formats, 3-10s duration, 720-2160px resolution, max 200MB".
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov"})
VIDEO_CONTAINERS = frozenset({"mp4", "mov"})  # names as FFmpeg's mov/mp4 demuxer family reports them
MIN_DURATION_S = 3.0
MAX_DURATION_S = 10.0
# Tolerance for container rounding: a "10 s" clip often probes as 10.01-10.05 s (O1 docs: max 10.05 s).
DURATION_TOLERANCE_S = 0.05
MIN_SIDE_PX = 720
MAX_SIDE_PX = 2160
MAX_VIDEO_BYTES = 200 * 1000 * 1000  # "200MB", read conservatively as decimal megabytes
MIN_FPS = 24.0  # from the sibling O1 edit docs ("Min FPS 24, Max FPS 60"); assumption for O3
MAX_FPS = 60.0
FPS_TOLERANCE = 0.05  # 23.976 fps (NTSC film) counts as 24

# Reference images: "Maximum 4 total (elements + reference images) when using video".
MAX_REFERENCES = 4
# Image limits are not documented for this endpoint; these follow Kling's published image-input
# limits and are assumptions: JPEG/PNG/WEBP, at most 10 MB, each side >= 300 px, aspect 1:2.5..2.5:1.
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_IMAGE_BYTES = 10 * 1000 * 1000
MIN_IMAGE_SIDE_PX = 300
MAX_IMAGE_ASPECT = 2.5

DEFAULT_SHOT_TYPE = "customize"
SHOT_TYPES = frozenset({"customize"})  # the only value the schema documents

# fal does not document a prompt limit for this endpoint; Kling's own API takes at most 2,500 characters
# (assumption), and a longer prompt is refused here before anything is paid.
MAX_PROMPT_CHARS = 2500

PROMPT_REFERENCE = re.compile(r"@(Video|Image|Element)(\d+)")


class ElementInput(BaseModel):
    """An element (character/object) as the endpoint takes it: `KlingV3ImageElementInput`."""

    model_config = ConfigDict(extra="forbid")

    frontal_image_url: str
    reference_image_urls: list[str] = Field(default_factory=list)


class EditInput(BaseModel):
    """The endpoint's input schema."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    video_url: str
    image_urls: list[str] = Field(default_factory=list)
    keep_audio: bool = True
    elements: list[ElementInput] = Field(default_factory=list)
    shot_type: str = DEFAULT_SHOT_TYPE


class FalFile(BaseModel):
    """fal's `File` output object."""

    url: str
    content_type: str = "video/mp4"
    file_name: str
    file_size: int


class EditOutput(BaseModel):
    """The endpoint's output schema."""

    video: FalFile


def prompt_reference_errors(prompt: str, *, has_video: bool, n_images: int, n_elements: int) -> list[str]:
    """Every problem with a prompt and its references: empty or too long, too many references, dangling ones."""
    count = reference_count_error(n_images, n_elements)
    empty = [] if prompt.strip() else ["prompt is empty"]
    if len(prompt) > MAX_PROMPT_CHARS:
        empty.append(f"prompt is {len(prompt):,} characters long; at most {MAX_PROMPT_CHARS:,} are taken")
    return (
        empty
        + ([count] if count else [])
        + dangling_reference_errors(prompt, has_video=has_video, n_images=n_images, n_elements=n_elements)
    )


def reference_count_error(n_images: int, n_elements: int) -> str | None:
    """Why images + elements are too many for the endpoint, or None."""
    if n_images + n_elements <= MAX_REFERENCES:
        return None
    return (
        f"{n_images} image(s) + {n_elements} element(s) = {n_images + n_elements}; "
        f"the endpoint takes at most {MAX_REFERENCES} in total"
    )


def dangling_reference_errors(prompt: str, *, has_video: bool, n_images: int, n_elements: int) -> list[str]:
    """@Video1 / @ImageN / @ElementN in the prompt that point at nothing given."""
    available = {"Video": 1 if has_video else 0, "Image": n_images, "Element": n_elements}
    return [
        f"prompt refers to @{kind}{number} but {available[kind]} {kind.lower()}(s) are given"
        for kind, number in sorted({(m.group(1), int(m.group(2))) for m in PROMPT_REFERENCE.finditer(prompt)})
        if not 1 <= number <= available[kind]
    ]


def duration_in_limits(duration_s: float) -> bool:
    """Whether a video duration is accepted (with container-rounding tolerance)."""
    return MIN_DURATION_S - DURATION_TOLERANCE_S <= duration_s <= MAX_DURATION_S + DURATION_TOLERANCE_S


def size_in_limits(width: int, height: int) -> bool:
    """Whether both displayed sides are within the endpoint's pixel limits."""
    return MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX


def fps_in_limits(fps: float) -> bool:
    """Whether a frame rate is accepted (24..60, with 23.976 counting as 24)."""
    return MIN_FPS - FPS_TOLERANCE <= fps <= MAX_FPS + FPS_TOLERANCE


def billable_seconds(output_duration_s: float) -> int:
    """Seconds billed for an output: whole generated seconds, rounded up (assumption, conservative).

    fal does not document the rounding; Kling outputs are whole seconds in practice. A small epsilon
    keeps 5.0000001 s (container rounding) at 5.
    """
    return max(0, math.ceil(output_duration_s - 0.02))


def cost_usd(seconds: float, price_per_second: Decimal = PRICE_PER_SECOND_USD) -> Decimal:
    """Dollars for a number of billed seconds at a unit price, to a hundredth of a cent."""
    return (price_per_second * Decimal(str(seconds))).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
