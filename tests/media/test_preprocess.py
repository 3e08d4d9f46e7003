"""preprocess_job on the generated corpus; every output is checked by probing it independently."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import av
import numpy as np
import pytest

from klingflow.endpoint import (
    MAX_VIDEO_BYTES,
    VIDEO_EXTENSIONS,
    billable_seconds,
    duration_in_limits,
    fps_in_limits,
)
from klingflow.media.preprocess import AspectPolicy, PreprocessSettings, TooShortPolicy, preprocess_job
from klingflow.media.probe import VideoProbe, probe_video
from klingflow.models import EditParams, JobRecord, TooLongPolicy
from tests.corpus import Corpus, corpus_fixture  # noqa: F401  (session fixture `corpus`)


def settings_for(tmp_path: Path, **overrides: object) -> PreprocessSettings:
    """Fast encoder settings for tests; the policies under test are passed as overrides."""
    return PreprocessSettings(work_dir=str(tmp_path / "work"), x264_preset="ultrafast", **overrides)


def job(video: str | Path, *, keep_audio: bool = True, prompt: str = "Make it snow in @Video1") -> JobRecord:
    return JobRecord(job_id="j1", row=7, prompt=prompt, video=str(video), keep_audio=keep_audio)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_endpoint_ready(record: JobRecord) -> VideoProbe:
    """Probe the file to upload independently and check it against every endpoint limit and the record."""
    assert record.status == "pending", record.error
    out = probe_video(record.input_path)
    assert Path(out.path).suffix.lower() in VIDEO_EXTENSIONS
    assert out.is_mp4_family
    assert duration_in_limits(out.duration_s)
    assert 720 <= out.width <= 2160 and 720 <= out.height <= 2160
    assert out.size_bytes <= MAX_VIDEO_BYTES
    assert out.rotation == 0
    assert not out.is_vfr and fps_in_limits(out.fps)
    assert not out.is_hdr
    assert record.input_sha256 == sha256(record.input_path)
    assert (record.input_bytes, record.input_width, record.input_height) == (out.size_bytes, out.width, out.height)
    assert record.input_duration_s == pytest.approx(out.duration_s)
    assert record.estimated_seconds == billable_seconds(out.duration_s)
    assert record.estimated_cost_usd is None  # priced by the run (klingflow.fal.pricing)
    assert record.source is not None and record.source_sha256 is not None
    if "passthrough" not in record.preprocess_actions:
        assert out.video_codec == "h264"
        assert out.pix_fmt == "yuv420p"
        assert out.width % 2 == 0 and out.height % 2 == 0
        assert out.audio_codec in (None, "aac", "mp3")
    return out


def test_compliant_file_passes_through_byte_for_byte(corpus: Corpus, tmp_path: Path) -> None:
    """A compliant mp4 is handed on as the original path, untouched, with its probe as source."""
    src = corpus["compliant"]
    before = sha256(src)
    record = preprocess_job(job(src), settings_for(tmp_path))
    assert_endpoint_ready(record)
    assert record.preprocess_actions == ["passthrough"]
    assert record.input_path == str(src)
    assert record.input_sha256 == record.source_sha256 == before == sha256(src)
    assert record.source["width"] == 1280 and record.source["duration_s"] == pytest.approx(3.5)
    assert record.estimated_seconds == 4
    assert not (tmp_path / "work" / "videos").exists() or not any((tmp_path / "work" / "videos").iterdir())


@pytest.mark.parametrize("name", ["compliant_mov", "no_audio"])
def test_other_compliant_files_pass_through(corpus: Corpus, tmp_path: Path, name: str) -> None:
    """A compliant .mov and a compliant clip without audio pass through too."""
    record = preprocess_job(job(corpus[name]), settings_for(tmp_path))
    assert_endpoint_ready(record)
    assert record.preprocess_actions == ["passthrough"]
    assert record.input_path == str(corpus[name])


def test_keep_audio_false_still_passes_through_by_default(corpus: Corpus, tmp_path: Path) -> None:
    """keep_audio=false on a compliant file: passthrough (the endpoint drops audio server-side)."""
    record = preprocess_job(job(corpus["compliant"], keep_audio=False), settings_for(tmp_path))
    assert record.preprocess_actions == ["passthrough"]
    assert record.input_path == str(corpus["compliant"])


def test_keep_audio_false_with_strip_setting_remuxes_without_audio(corpus: Corpus, tmp_path: Path) -> None:
    """strip_unwanted_audio=True: a stream copy without the audio track (no re-encode)."""
    record = preprocess_job(
        job(corpus["compliant"], keep_audio=False), settings_for(tmp_path, strip_unwanted_audio=True)
    )
    out = assert_endpoint_ready(record)
    assert record.preprocess_actions == ["remux", "drop_audio"]
    assert not out.has_audio
    assert out.size_bytes < record.source["size_bytes"]


def test_transcode_drops_audio_when_not_kept(corpus: Corpus, tmp_path: Path) -> None:
    """When re-encoding anyway and keep_audio=false, the audio track is left out."""
    record = preprocess_job(job(corpus["sd480"], keep_audio=False), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert "drop_audio" in record.preprocess_actions
    assert not out.has_audio


def _first_frame_rgb(path: str | Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24").astype(np.int16)


def test_phone_rotation_is_baked_in(corpus: Corpus, tmp_path: Path) -> None:
    """A 1280x720 stream with a 90° display matrix comes out 720x1280, upright, with no matrix."""
    src = corpus["rotated"]
    record = preprocess_job(job(src), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert record.source["rotation"] == 90 and record.source["width"] == 720
    assert "rotate" in record.preprocess_actions
    assert (out.width, out.height, out.rotation) == (720, 1280, 0)
    displayed = np.rot90(_first_frame_rgb(src), k=1)  # display matrix 90 = counter-clockwise
    converted = _first_frame_rgb(record.input_path)
    assert converted.shape == displayed.shape
    assert np.abs(converted - displayed).mean() < 12
    assert np.abs(converted - np.rot90(displayed, k=2)).mean() > 40


def test_vfr_becomes_constant_frame_rate(corpus: Corpus, tmp_path: Path) -> None:
    """A variable-frame-rate clip (avg ~20, base 30) becomes CFR at 24 fps, duration kept."""
    record = preprocess_job(job(corpus["vfr"]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert record.source["is_vfr"]
    assert "cfr" in record.preprocess_actions
    assert out.fps == pytest.approx(24.0) and out.base_fps == pytest.approx(24.0)
    assert out.duration_s == pytest.approx(record.source["duration_s"], abs=0.1)


def test_low_frame_rate_is_converted(corpus: Corpus, tmp_path: Path) -> None:
    """15 fps is outside 24-60 and is converted to 24 fps."""
    record = preprocess_job(job(corpus["fps15"]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert "fps" in record.preprocess_actions
    assert out.fps == pytest.approx(24.0)


@pytest.mark.parametrize("name", ["hdr_pq", "hdr_hlg"])
def test_hdr_is_tonemapped_to_sdr_bt709(corpus: Corpus, tmp_path: Path, name: str) -> None:
    """PQ and HLG BT.2020 10-bit become 8-bit H.264 tagged BT.709, with picture content kept."""
    record = preprocess_job(job(corpus[name]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert record.source["is_hdr"] and record.source["bit_depth"] == 10
    assert "tonemap" in record.preprocess_actions
    assert (out.color_transfer, out.color_primaries, out.bit_depth) == (1, 1, 8)
    frame = _first_frame_rgb(record.input_path)
    assert 5 < frame.mean() < 250 and frame.std() > 10  # neither black, white nor flat


def test_hevc_10bit_sdr_is_reencoded_to_8bit_h264(corpus: Corpus, tmp_path: Path) -> None:
    """10-bit HEVC (acceptance undocumented) becomes 8-bit yuv420p H.264 without tone mapping."""
    record = preprocess_job(job(corpus["hevc10"]), settings_for(tmp_path))
    assert_endpoint_ready(record)
    assert "pix_fmt" in record.preprocess_actions and "tonemap" not in record.preprocess_actions


def test_vp9_webm_is_transcoded_with_aac_audio(corpus: Corpus, tmp_path: Path) -> None:
    """VP9/Opus in WebM becomes H.264/AAC in mp4."""
    record = preprocess_job(job(corpus["vp9_webm"]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert record.source["container"] == "matroska,webm"
    assert record.preprocess_actions[0] == "transcode" and "audio_transcode" in record.preprocess_actions
    assert out.audio_codec == "aac"


def test_h264_in_mkv_is_only_remuxed(corpus: Corpus, tmp_path: Path) -> None:
    """H.264/AAC in Matroska is stream-copied into mp4: same codec data, no re-encode."""
    src = corpus["h264_mkv"]
    record = preprocess_job(job(src), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert record.preprocess_actions == ["remux"]
    assert record.input_path.endswith(".mp4")
    with av.open(str(src)) as a, av.open(record.input_path) as b:
        first_a = bytes(next(p for p in a.demux(video=0) if p.size))
        first_b = bytes(next(p for p in b.demux(video=0) if p.size))
    assert first_a[-2000:] == first_b[-2000:]  # same coded picture (headers differ: Annex B vs avcC)
    assert out.duration_s == pytest.approx(record.source["duration_s"], abs=0.05)


def test_prores_mov_is_reencoded(corpus: Corpus, tmp_path: Path) -> None:
    """ProRes 4:2:2 10-bit with PCM audio becomes H.264/AAC, much smaller."""
    record = preprocess_job(job(corpus["prores_mov"]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert {"transcode", "pix_fmt", "audio_transcode"} <= set(record.preprocess_actions)
    assert out.size_bytes < record.source["size_bytes"] / 3


def test_bitrate_is_capped_to_fit_the_byte_limit(corpus: Corpus, tmp_path: Path) -> None:
    """With a byte cap below the source size, the re-encode is capped and the output fits."""
    cap = 1_500_000
    record = preprocess_job(job(corpus["prores_mov"]), settings_for(tmp_path, max_video_bytes=cap))
    out = assert_endpoint_ready(record)
    assert "bitrate_cap" in record.preprocess_actions
    assert out.size_bytes <= cap


@pytest.mark.parametrize(
    ("name", "size", "action"),
    [
        ("odd_dims", (1280, 720), "even_dims"),
        ("yuv444", (1280, 720), "pix_fmt"),
        ("uhd", (2160, 1216), "scale"),
        ("sd480", (960, 720), "scale"),
    ],
)
def test_size_and_pixel_format_are_normalized(
    corpus: Corpus, tmp_path: Path, name: str, size: tuple[int, int], action: str
) -> None:
    """Odd, 4:4:4, 4K and 480p inputs land at even sizes within 720-2160 with the aspect kept."""
    record = preprocess_job(job(corpus[name]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert action in record.preprocess_actions
    assert (out.width, out.height) == size
    src_aspect = record.source["width"] / record.source["height"]
    assert out.width / out.height == pytest.approx(src_aspect, rel=0.01)


def test_long_clip_is_trimmed_frame_accurately(corpus: Corpus, tmp_path: Path) -> None:
    """A compliant 14 s 24 fps clip cut to 10 s keeps exactly the 240 frames inside the window, evenly spaced
    (no frame dropped at the cut), with the audio cut to the video: both within one frame of 10 s."""
    record = preprocess_job(job(corpus["long14"]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert record.preprocess_actions[:2] == ["transcode", "trim"]
    frame = 1 / 24
    with av.open(record.input_path) as container:
        video = container.streams.video[0]
        pts = sorted(float(p.pts * video.time_base) for p in container.demux(video) if p.pts is not None)
        container.seek(0)
        audio = container.streams.audio[0]
        ends = [float((p.pts + p.duration) * audio.time_base) for p in container.demux(audio) if p.pts is not None]
    assert len(pts) == 240 and pts[0] == pytest.approx(0, abs=1e-3)
    assert max(b - a for a, b in itertools.pairwise(pts)) == pytest.approx(frame, abs=1e-3)
    assert abs(pts[-1] + frame - 10.0) <= frame and abs(max(ends) - 10.0) <= frame
    assert abs(out.duration_s - 10.0) <= frame
    assert record.estimated_seconds == 10


def test_long_clip_needing_reencode_is_trimmed_to_exactly_10s(corpus: Corpus, tmp_path: Path) -> None:
    """A 14 s 360p VP9 clip is trimmed, scaled up and re-encoded in one pass."""
    record = preprocess_job(job(corpus["long14_vp9"]), settings_for(tmp_path))
    out = assert_endpoint_ready(record)
    assert {"transcode", "trim", "scale"} <= set(record.preprocess_actions)
    assert out.duration_s == pytest.approx(10.0, abs=0.05)
    assert (out.width, out.height) == (1280, 720)


def test_long_clip_is_rejected_under_reject_policy(corpus: Corpus, tmp_path: Path) -> None:
    """too_long=reject: the job fails naming the row, the file and the duration."""
    record = preprocess_job(job(corpus["long14"]), settings_for(tmp_path, too_long=TooLongPolicy.reject))
    assert record.status == "failed" and record.error_stage == "preprocess"
    assert "row 7" in record.error and str(corpus["long14"]) in record.error
    assert "14.00 s" in record.error and "too_long=reject" in record.error


def test_short_clip_is_rejected_by_default(corpus: Corpus, tmp_path: Path) -> None:
    """A 2 s clip fails with a reason that says what the limit is and how to opt into padding."""
    record = preprocess_job(job(corpus["short2"]), settings_for(tmp_path))
    assert record.status == "failed"
    assert "2.00 s" in record.error and "3-10 s" in record.error and "too_short=pad" in record.error


def test_short_clip_is_padded_under_pad_policy(corpus: Corpus, tmp_path: Path) -> None:
    """too_short=pad freezes the last frame (and pads audio) up to 3 s."""
    record = preprocess_job(job(corpus["short2"]), settings_for(tmp_path, too_short=TooShortPolicy.pad))
    out = assert_endpoint_ready(record)
    assert "freeze_pad" in record.preprocess_actions
    assert out.duration_s == pytest.approx(3.0, abs=0.05)
    assert out.has_audio


def test_extreme_aspect_is_rejected_by_default(corpus: Corpus, tmp_path: Path) -> None:
    """4:1 cannot fit both sides in 720-2160: the job fails saying so."""
    record = preprocess_job(job(corpus["ultrawide"]), settings_for(tmp_path))
    assert record.status == "failed" and "beyond 3:1" in record.error and "extreme_aspect=pad" in record.error


def test_extreme_aspect_is_letterboxed_under_pad_policy(corpus: Corpus, tmp_path: Path) -> None:
    """extreme_aspect=pad: 2400x600 is scaled to 2160x540 and centred in a 2160x720 frame."""
    record = preprocess_job(job(corpus["ultrawide"]), settings_for(tmp_path, extreme_aspect=AspectPolicy.pad))
    out = assert_endpoint_ready(record)
    assert "pad" in record.preprocess_actions
    assert (out.width, out.height) == (2160, 720)
    frame = _first_frame_rgb(record.input_path)
    assert frame[:60].max() < 30 and frame[-60:].max() < 30  # black bars top and bottom
    assert frame[300:420].mean() > 40


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken_empty.mp4", "file is empty"),
        ("broken_text.mp4", "not a readable video"),
        ("broken_truncated.mp4", "not a readable video"),
        ("broken_faststart_truncated.mp4", "truncated"),
        ("broken_audio_only.mp4", "audio only"),
    ],
)
def test_broken_inputs_fail_with_a_clear_reason(corpus: Corpus, tmp_path: Path, name: str, reason: str) -> None:
    """Unreadable files fail that job only, naming the row, the file and why."""
    record = preprocess_job(job(corpus[name]), settings_for(tmp_path))
    assert record.status == "failed" and record.error_stage == "preprocess"
    assert record.error.startswith("row 7 (j1), file ")
    assert str(corpus[name]) in record.error and reason in record.error
    assert record.input_path is None


def test_missing_and_directory_paths_fail_clearly(tmp_path: Path) -> None:
    """A path that does not exist, or is a directory, is that job's error."""
    missing = preprocess_job(job(tmp_path / "nope.mp4"), settings_for(tmp_path))
    assert missing.status == "failed" and "file not found" in missing.error and "nope.mp4" in missing.error
    folder = preprocess_job(job(tmp_path), settings_for(tmp_path))
    assert folder.status == "failed" and "not a regular file" in folder.error


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_fails_clearly(corpus: Corpus, tmp_path: Path) -> None:
    """A file without read permission is that job's error, not a crash."""
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(corpus["compliant"].read_bytes())
    locked.chmod(0)
    record = preprocess_job(job(locked), settings_for(tmp_path))
    assert record.status == "failed" and "permission denied" in record.error


def test_failed_record_passes_through_unchanged(corpus: Corpus, tmp_path: Path) -> None:
    """A record that already failed is returned as it is."""
    failed = job(corpus["compliant"]).fail("manifest", "bad row")
    assert preprocess_job(failed, settings_for(tmp_path)) == failed


def test_transcode_is_cached_by_content_and_settings(corpus: Corpus, tmp_path: Path) -> None:
    """The same bytes with the same settings reuse the first output; other settings transcode again."""
    settings = settings_for(tmp_path)
    first = preprocess_job(job(corpus["sd480"]), settings)
    mtime = os.stat(first.input_path).st_mtime_ns
    copy = tmp_path / "renamed copy.mp4"
    copy.write_bytes(corpus["sd480"].read_bytes())
    second = preprocess_job(job(copy), settings)
    assert second.input_path == first.input_path and os.stat(second.input_path).st_mtime_ns == mtime
    assert second.preprocess_actions == [*first.preprocess_actions, "cache_hit"]
    assert second.input_sha256 == first.input_sha256
    other = preprocess_job(job(corpus["sd480"]), settings_for(tmp_path, crf=28))
    assert other.input_path != first.input_path and "cache_hit" not in other.preprocess_actions
    index = tmp_path / "work" / "index"
    assert index.stat().st_mode & 0o777 == 0o700


def test_cache_entry_whose_file_vanished_is_rebuilt(corpus: Corpus, tmp_path: Path) -> None:
    """A cache hit is verified: a deleted output is transcoded again, not returned."""
    settings = settings_for(tmp_path)
    first = preprocess_job(job(corpus["sd480"]), settings)
    Path(first.input_path).unlink()
    again = preprocess_job(job(corpus["sd480"]), settings)
    assert_endpoint_ready(again)
    assert "cache_hit" not in again.preprocess_actions and Path(again.input_path).is_file()


def test_cache_index_is_json_not_pickle(corpus: Corpus, tmp_path: Path) -> None:
    """The transcode index stores JSON values (JSONDisk: zlib-compressed JSON; no pickle, CVE-2025-69872)."""
    import json
    import sqlite3
    import zlib

    preprocess_job(job(corpus["sd480"]), settings_for(tmp_path))
    db = sqlite3.connect(tmp_path / "work" / "index" / "cache.db")
    rows = db.execute("SELECT key, value FROM Cache").fetchall()
    db.close()
    assert len(rows) == 1
    key, value = (json.loads(zlib.decompress(bytes(blob))) for blob in rows[0])
    assert key.split(":")[0] == sha256(corpus["sd480"])
    assert value["path"].endswith(".mp4") and value["sha256"] == sha256(value["path"])


def test_settings_from_flow_params(tmp_path: Path) -> None:
    """The flow's too_long and state_dir map onto the settings; the other policies keep their defaults."""
    params = EditParams(manifest="m.csv", state_dir=str(tmp_path), too_long=TooLongPolicy.reject)
    settings = PreprocessSettings.from_params(params)
    assert settings.work_dir == str(tmp_path / "preprocessed")
    assert settings.too_long is TooLongPolicy.reject and settings.too_short is TooShortPolicy.reject
    assert settings.digest(True) != settings.digest(False)
