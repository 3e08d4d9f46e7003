"""One request's processing: fetch and validate inputs, then edit (or remux) the video, taking
about time_scale x input seconds of wall time and logging progress while it runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import httpx

from klingflow.endpoint import MAX_IMAGE_BYTES, MAX_VIDEO_BYTES, EditInput
from klingflow.errors import MediaError
from klingflow.media.probe import VideoProbe, probe_video
from klingflow.simulator.config import SimulatorConfig
from klingflow.simulator.fetch import FetchError, fetch
from klingflow.simulator.media import edit_video, remux_video
from klingflow.simulator.models import OutputFile, RequestRecord
from klingflow.simulator.outcomes import JobResult, failed, invalid, ok
from klingflow.simulator.storage import Storage
from klingflow.simulator.validate import FieldError, parse_input, reference_errors, video_errors

LogFn = Callable[..., None]  # log(message, level="INFO")


@dataclass
class JobContext:
    """What a job needs from the simulator."""

    config: SimulatorConfig
    storage: Storage
    http: httpx.AsyncClient
    executor: Executor


class _Progress:
    """Frame progress written by the worker thread, read by the log ticker (plain ints: GIL-safe)."""

    def __init__(self) -> None:
        self.done, self.total = 0, 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total


async def run_job(rec: RequestRecord, ctx: JobContext, log: LogFn, cancel: threading.Event) -> JobResult:
    """Process one request to its result (cancellation arrives as asyncio.CancelledError)."""
    log("Validating input")
    edit, errors = parse_input(rec.input)
    if edit is None:
        return invalid(errors)
    if errors := reference_errors(edit):
        return invalid(errors)
    fetched = await _fetch_video(edit, ctx)
    if isinstance(fetched, JobResult):
        return fetched
    try:
        probe = await _probe(ctx, fetched.path)
        if isinstance(probe, JobResult):
            return probe
        if errors := video_errors(probe) or await _image_errors(edit, ctx) or _policy_errors(rec):
            return invalid(errors, input_duration_s=probe.duration_s)
        return await _generate(rec, edit, probe, ctx, log, cancel)
    finally:
        fetched.discard()


def _policy_errors(rec: RequestRecord) -> list[FieldError]:
    """The model's own refusal (FaultConfig.reject_prompts_containing): a 422 after the input was read."""
    if rec.fault != "reject":
        return []
    return [
        FieldError(
            loc=["body", "prompt"], msg="The prompt was flagged by the content checker", type="content_policy_violation"
        )
    ]


async def _fetch_video(edit: EditInput, ctx: JobContext):
    try:
        return await fetch(edit.video_url, storage=ctx.storage, client=ctx.http, max_bytes=MAX_VIDEO_BYTES)
    except FetchError as exc:
        return invalid([FieldError(loc=["body", "video_url"], msg=str(exc), type=exc.kind)])


async def _probe(ctx: JobContext, path: Path) -> VideoProbe | JobResult:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(ctx.executor, probe_video, path)
    except MediaError as exc:
        return invalid(
            [FieldError(loc=["body", "video_url"], msg=f"Cannot read the video: {exc}", type="invalid_video")]
        )


async def _image_errors(edit: EditInput, ctx: JobContext) -> list[FieldError]:
    """Every reference image URL must be fetchable (each distinct URL is fetched once)."""
    urls: list[tuple[list[str | int], str]] = [(["body", "image_urls", i], u) for i, u in enumerate(edit.image_urls)]
    for i, element in enumerate(edit.elements):
        urls.append((["body", "elements", i, "frontal_image_url"], element.frontal_image_url))
        urls += [
            (["body", "elements", i, "reference_image_urls", j], u) for j, u in enumerate(element.reference_image_urls)
        ]
    outcome: dict[str, FetchError | None] = {}
    for _, url in urls:
        if url not in outcome:
            try:
                (await fetch(url, storage=ctx.storage, client=ctx.http, max_bytes=MAX_IMAGE_BYTES)).discard()
                outcome[url] = None
            except FetchError as exc:
                outcome[url] = exc
    return [FieldError(loc=loc, msg=str(exc), type=exc.kind) for loc, url in urls if (exc := outcome[url])]


async def _generate(
    rec: RequestRecord, edit: EditInput, probe: VideoProbe, ctx: JobContext, log: LogFn, cancel: threading.Event
) -> JobResult:
    """The 'model': edit or remux, then pad to time_scale x duration; faults act here."""
    target_s = ctx.config.time_scale * probe.duration_s
    started, progress = time.monotonic(), _Progress()
    ticker = asyncio.create_task(_tick(log, progress, started, target_s, ctx.config.log_interval_s))
    try:
        if rec.fault == "hang":
            log("Waiting for a provider slot")
            await asyncio.Event().wait()  # until cancelled
        if rec.fault == "fail":
            await asyncio.sleep(target_s / 2)
            log("Provider returned an error", level="ERROR")
            return failed()
        output = await _render(edit, probe, ctx, progress, cancel)
        await asyncio.sleep(max(0.0, target_s - (time.monotonic() - started)))
    finally:
        ticker.cancel()
    log(f"Processing frame {progress.total}/{progress.total}")
    log(f"Generated {output.duration_s:.2f} s video ({output.size} bytes)")
    return ok(output)


async def _render(
    edit: EditInput, probe: VideoProbe, ctx: JobContext, progress: _Progress, cancel: threading.Event
) -> OutputFile:
    storage = ctx.storage
    tmp = storage.temp_path(".mp4")
    total = max(1, round(probe.duration_s * (probe.fps or 24)))
    progress.update(0, total)
    src = Path(probe.path)

    def work() -> OutputFile:
        try:
            if ctx.config.fast_copy:
                remux_video(src, tmp, keep_audio=edit.keep_audio, cancel=cancel)
                progress.update(total, total)
            else:
                edit_video(
                    src,
                    tmp,
                    prompt=edit.prompt,
                    keep_audio=edit.keep_audio,
                    progress=progress.update,
                    cancel=cancel,
                    rotation=probe.rotation,
                )
            duration = probe_video(tmp).duration_s
            slot, name = storage.new_slot("output.mp4", "video/mp4")
            size = storage.adopt(tmp, slot, name).stat().st_size
            return OutputFile(slot=slot, name=name, size=size, duration_s=duration)
        finally:
            tmp.unlink(missing_ok=True)

    return await asyncio.get_running_loop().run_in_executor(ctx.executor, work)


async def _tick(log: LogFn, progress: _Progress, started: float, target_s: float, interval: float) -> None:
    """Log 'Processing frame x/y' every interval: work progress, paced by the simulated duration."""
    while True:
        await asyncio.sleep(interval)
        total = progress.total or 1
        fraction = progress.done / total
        if target_s > 0:
            fraction = min(fraction, (time.monotonic() - started) / target_s)
        log(f"Processing frame {int(fraction * total)}/{total}")
