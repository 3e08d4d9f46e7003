"""The preprocessing test corpus: every kind of input the stage must handle, generated with PyAV.

`corpus` is a session-scoped fixture; each clip is written on first use into one tmp dir, so a test
run pays only for the clips it touches. Clips are small (3-4 s, mostly 720p); the 4K one is 3 s.
Import it into a test module with `from tests.corpus import corpus_fixture` (registered as `corpus`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from klingflow.media.synth import make_audio_only, make_clip, make_image

HD = {"width": 1280, "height": 720}
HDR10 = {"codec": "libx265", "pix_fmt": "yuv420p10le", "color_trc": 16, "color_primaries": 9, "colorspace": 9}

# name -> (file name, make_clip keyword arguments)
CLIPS: dict[str, tuple[str, dict]] = {
    "compliant": ("compliant.mp4", {**HD, "seconds": 3.5}),
    "compliant_mov": ("compliant.mov", {**HD, "seconds": 3}),
    "no_audio": ("no_audio.mp4", {**HD, "seconds": 3, "audio": False}),
    "rotated": ("rotated.mp4", {**HD, "seconds": 3, "rotation": 90}),
    "vfr": ("vfr.mp4", {**HD, "seconds": 4, "fps": 30, "vfr": True}),
    "hevc10": ("hevc10.mp4", {**HD, "seconds": 3, "codec": "libx265", "pix_fmt": "yuv420p10le"}),
    "hdr_pq": ("hdr_pq.mp4", {**HD, "seconds": 3, **HDR10}),
    "hdr_hlg": ("hdr_hlg.mov", {**HD, "seconds": 3, **HDR10, "color_trc": 18}),
    "vp9_webm": ("vp9.webm", {**HD, "seconds": 3, "codec": "libvpx-vp9", "container_format": "webm"}),
    "h264_mkv": ("h264.mkv", {**HD, "seconds": 3, "container_format": "matroska"}),
    "prores_mov": (
        "prores.mov",
        {**HD, "seconds": 3, "codec": "prores_ks", "pix_fmt": "yuv422p10le", "audio_codec": "pcm_s16le"},
    ),
    "odd_dims": ("odd.mp4", {"width": 1279, "height": 721, "seconds": 3, "pix_fmt": "yuv444p"}),
    "yuv444": ("yuv444.mp4", {**HD, "seconds": 3, "pix_fmt": "yuv444p"}),
    "uhd": ("uhd.mp4", {"width": 3840, "height": 2160, "seconds": 3}),
    "sd480": ("sd480.mp4", {"width": 640, "height": 480, "seconds": 3}),
    "fps15": ("fps15.mp4", {**HD, "seconds": 3, "fps": 15}),
    "long14": ("long14.mp4", {**HD, "seconds": 14}),
    "long14_vp9": (
        "long14.webm",
        {"width": 640, "height": 360, "seconds": 14, "codec": "libvpx-vp9", "container_format": "webm", "audio": False},
    ),
    "short2": ("short2.mp4", {**HD, "seconds": 2}),
    "video10": ("video10.mp4", {**HD, "seconds": 10, "audio": False}),
    "ultrawide": ("ultrawide.mp4", {"width": 2400, "height": 600, "seconds": 3}),
}


def _truncated(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _faststart_truncated(path: Path, source: Path) -> None:
    """Remux with moov first (index intact), then cut: opens fine, data missing."""
    import subprocess

    from klingflow.media.ffmpeg import ffmpeg_exe

    full = path.with_name("faststart_full.mp4")
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(source), "-c", "copy", "-movflags", "+faststart"]
    subprocess.run([*cmd, str(full)], check=True)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _ffmpeg(*args: str) -> None:
    import subprocess

    from klingflow.media.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _late_start(path: Path, source: Path) -> None:
    """Stream copy shifted by 2 s: an edit list whose empty edit is a 2 s lead-in (first pts at 2.0 s)."""
    _ffmpeg("-itsoffset", "2", "-i", str(source), "-c", "copy", str(path))


def _audio_longer(path: Path, video: Path) -> None:
    """10.0 s of video with 10.3 s of AAC audio: the container is 10.3 s."""
    tone = "sine=frequency=440:sample_rate=48000:duration=10.3"
    _ffmpeg(
        "-i",
        str(video),
        "-f",
        "lavfi",
        "-i",
        tone,
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        str(path),
    )


def _corrupt_mdat(path: Path, source: Path) -> None:
    """A compliant mp4 with 4 kB of its media data overwritten: the index is intact, frames are damaged."""
    data = bytearray(source.read_bytes())
    start = data.index(b"mdat") + 4
    at = start + (len(data) - start) // 3
    data[at : at + 4096] = np.random.default_rng(25).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


class Corpus:
    """Lazily generated media files, by name (see CLIPS and the broken_* / image_* names)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._made:
            self._made[name] = self._make(name)
        return self._made[name]

    def _make(self, name: str) -> Path:
        if name in CLIPS:
            file_name, kwargs = CLIPS[name]
            return make_clip(self.root / file_name, **kwargs)
        makers: dict[str, Callable[[Path], None]] = {
            "broken_empty.mp4": lambda p: p.write_bytes(b""),
            "broken_text.mp4": lambda p: p.write_text("this is not a video\n" * 50),
            "broken_truncated.mp4": lambda p: _truncated(p, self["compliant"]),
            "broken_faststart_truncated.mp4": lambda p: _faststart_truncated(p, self["compliant"]),
            "broken_audio_only.mp4": lambda p: make_audio_only(p, seconds=3),
            "broken_corrupt_mdat.mp4": lambda p: _corrupt_mdat(p, self["compliant"]),
            "late_start.mp4": lambda p: _late_start(p, self["compliant"]),
            "audio_longer.mp4": lambda p: _audio_longer(p, self["video10"]),
            "image_jpg.jpg": lambda p: make_image(p, width=800, height=600),
            "image_png.png": lambda p: make_image(p, width=640, height=640, color="teal"),
            "image_bmp.bmp": lambda p: make_image(p, width=640, height=480),
            "image_tiny.png": lambda p: make_image(p, width=120, height=120),
            "image_wide.jpg": lambda p: make_image(p, width=1200, height=300),
            "image_text.jpg": lambda p: p.write_text("not an image"),
            "image_huge.png": _huge_png,
            "image_exif_rotated.jpg": _exif_rotated_jpeg,
        }
        path = self.root / name
        makers[name](path)
        return path


def _huge_png(path: Path) -> None:
    """Noise PNG over the 10 MB image limit (noise does not compress)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (1600, 2400, 3), dtype=np.uint8)).save(path)


def _exif_rotated_jpeg(path: Path) -> None:
    """A 900x600 JPEG whose EXIF says 'rotate 90° CW' (orientation 6): displays as 600x900."""
    from PIL import Image

    img = Image.new("RGB", (900, 600), "purple")
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif)


@pytest.fixture(scope="session", name="corpus")
def corpus_fixture(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The generated corpus, shared by the whole session."""
    root = tmp_path_factory.mktemp("corpus")
    os.chmod(root, 0o700)
    return Corpus(root)
