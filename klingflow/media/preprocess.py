"""PREPROCESS stage: make every job's inputs acceptable to the endpoint before anything is spent.

Per job: check the prompt's @references, check/normalize the reference images, fetch and probe the
video, then pass it through untouched when it complies or do the least work that makes it comply
(see klingflow.media.plan), caching transcodes by content hash. Bad input never raises: the job is
marked failed with a message naming the row, the file and the reason, and the batch goes on.

Policies (PreprocessSettings, defaults and why):
- too_long=trim: cut at 10 s (the flow's EditParams.too_long; reject is the alternative).
- too_short=reject: padding a 2 s clip with a frozen frame changes the content the model edits and
  is billed as 3 s; the user should decide. `pad` freezes the last frame to 3 s (action freeze_pad).
- extreme_aspect=reject: beyond 3:1 both sides cannot be 720..2160; black bars (`pad`) would be
  edited and returned by the model too, so that is opt-in.
- strip_unwanted_audio=False: a compliant file with audio and keep_audio=false still passes through
  byte-for-byte; the endpoint drops the audio server-side (keep_audio=false is sent), and one
  uploaded copy serves jobs with either setting. When re-encoding anyway, audio is dropped.
- x264_preset=veryfast, crf=18: twice medium's speed on 2 vCPU (bench) at the same visual quality;
  the larger file is irrelevant under a 200 MB cap that the rate cap enforces anyway.
- passthrough_codecs=("h264",): HEVC acceptance by the provider is undocumented, so HEVC is
  re-encoded to H.264 rather than risking a paid failure.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from klingflow.cachedir import private_dir
from klingflow.endpoint import MAX_VIDEO_BYTES, billable_seconds, prompt_reference_errors
from klingflow.errors import JobError, MediaError
from klingflow.hashing import file_version, sha256_file
from klingflow.inputs import InputPolicy
from klingflow.media.cache import CacheEntry, TranscodeCache
from klingflow.media.fetch import check_local, download, is_url, part_path
from klingflow.media.ffmpeg import decode_errors, ffmpeg_args, run_ffmpeg
from klingflow.media.images import image_fixes, image_problems, normalize_image, probe_image
from klingflow.media.plan import Plan, PlanOptions, endpoint_problems, plan_video
from klingflow.media.probe import VideoProbe, probe_source, probe_video
from klingflow.models import AspectPolicy, EditParams, ElementSpec, JobRecord, Stage, TooLongPolicy, TooShortPolicy

__all__ = [
    "PREPROCESS_VERSION",
    "AspectPolicy",
    "PreprocessSettings",
    "TooShortPolicy",
    "preprocess_job",
]

# Bump when the output of a transform changes (filters, encoder flags): old cache entries then miss.
PREPROCESS_VERSION = "2"  # 2: the BT.709 limited colour contract, HDR peak
STAGE = Stage.preprocess
log = logging.getLogger(__name__)


class PreprocessSettings(BaseModel):
    """How preprocessing normalizes inputs; built by the flow from EditParams."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    work_dir: str = Field(description="Normalized files, downloads and the transcode cache (under state_dir)")
    too_long: TooLongPolicy = TooLongPolicy.trim
    too_short: TooShortPolicy = TooShortPolicy.reject
    extreme_aspect: AspectPolicy = AspectPolicy.reject
    strip_unwanted_audio: bool = Field(False, description="keep_audio=false: remux a compliant file without audio")
    passthrough_codecs: tuple[str, ...] = ("h264",)
    crf: int = Field(18, ge=0, le=51, description="libx264 quality; 18 is visually lossless for a model input")
    x264_preset: str = Field("veryfast", description="2x medium's speed on 2 vCPU (bench); CRF keeps quality")
    audio_bitrate_kbps: int = Field(192, ge=32, le=512)
    max_video_bytes: int = Field(MAX_VIDEO_BYTES, gt=0, le=MAX_VIDEO_BYTES, description="lower only for tests")
    size_margin: float = Field(0.9, gt=0.5, le=1.0, description="share of max_video_bytes a transcode aims at")
    transcode_timeout_s: float = Field(1800.0, gt=0)
    download_timeout_s: float = Field(300.0, gt=0, description="longest network wait of an input's download")
    download_deadline_s: float = Field(600.0, gt=0, description="longest an input's whole download may take")
    max_download_bytes: int = Field(4 * 10**9, gt=0)
    inputs: InputPolicy = Field(InputPolicy(), description="which files and hosts the run may read")

    @classmethod
    def from_params(cls, params: EditParams, inputs: InputPolicy | None = None) -> PreprocessSettings:
        return cls(
            inputs=inputs or InputPolicy(),
            work_dir=str(Path(params.state_dir).expanduser() / "preprocessed"),
            too_long=params.too_long,
            too_short=params.too_short,
            extreme_aspect=params.extreme_aspect,
            download_deadline_s=params.input_fetch_timeout_s,
        )

    def plan_options(self, keep_audio: bool) -> PlanOptions:
        fields = set(PlanOptions.model_fields) - {"keep_audio"}
        return PlanOptions(keep_audio=keep_audio, **self.model_dump(include=fields))

    def digest(self, keep_audio: bool) -> str:
        """Identity of everything that shapes a normalized file (not paths or timeouts)."""
        payload = {
            "version": PREPROCESS_VERSION,
            "plan": self.plan_options(keep_audio).model_dump(mode="json"),
            "encoder": [self.crf, self.x264_preset],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class PreparedVideo(BaseModel):
    """The file to upload and what was done to get it."""

    path: str
    sha256: str
    probe: VideoProbe
    actions: list[str]


def _job_error(record: JobRecord, reason: str, path: str | None = None) -> JobError:
    return JobError(reason, row=record.row, job_id=record.job_id, path=path)


@contextlib.contextmanager
def _as_job_error(record: JobRecord, path: str | None) -> Iterator[None]:
    """Turn a MediaError, or an OSError (permission, disk full, vanished file), into this job's error."""
    try:
        yield
    except MediaError as exc:
        raise _job_error(record, str(exc), path) from exc
    except OSError as exc:
        raise _job_error(record, f"{exc.__class__.__name__}: {exc.strerror or exc}", path) from exc


def _localize(location: str, settings: PreprocessSettings, kind: str) -> Path:
    if is_url(location):
        dest = Path(settings.work_dir) / "downloads" / kind
        return download(
            location,
            dest,
            timeout_s=settings.download_timeout_s,
            deadline_s=settings.download_deadline_s,
            max_bytes=settings.max_download_bytes,
            check=settings.inputs.check_address,
        )
    if problem := settings.inputs.path_problem(location):
        raise MediaError(problem)
    return check_local(location)


# --- images ------------------------------------------------------------------------------------


def prepare_image(location: str, settings: PreprocessSettings) -> tuple[str, list[str]]:
    """Local path of an acceptable version of this image, and the fixes applied to it."""
    local = _localize(location, settings, "images")
    probe = probe_image(local)
    problems = image_problems(probe)
    if problems:
        raise MediaError("; ".join(problems))
    fixes = image_fixes(probe)
    if not fixes:
        return str(local), []
    out_dir = private_dir(Path(settings.work_dir) / "images")
    return str(normalize_image(probe, out_dir, sha256_file(local)[:24])), fixes


def _prepare_images(record: JobRecord, settings: PreprocessSettings) -> tuple[list[str], list[ElementSpec], list]:
    actions: list[str] = []
    done: dict[str, str] = {}  # an image used twice in a job is checked once

    def one(location: str) -> str:
        if location not in done:
            with _as_job_error(record, location):
                done[location], fixes = prepare_image(location, settings)
            actions.extend(f for f in fixes if f not in actions)
        return done[location]

    images = [one(loc) for loc in record.images]
    elements = [
        ElementSpec(frontal=one(el.frontal), references=[one(ref) for ref in el.references]) for el in record.elements
    ]
    return images, elements, actions


# --- video -------------------------------------------------------------------------------------


def _output_path(settings: PreprocessSettings, source_sha: str, digest: str) -> Path:
    return private_dir(Path(settings.work_dir) / "videos") / f"{source_sha[:24]}-{digest[:12]}.mp4"


def _run_plan(src: Path, probe: VideoProbe, plan: Plan, settings: PreprocessSettings, out: Path) -> VideoProbe:
    """Write the plan's output to `out` atomically and return its probe; MediaError if it does not comply."""
    tmp = part_path(out, ".mp4")
    args = ffmpeg_args(
        str(src),
        str(tmp),
        plan,
        crf=settings.crf,
        preset=settings.x264_preset,
        audio_kbps=settings.audio_bitrate_kbps,
    )
    try:
        run_ffmpeg(args, timeout_s=settings.transcode_timeout_s)
        result = probe_video(tmp)
        problems = endpoint_problems(result, max_bytes=settings.max_video_bytes)
        if problems:
            raise MediaError(f"{plan.mode} output still out of limits: {', '.join(problems)}")
    except MediaError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return result.model_copy(update={"path": str(out)})


def _check_decodes(src: Path, settings: PreprocessSettings) -> None:
    """MediaError naming the damage when any frame of the file fails to decode (remembered per file version)."""
    errors = _decode_errors(*file_version(src), timeout_s=settings.transcode_timeout_s)
    if errors:
        raise MediaError(f"the file is corrupt (decoding it fails: {errors}); not sent")


@functools.lru_cache(maxsize=1024)
def _decode_errors(path: str, size: int, mtime_ns: int, *, timeout_s: float) -> str | None:  # size, mtime: key
    return decode_errors(path, timeout_s=timeout_s)


def _normalize(
    src: Path, probe: VideoProbe, source_sha: str, record: JobRecord, settings: PreprocessSettings
) -> PreparedVideo:
    opts = settings.plan_options(record.keep_audio)
    plan = plan_video(probe, opts)
    if plan.mode in ("passthrough", "remux"):  # the source's coded video is what fal would decode
        _check_decodes(src, settings)
    if plan.mode == "passthrough":
        return PreparedVideo(path=str(src), sha256=source_sha, probe=probe, actions=plan.actions)
    digest = settings.digest(record.keep_audio)
    with TranscodeCache(Path(settings.work_dir) / "index") as cache:
        return _transcode(src, probe, source_sha, plan, opts, digest, cache, settings)


def _transcode(
    src: Path,
    probe: VideoProbe,
    source_sha: str,
    plan: Plan,
    opts: PlanOptions,
    digest: str,
    cache: TranscodeCache,
    settings: PreprocessSettings,
) -> PreparedVideo:
    hit = cache.get(source_sha, digest)
    if hit is not None:
        cached = VideoProbe.model_validate(hit.probe)
        return PreparedVideo(path=hit.path, sha256=hit.sha256, probe=cached, actions=[*hit.actions, "cache_hit"])
    out = _output_path(settings, source_sha, digest)
    try:
        result = _run_plan(src, probe, plan, settings, out)
    except MediaError:
        if plan.mode != "remux":
            raise
        plan = plan_video(probe, opts, force_transcode=True)  # the stream copy did not comply: re-encode
        result = _run_plan(src, probe, plan, settings, out)
    entry = CacheEntry(
        path=str(out),
        sha256=sha256_file(out),
        size_bytes=result.size_bytes,
        actions=plan.actions,
        probe=result.model_dump(),
    )
    cache.put(source_sha, digest, entry)
    log.info("preprocessed %s -> %s (%s)", src, out, ", ".join(plan.actions))
    return PreparedVideo(path=entry.path, sha256=entry.sha256, probe=result, actions=plan.actions)


def _prepare_video(record: JobRecord, settings: PreprocessSettings) -> tuple[VideoProbe, str, PreparedVideo]:
    if not record.video:
        raise _job_error(record, "no video given (the endpoint requires one)")
    with _as_job_error(record, record.video):
        src = _localize(record.video, settings, "videos")
        probe = probe_source(src)
        source_sha = sha256_file(src)
        prepared = _normalize(src, probe, source_sha, record, settings)
    return probe, source_sha, prepared


# --- the job -----------------------------------------------------------------------------------


def _check_prompt(record: JobRecord) -> None:
    errors = prompt_reference_errors(
        record.prompt, has_video=bool(record.video), n_images=len(record.images), n_elements=len(record.elements)
    )
    if errors:
        raise _job_error(record, "; ".join(errors))


def _preprocess(record: JobRecord, settings: PreprocessSettings) -> JobRecord:
    private_dir(Path(settings.work_dir))
    _check_prompt(record)
    images, elements, image_actions = _prepare_images(record, settings)
    source, source_sha, prepared = _prepare_video(record, settings)
    out = prepared.probe
    seconds = billable_seconds(out.duration_s)
    return record.with_(
        **{
            "source": source.model_dump(),
            "source_sha256": source_sha,
            "preprocess_actions": [*prepared.actions, *image_actions],
            "input_path": prepared.path,
            "input_sha256": prepared.sha256,
            "input_bytes": out.size_bytes,
            "input_duration_s": out.duration_s,
            "input_width": out.width,
            "input_height": out.height,
            "prepared_images": images,
            "prepared_elements": elements,
            "estimated_seconds": seconds,  # priced by the run, at the price fal gives its key
        }
    )


def preprocess_job(record: JobRecord, settings: PreprocessSettings) -> JobRecord:
    """Validate and normalize one job's inputs; a failed record (never an exception) for bad input."""
    if record.status == "failed":
        return record
    try:
        return _preprocess(record, settings)
    except JobError as exc:
        return record.fail(STAGE, exc.reason, path=exc.path)
    except Exception as exc:  # a bug or an environment fault must not sink the whole batch
        log.exception("unexpected preprocessing error for job %s", record.job_id)
        return record.fail(STAGE, f"unexpected error ({exc.__class__.__name__}: {exc})", path=record.video)
