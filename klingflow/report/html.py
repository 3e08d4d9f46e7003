"""A self-contained HTML report (one file, works offline) for one run or a chosen set of runs.

Before/after thumbnails are decoded with PyAV from the uploaded input and the downloaded output at the
same moments and embedded as JPEG data URIs; charts are inline SVG built here (no JS, no CDN). Anything
that cannot be shown (missing file, remote URL, undecodable video) becomes a placeholder with the reason:
the report is written after money was spent, so it must never crash on one bad file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import av
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from PIL import Image

from klingflow.report.reconcile import ReconciliationView
from klingflow.report.summary import (
    DURATION_COLUMNS,
    FAILED_STATUSES,
    Summary,
    format_usd,
    manifest_label,
    number,
    run_label,
    summarize,
)
from klingflow.report.writer import atomic_path

FRACTIONS = (0.25, 0.5, 0.75)
THUMB_WIDTH = 240
MAX_DECODED_FRAMES = 600  # per seek: bounds the work on a file with sparse keyframes
STATUS_COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#8e24aa",
    "skipped_budget": "#ef6c00",
    "dry_run": "#546e7a",
    "pending": "#9e9e9e",
}


@dataclass(frozen=True)
class Thumb:
    """A decoded frame as a data URI, or the reason there is none."""

    uri: str | None
    note: str = ""


@dataclass(frozen=True)
class ThumbPair:
    """Input and output frames at the same moment (seconds from the start)."""

    at_s: float
    fraction: float
    before: Thumb
    after: Thumb


# ---------------------------------------------------------------- thumbnails


def local_file(path: Any) -> Path | None:
    """A local path if `path` names one (not a URL, not empty)."""
    if not isinstance(path, str) or not path:
        return None
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # http(s), s3 ... (a one-letter scheme is a Windows drive)
        return None
    return Path(path)


def _to_jpeg_uri(image: Image.Image, width: int) -> str:
    image = image.convert("RGB")
    height = max(1, round(image.height * width / image.width))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=72, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _frame_at(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, at_s: float
) -> Image.Image | None:
    """The first frame shown at or after `at_s` (seek to the keyframe before, decode forward)."""
    container.seek(max(0, int(at_s / stream.time_base)), stream=stream, backward=True)
    last = None
    for count, frame in enumerate(container.decode(stream)):
        last = frame
        if frame.time is None or frame.time + 1e-3 >= at_s or count >= MAX_DECODED_FRAMES:
            break
    if last is None:
        return None
    image = last.to_image()
    rotation = int(getattr(last, "rotation", 0) or 0)
    return image.rotate(rotation, expand=True) if rotation % 360 else image


def decode_frames(path: Path, times: list[float], width: int = THUMB_WIDTH) -> list[Thumb]:
    """JPEG data URIs of the frames of `path` at `times`; placeholders (with why) on any failure."""
    if not path.is_file():
        return [Thumb(None, "file missing")] * len(times)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return [Thumb(None, "no video stream")] * len(times)
            stream = container.streams.video[0]
            thumbs = []
            for at_s in times:
                image = _frame_at(container, stream, at_s)
                thumbs.append(Thumb(_to_jpeg_uri(image, width)) if image else Thumb(None, "no frame"))
            return thumbs
    except (av.FFmpegError, OSError, ValueError, ZeroDivisionError) as exc:
        return [Thumb(None, f"not decodable ({type(exc).__name__})")] * len(times)


def _duration(path: Path | None) -> float | None:
    if path is None or not path.is_file():
        return None
    try:
        with av.open(str(path)) as container:
            return container.duration / av.time_base if container.duration else None
    except (av.FFmpegError, OSError, ValueError):
        return None


class ThumbnailMaker:
    """Before/after frame pairs for report rows, optionally cached under report_dir/_html/thumbs.

    The cache is keyed by file identity (sha256 from the report, else path+size+mtime) and moment, so a
    later cross-run report still shows frames after the outputs were cleaned up.
    """

    def __init__(self, cache_dir: Path | None = None, width: int = THUMB_WIDTH) -> None:
        self.cache_dir = cache_dir
        self.width = width

    def pairs(self, row: dict[str, Any]) -> list[ThumbPair]:
        """Frames of the input (as uploaded; else the original) and the output at 25/50/75 %."""
        before = local_file(row.get("input_path")) or local_file(row.get("source_path"))
        after = local_file(row.get("output_path"))
        d_in = number(row.get("input_duration_s")) or number(row.get("source_duration_s")) or _duration(before)
        d_out = number(row.get("output_duration_s")) or _duration(after)
        known = [d for d in (d_in, d_out) if d]
        span = min(known) if known else None
        if span is None:
            note = "no duration" if before or after else "no local file"
            return [ThumbPair(0.0, f, Thumb(None, note), Thumb(None, note)) for f in FRACTIONS]
        times = [round(span * f, 3) for f in FRACTIONS]
        befores = self._frames(before, row.get("input_sha256") or row.get("source_sha256"), times, "input")
        afters = self._frames(after, row.get("output_sha256"), times, "output")
        return [ThumbPair(t, f, b, a) for t, f, b, a in zip(times, FRACTIONS, befores, afters, strict=True)]

    def _frames(self, path: Path | None, sha: Any, times: list[float], what: str) -> list[Thumb]:
        if path is None:
            return [Thumb(None, f"no local {what}")] * len(times)
        key = self._key(path, sha, times)
        cached = self._load(key, len(times))
        if cached:
            return cached
        thumbs = decode_frames(path, times, self.width)
        self._store(key, thumbs)
        return thumbs

    def _key(self, path: Path, sha: Any, times: list[float]) -> str | None:
        if self.cache_dir is None:
            return None
        if isinstance(sha, str) and sha:
            identity = sha
        elif path.is_file():
            st = path.stat()
            identity = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        else:
            return None
        return hashlib.sha256(f"{identity}|{times}|{self.width}".encode()).hexdigest()[:32]

    def _load(self, key: str | None, n: int) -> list[Thumb] | None:
        if key is None or self.cache_dir is None:
            return None
        files = [self.cache_dir / f"{key}-{i}.jpg" for i in range(n)]
        if not all(f.is_file() for f in files):
            return None
        return [Thumb("data:image/jpeg;base64," + base64.b64encode(f.read_bytes()).decode("ascii")) for f in files]

    def _store(self, key: str | None, thumbs: list[Thumb]) -> None:
        if key is None or self.cache_dir is None or not all(t.uri for t in thumbs):
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for i, thumb in enumerate(thumbs):
                data = base64.b64decode(thumb.uri.split(",", 1)[1])
                with atomic_path(self.cache_dir / f"{key}-{i}.jpg") as tmp:
                    tmp.write_bytes(data)
        except OSError:
            pass  # a cache that cannot be written only costs a re-decode next time


# ---------------------------------------------------------------- SVG charts


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="11">'
        f"<title>{escape(title)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - every interpolated text is escaped above


def _nice_max(value: float) -> float:
    """A round axis maximum ≥ value (1, 2, 2.5, 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= value)


def cost_chart(rows: list[dict[str, Any]], *, limit: int = 40) -> Markup:
    """Horizontal bars: billed cost per job (colour = status), a black tick at the estimated cost."""
    truncated = len(rows) > limit
    if truncated:
        rows = sorted(rows, key=lambda r: -(number(r.get("cost_usd")) or 0))[:limit]
    label_w, bar_w, row_h, top = 280, 440, 18, 24
    height = top + row_h * max(1, len(rows)) + 24
    peak = _nice_max(
        max(
            [number(r.get("cost_usd")) or 0 for r in rows]
            + [number(r.get("estimated_cost_usd")) or 0 for r in rows]
            + [0.0]
        )
    )
    suffix = f" (top {limit} by cost)" if truncated else ""
    body = [f'<text x="0" y="14" font-weight="600">Cost per job (USD){suffix}</text>']
    for i in range(5):
        x = label_w + bar_w * i / 4
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 20}" stroke="#e0e0e0"/>'
            f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#555">${peak * i / 4:.2f}</text>'
        )
    for i, r in enumerate(rows):
        y = top + i * row_h
        cost, est = number(r.get("cost_usd")), number(r.get("estimated_cost_usd"))
        colour = STATUS_COLORS.get(str(r.get("status")), "#9e9e9e")
        full = escape(str(r.get("label", r.get("job_id"))))
        label = escape(_fit(str(r.get("label", r.get("job_id"))), 44))
        body.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end"><title>{full}</title>{label}</text>')
        width = bar_w * (cost or 0) / peak
        body.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" fill="{colour}">'
            f"<title>{full}: {_usd(cost)} billed, {_usd(est)} estimated</title></rect>"
        )
        if est is not None:
            ex = label_w + bar_w * est / peak
            body.append(
                f'<line x1="{ex:.1f}" y1="{y + 1}" x2="{ex:.1f}" y2="{y + row_h - 1}" stroke="#111" stroke-width="2"/>'
            )
        body.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 12}" fill="#333">{_usd(cost)}</text>')
    return _svg(label_w + bar_w + 70, height, "Cost per job", body)


def _fit(text: str, chars: int) -> str:
    """`text` cut to `chars` with an ellipsis in the middle, so both the job id and the run stay readable."""
    if len(text) <= chars:
        return text
    head = chars * 2 // 3
    return text[:head] + "…" + text[-(chars - head - 1) :]


def job_label(row: dict[str, Any], *, multi_run: bool) -> str:
    """A cost bar's label: the job id, and in a multi-run report the run's name or short id after it."""
    job = str(row.get("job_id"))
    return f"{job} · {run_label(row, id_chars=8)}" if multi_run else job


def histogram(values: list[float], title: str, *, bins: int = 12) -> Markup:
    """A histogram of seconds with p50 (dashed) and p95 (dotted) markers."""
    w, h, left, bottom, top = 300, 170, 30, 28, 22
    body = [f'<text x="0" y="14" font-weight="600">{escape(title)}</text>']
    if not values:
        body.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle" fill="#777">no data</text>')
        return _svg(w, h, title, body)
    series = pd.Series(values, dtype=float)
    hi = _nice_max(float(series.max()))
    counts = (
        pd.cut(series, bins=[hi * i / bins for i in range(bins + 1)], include_lowest=True)
        .value_counts(sort=False)
        .tolist()
    )
    peak = max(counts) or 1
    plot_w, plot_h = w - left - 20, h - top - bottom
    for i, count in enumerate(counts):
        bh = plot_h * count / peak
        x = left + plot_w * i / bins
        body.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - bh:.1f}" width="{plot_w / bins - 2:.1f}" '
            f'height="{bh:.1f}" fill="#1565c0"><title>{count} job(s)</title></rect>'
        )
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#555"/>')
    for i in range(0, 5):
        x = left + plot_w * i / 4
        body.append(f'<text x="{x:.1f}" y="{h - 12}" text-anchor="middle" fill="#555">{hi * i / 4:g}s</text>')
    body.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{h - 1}" text-anchor="middle" fill="#777">'
        f"seconds · {len(values)} job(s)</text>"
    )
    body.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" fill="#555">{peak}</text>')
    legend = []
    for q, dash in ((0.5, "6,3"), (0.95, "2,2")):
        value = float(series.quantile(q))
        x = left + plot_w * value / hi
        body.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#c62828" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
        )
        legend.append(f"p{round(q * 100)} {value:.1f}s")
    body.append(f'<text x="{w - 8}" y="14" text-anchor="end" fill="#c62828">{" · ".join(legend)}</text>')
    return _svg(w, h, title, body)


def run_spend_chart(by_run: list[dict[str, Any]]) -> Markup:
    """Vertical bars of spend per run, in start order (only drawn for more than one run)."""
    w, h, left, bottom, top = 640, 190, 50, 36, 22
    body = ['<text x="0" y="14" font-weight="600">Spend per run (USD)</text>']
    runs = by_run[-30:]
    peak = _nice_max(max([r["cost_usd"] for r in runs] + [0.0]))
    plot_w, plot_h = w - left - 10, h - top - bottom
    step = plot_w / max(1, len(runs))
    fit = max(6, int(step / 6.5))  # characters of an 11 px label that fit under one bar
    for i in range(5):
        y = top + plot_h * (1 - i / 4)
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">${peak * i / 4:.2f}</text>'
        )
    for i, r in enumerate(runs):
        bh = plot_h * r["cost_usd"] / peak
        x = left + i * step
        name = run_label(r, id_chars=8)
        body.append(
            f'<rect x="{x + step * 0.15:.1f}" y="{top + plot_h - bh:.1f}" width="{step * 0.7:.1f}" '
            f'height="{bh:.1f}" fill="#00838f"><title>{escape(name)}: {_usd(r["cost_usd"])}</title></rect>'
            f'<text x="{x + step / 2:.1f}" y="{h - 20}" text-anchor="middle" fill="#333">'
            f"{escape(_fit(name, fit))}</text>"
        )
    return _svg(w, h, "Spend per run", body)


# ---------------------------------------------------------------- HTML


def _usd(value: Any, digits: int = 3) -> str:
    """Per-job amounts to a tenth of a cent by default; the template asks for 2 digits on totals."""
    return format_usd(value, digits)


def _when(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM UTC'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")


def _secs(value: Any) -> str:
    seconds = number(value)
    return "—" if seconds is None else f"{seconds:,.1f}s"


def _pct(value: Any) -> str:
    fraction = number(value)
    return "—" if fraction is None else f"{fraction:.0%}"


def safe_href(url: Any) -> str | None:
    """`url` if it is an http(s) or file URL (never javascript: or data:)."""
    if not isinstance(url, str) or not url:
        return None
    return url if urlparse(url).scheme in ("http", "https", "file") else None


def file_uri(path: Any) -> str | None:
    """A file:// URI for a local path (absolute, so the link works from the report's folder)."""
    local = local_file(path)
    return local.absolute().as_uri() if local is not None else None


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("klingflow.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters.update(usd=_usd, secs=_secs, pct=_pct, when=_when, manifest=manifest_label, run_label=run_label)
    return env


def _job_view(row: dict[str, Any], maker: ThumbnailMaker | None) -> dict[str, Any]:
    status = str(row.get("status"))
    return {
        **row,
        "status_colour": STATUS_COLORS.get(status, "#9e9e9e"),
        "is_failure": status in FAILED_STATUSES,
        "pairs": maker.pairs(row) if maker else [],
        "output_file_uri": file_uri(row.get("output_path")),
        "output_href": safe_href(row.get("output_url")),
        "actions": ", ".join(row.get("preprocess_actions") or []),
    }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NaN/NaT → None (templates test for None)."""
    records = df.astype(object).where(df.notna(), None).to_dict("records")
    for rec in records:
        actions = rec.get("preprocess_actions")
        rec["preprocess_actions"] = list(actions) if actions is not None else []
    return records


def render_html(
    df: pd.DataFrame,
    *,
    title: str,
    thumbnails: bool = True,
    thumb_cache_dir: Path | None = None,
    max_thumb_jobs: int = 300,
    summary: Summary | None = None,
    reconciliation: ReconciliationView | None = None,
) -> str:
    """The report page for the rows in `df` (one run or many) as one HTML string."""
    summary = summary or summarize(df)
    records = _records(df.sort_values(["run_started_at", "run_id", "row"]) if len(df) else df)
    maker = ThumbnailMaker(thumb_cache_dir) if thumbnails else None
    multi_run = summary.totals.runs > 1
    jobs = [_job_view(r, maker if i < max_thumb_jobs else None) for i, r in enumerate(records)]
    chart_rows = [{**r, "label": job_label(r, multi_run=multi_run)} for r in records]
    charts = {
        "cost": cost_chart(chart_rows),
        "hists": [
            histogram([v for v in (number(r.get(c)) for r in records) if v is not None], c) for c in DURATION_COLUMNS
        ],
        "runs": run_spend_chart(summary.by_run) if multi_run else None,
    }
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            summary=summary,
            totals=summary.totals,
            jobs=jobs,
            charts=charts,
            multi_run=multi_run,
            thumbnails=thumbnails,
            max_thumb_jobs=max_thumb_jobs,
            reconciliation=reconciliation,
        )
    )


def write_html(df: pd.DataFrame, out_path: Path, *, title: str, **kwargs: Any) -> Path:
    """Render and write the report atomically to `out_path` (its folder is created)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    html = render_html(df, title=title, **kwargs)
    with atomic_path(out_path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out_path
