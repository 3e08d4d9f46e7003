"""Colour test helpers: an SMPTE-like bar chart written in a given colour description, decoded back as the
BT.709 limited range the output promises, and compared with CIEDE2000 (numpy, no colour library).

The source clips are made with ffmpeg's `scale` (RGB -> BT.709 YUV) and `colorspace` filters (BT.709 ->
the source's primaries, transfer, matrix and range): an implementation independent of the zscale (zimg)
that preprocessing converts with. The decode is done here, from the planes, with BT.709's own equations.
"""

from __future__ import annotations

import itertools
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from klingflow.media.ffmpeg import ffmpeg_exe

WIDTH, HEIGHT, COLS, ROWS = 1280, 720, 9, 3


def _bars() -> np.ndarray:
    """27 patches (BT.709 R'G'B', 8-bit): 7 colours at 100 %, 75 % and 40 %, and 6 greys."""
    colours = [(1, 1, 1), (1, 1, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1), (1, 0, 0), (0, 0, 1)]
    patches = [tuple(round(level * c) for c in rgb) for level in (255, 191, 102) for rgb in colours]
    patches += [(g, g, g) for g in (0, 26, 64, 128, 166, 230)]
    return np.array(patches, np.uint8)


BARS = _bars()


def bar_chart() -> np.ndarray:
    """The chart as an RGB image: patches row by row, 9 per row."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pw, ph = WIDTH // COLS, HEIGHT // ROWS
    for i, rgb in enumerate(BARS):
        r, c = divmod(i, COLS)
        img[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = rgb
    return img


def patch_means(rgb: np.ndarray) -> np.ndarray:
    """Mean R'G'B' of the inner half of each patch (edges and chroma siting left out), scaled to any size."""
    h, w = rgb.shape[:2]
    pw, ph = w / COLS, h / ROWS
    out = []
    for i in range(len(BARS)):
        r, c = divmod(i, COLS)
        y0, x0 = int((r + 0.25) * ph), int((c + 0.25) * pw)
        out.append(rgb[y0 : int(y0 + ph / 2), x0 : int(x0 + pw / 2)].reshape(-1, 3).mean(axis=0))
    return np.array(out)


def make_bars(
    path: Path,
    *,
    space: str | None,
    range_: str = "tv",
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    size: tuple[int, int] = (WIDTH, HEIGHT),
    tag: bool = True,
    seconds: float = 3.0,
    extra: list[str] | None = None,
) -> Path:
    """Write the bar chart as a clip whose samples are in `space` (a `colorspace` filter `all=` value, e.g.
    bt2020, bt601-6-625, smpte170m, smpte240m) and `range_`, tagged accordingly (unless `tag` is False).

    `space=None` writes an RGB/palette source (GIF, PNG): the chart's R'G'B' as they are.
    """
    w, h = size
    raw = path.with_name(path.name + ".rgb")
    raw.write_bytes(bar_chart().tobytes())
    args = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "-1", "-f", "rawvideo"]
    args += ["-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", "24", "-t", f"{seconds:g}", "-i", str(raw)]
    if space is None:
        vf = f"scale={w}:{h}:flags=neighbor"
        if codec == "gif":
            vf += ",split[a][b];[a]palettegen=max_colors=64[p];[b][p]paletteuse=dither=none"
    else:
        bit = "10" if "10" in pix_fmt else ""
        fmt = f"yuv420p{bit}" if pix_fmt.startswith("yuvj") or "420" in pix_fmt else pix_fmt
        vf = (
            f"scale={w}:{h}:flags=neighbor:out_color_matrix=bt709:out_range=tv,"
            "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,"
            f"colorspace=all={space}:range={range_}:format={fmt}"
        )
        if pix_fmt.startswith("yuvj"):
            vf += ",setparams=range=pc"
    args += ["-vf", vf, "-c:v", codec]
    if space is not None:
        args += ["-pix_fmt", pix_fmt]
    if tag and space is not None:
        prim, trc, mat = _tags(space)
        args += ["-color_primaries", prim, "-color_trc", trc, "-colorspace", mat, "-color_range", range_]
    if codec == "libx264":
        args += ["-preset", "ultrafast", "-qp", "0"] if pix_fmt == "yuv420p" else ["-preset", "ultrafast"]
    elif codec == "libx265":
        args += ["-preset", "ultrafast", "-x265-params", "log-level=error:lossless=1"]
    elif codec == "mjpeg":
        args += ["-q:v", "2"]
    args += [*(extra or []), str(path)]
    subprocess.run(args, check=True)
    raw.unlink()
    return path


def _tags(space: str) -> tuple[str, str, str]:
    return {
        "bt709": ("bt709", "bt709", "bt709"),
        "bt2020": ("bt2020", "bt2020-10", "bt2020nc"),
        "bt601-6-625": ("bt470bg", "smpte170m", "bt470bg"),
        "bt601-6-525": ("smpte170m", "smpte170m", "smpte170m"),
        "smpte170m": ("smpte170m", "smpte170m", "smpte170m"),
        "smpte240m": ("smpte240m", "smpte240m", "smpte240m"),
    }[space]


def decode_bt709(path: str | Path, index: int = 0) -> np.ndarray:
    """Frame `index` decoded from its yuv420p planes as BT.709 limited range -> R'G'B' floats in 0..255."""
    with av.open(str(path)) as container:
        frame = next(itertools.islice(container.decode(video=0), index, None))
        assert frame.format.name in ("yuv420p", "yuvj420p"), frame.format.name  # read as limited either way
        planes = frame.to_ndarray()  # yuv420p: Y rows, then U and V quarter planes packed below
    h, w = frame.height, frame.width
    y = planes[:h].astype(np.float64)
    u = planes[h : h + h // 4].reshape(h // 2, w // 2).repeat(2, 0).repeat(2, 1).astype(np.float64)
    v = planes[h + h // 4 :].reshape(h // 2, w // 2).repeat(2, 0).repeat(2, 1).astype(np.float64)
    yn, cb, cr = (y - 16) / 219, (u - 128) / 224, (v - 128) / 224
    r = yn + 1.5748 * cr
    b = yn + 1.8556 * cb
    g = (yn - 0.2126 * r - 0.0722 * b) / 0.7152
    return np.stack([r, g, b], axis=-1) * 255


def _lab(rgb255: np.ndarray) -> np.ndarray:
    """BT.709 R'G'B' (0..255, BT.1886 display gamma 2.4) -> CIELAB (D65)."""
    lin = np.clip(rgb255 / 255, 0, None) ** 2.4
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e2000(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """CIEDE2000 between two arrays of BT.709 R'G'B' colours."""
    return de2000_lab(_lab(np.asarray(rgb_a, float)), _lab(np.asarray(rgb_b, float)))


def de2000_lab(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 between CIELAB colours (Sharma, Wu & Dalal 2005)."""
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dlp, dcp = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    lbp, cbp = (l1 + l2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hbp = np.where(np.abs(h1p - h2p) > 180, np.where(hsum < 360, hsum + 360, hsum - 360), hsum) / 2
    hbp = np.where(c1p * c2p == 0, hsum, hbp)
    t = (
        1
        - 0.17 * np.cos(np.radians(hbp - 30))
        + 0.24 * np.cos(np.radians(2 * hbp))
        + 0.32 * np.cos(np.radians(3 * hbp + 6))
        - 0.20 * np.cos(np.radians(4 * hbp - 63))
    )
    sl = 1 + 0.015 * (lbp - 50) ** 2 / np.sqrt(20 + (lbp - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    rt = -2 * np.sqrt(cbp**7 / (cbp**7 + 25.0**7)) * np.sin(np.radians(60 * np.exp(-(((hbp - 275) / 25) ** 2))))
    return np.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhp / sh) ** 2 + rt * (dcp / sc) * (dhp / sh))


def bar_errors(path: str | Path) -> np.ndarray:
    """ΔE2000 of each bar of a clip decoded as BT.709 limited, against the chart."""
    return delta_e2000(patch_means(decode_bt709(path)), BARS.astype(float))


# --- HDR ramps ---------------------------------------------------------------------------------

M1, M2, C1, C2, C3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32


def pq_signal(nits: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 inverse EOTF: cd/m² -> signal 0..1."""
    y = (np.asarray(nits, float) / 10000) ** M1
    return ((C1 + C2 * y) / (1 + C3 * y)) ** M2


def hlg_signal(nits: np.ndarray) -> np.ndarray:
    """BT.2100 HLG for a 1000 cd/m² display: inverse OOTF (gamma 1.2) then the OETF."""
    e = (np.asarray(nits, float) / 1000) ** (1 / 1.2)
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return np.where(e <= 1 / 12, np.sqrt(3 * np.clip(e, 0, None)), a * np.log(np.clip(12 * e - b, 1e-9, None)) + c)


def make_ramp(path: Path, nits: np.ndarray, signal: np.ndarray, trc: int) -> Path:
    """A grey ramp, left to right, 1280x720 10-bit HEVC tagged BT.2020 + `trc`, no light-level metadata."""
    w, h = 1280, 720
    y_row = np.round(64 + 876 * signal).astype(np.uint16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=24, options={"preset": "ultrafast", "x265-params": "log-level=error"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p10le"
        ctx = stream.codec_context
        ctx.color_trc, ctx.color_primaries, ctx.colorspace = trc, 9, 9
        planes = np.empty((h * 3 // 2, w), np.uint16)
        planes[:h] = np.repeat(y_row[None, :], h, axis=0)
        planes[h:] = 512
        for i in range(72):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p10le")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            frame.color_trc, frame.color_primaries, frame.colorspace = trc, 9, 9
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert len(nits) == w
    return path
