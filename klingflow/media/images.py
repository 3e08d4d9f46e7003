"""Reference images: check them against the endpoint's image limits with Pillow and normalize the
fixable ones (wrong format, too many bytes, EXIF rotation, CMYK) into JPEG/PNG in the work dir.

Too small or too elongated images are rejected rather than upscaled/cropped: that would invent or
drop what the user meant the model to see.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel

from klingflow.endpoint import IMAGE_FORMATS, MAX_IMAGE_ASPECT, MAX_IMAGE_BYTES, MIN_IMAGE_SIDE_PX
from klingflow.errors import MediaError
from klingflow.media.fetch import part_path

IMAGE_VERSION = "1"
_EXTENSIONS = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}, "WEBP": {".webp"}}
_ORIENTATION_TAG = 0x0112


class ImageProbe(BaseModel):
    """What an image is, as displayed (EXIF orientation applied)."""

    path: str
    format: str | None
    width: int
    height: int
    size_bytes: int
    mode: str
    exif_rotated: bool


def probe_image(path: str | os.PathLike[str]) -> ImageProbe:
    """Open and fully decode an image; MediaError with a plain reason when it is not a usable image."""
    p = Path(path)
    if not p.is_file():
        raise MediaError("file not found" if not p.exists() else "not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise MediaError("file is empty")
    try:
        with Image.open(p) as img:
            orientation = img.getexif().get(_ORIENTATION_TAG, 1)
            img.load()
            w, h = img.size
            fmt, mode = img.format, img.mode
    # DecompressionBombError: Pillow refuses images above ~179 Mpx; that guard is kept.
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise MediaError(f"not a readable image ({exc.__class__.__name__}: {exc})") from exc
    swapped = orientation in (5, 6, 7, 8)
    return ImageProbe(
        path=str(p),
        format=fmt,
        width=h if swapped else w,
        height=w if swapped else h,
        size_bytes=size,
        mode=mode,
        exif_rotated=orientation not in (1, None),
    )


def image_problems(probe: ImageProbe) -> list[str]:
    """Reasons an image cannot be used at all (normalization would not help)."""
    short, long = min(probe.width, probe.height), max(probe.width, probe.height)
    problems = []
    if short < MIN_IMAGE_SIDE_PX:
        problems.append(f"image is {probe.width}x{probe.height}; each side must be at least {MIN_IMAGE_SIDE_PX} px")
    if long > short * MAX_IMAGE_ASPECT:
        problems.append(f"aspect {probe.width}x{probe.height} is beyond {MAX_IMAGE_ASPECT:g}:1")
    return problems


def image_fixes(probe: ImageProbe) -> list[str]:
    """What normalization an acceptable image needs (empty: use the original)."""
    fixes = []
    if probe.format not in IMAGE_FORMATS or Path(probe.path).suffix.lower() not in _EXTENSIONS[probe.format]:
        fixes.append("image_convert")
    if probe.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        fixes.append("image_colour")
    if probe.exif_rotated:
        fixes.append("image_rotate")
    if probe.size_bytes > MAX_IMAGE_BYTES:
        fixes.append("image_downscale")
    return fixes


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, "PNG", optimize=True)
    else:
        img.convert("RGB").save(buf, "JPEG", quality=92, optimize=True)
    return buf.getvalue()


def normalize_image(probe: ImageProbe, out_dir: Path, stem: str) -> Path:
    """Write a JPEG (or PNG when there is transparency) within the byte limit; returns its path."""
    with Image.open(probe.path) as src:
        img = ImageOps.exif_transpose(src)
        has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
        img = img.convert("RGBA" if has_alpha else "RGB")
    fmt = "PNG" if has_alpha else "JPEG"
    data = _encode(img, fmt)
    while len(data) > MAX_IMAGE_BYTES:
        factor = max(0.5, (MAX_IMAGE_BYTES / len(data)) ** 0.5 * 0.9)
        size = (int(img.width * factor), int(img.height * factor))
        if min(size) < MIN_IMAGE_SIDE_PX:
            raise MediaError(f"image cannot be brought under {MAX_IMAGE_BYTES} bytes above {MIN_IMAGE_SIDE_PX} px")
        img = img.resize(size, Image.Resampling.LANCZOS)
        data = _encode(img, fmt)
    out = out_dir / f"{stem}-v{IMAGE_VERSION}{'.png' if fmt == 'PNG' else '.jpg'}"
    tmp = part_path(out)
    tmp.write_bytes(data)
    tmp.replace(out)
    return out
