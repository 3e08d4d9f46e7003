"""preprocess_job's checks before any spend: prompt references, reference images, URL inputs."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from klingflow.endpoint import MAX_IMAGE_BYTES
from klingflow.inputs import InputPolicy
from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.models import ElementSpec, JobRecord
from tests.corpus import Corpus, corpus_fixture  # noqa: F401  (session fixture `corpus`)


def settings_for(tmp_path: Path) -> PreprocessSettings:
    return PreprocessSettings(work_dir=str(tmp_path / "work"), x264_preset="ultrafast")


def job(video: str | Path, prompt: str, images: list[str] | None = None, elements: list | None = None) -> JobRecord:
    return JobRecord(job_id="j2", row=3, prompt=prompt, video=str(video), images=images or [], elements=elements or [])


@pytest.mark.parametrize(
    ("prompt", "n_images", "n_elements", "reason"),
    [
        ("   ", 0, 0, "prompt is empty"),
        ("Use @Image2 as style for @Video1", 1, 0, "@Image2 but 1 image(s)"),
        ("Replace the cat with @Element1", 0, 0, "@Element1 but 0 element(s)"),
        ("Five refs @Video1", 3, 2, "at most 4 in total"),
    ],
)
def test_prompt_reference_errors_fail_the_job_before_any_work(
    corpus: Corpus, tmp_path: Path, prompt: str, n_images: int, n_elements: int, reason: str
) -> None:
    """Bad @references fail the job with the endpoint's reason, before the video is even probed."""
    image = str(corpus["image_jpg.jpg"])
    elements = [ElementSpec(frontal=image)] * n_elements
    record = preprocess_job(
        job(tmp_path / "never-read.mp4", prompt, [image] * n_images, elements), settings_for(tmp_path)
    )
    assert record.status == "failed" and record.error_stage == "preprocess"
    assert record.error.startswith("row 3 (j2): ") and reason in record.error
    assert not (tmp_path / "work" / "videos").exists()


def test_video_reference_without_video_fails(tmp_path: Path) -> None:
    """@Video1 with no video given is that job's error."""
    record = preprocess_job(job("", "Restyle @Video1"), settings_for(tmp_path))
    assert record.status == "failed" and "@Video1 but 0 video(s)" in record.error


def test_compliant_images_and_elements_are_used_as_they_are(corpus: Corpus, tmp_path: Path) -> None:
    """JPEG/PNG within limits are handed on untouched; elements keep their structure."""
    jpg, png = str(corpus["image_jpg.jpg"]), str(corpus["image_png.png"])
    element = ElementSpec(frontal=png, references=[jpg])
    record = preprocess_job(
        job(corpus["compliant"], "@Video1 in the style of @Image1 with @Element1", [jpg], [element]),
        settings_for(tmp_path),
    )
    assert record.status == "pending", record.error
    assert record.prepared_images == [jpg]
    assert record.prepared_elements == [element]
    assert record.preprocess_actions == ["passthrough"]


def test_images_in_other_formats_or_oversized_are_normalized(corpus: Corpus, tmp_path: Path) -> None:
    """BMP becomes JPEG; a >10 MB PNG is re-encoded under the limit; EXIF rotation is baked in."""
    bmp, huge, rotated = (str(corpus[n]) for n in ("image_bmp.bmp", "image_huge.png", "image_exif_rotated.jpg"))
    assert Path(huge).stat().st_size > MAX_IMAGE_BYTES
    record = preprocess_job(
        job(
            corpus["compliant"],
            "@Video1 like @Image1, @Image2 and @Element1",
            [bmp, huge],
            [ElementSpec(frontal=rotated)],
        ),
        settings_for(tmp_path),
    )
    assert record.status == "pending", record.error
    out_bmp, out_huge = record.prepared_images
    out_rot = record.prepared_elements[0].frontal
    for path in (out_bmp, out_huge, out_rot):
        assert Path(path).parent == tmp_path / "work" / "images"
        assert Path(path).stat().st_size <= MAX_IMAGE_BYTES
    with Image.open(out_bmp) as img:
        assert (img.format, img.size) == ("JPEG", (640, 480))
    with Image.open(out_huge) as img:
        assert img.format in ("JPEG", "PNG") and min(img.size) >= 300
    with Image.open(out_rot) as img:
        assert img.size == (600, 900) and img.getexif().get(0x0112, 1) == 1
    assert {"image_convert", "image_downscale", "image_rotate"} <= set(record.preprocess_actions)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("image_tiny.png", "at least 300 px"),
        ("image_wide.jpg", "beyond 2.5:1"),
        ("image_text.jpg", "not a readable image"),
    ],
)
def test_unusable_images_fail_the_job(corpus: Corpus, tmp_path: Path, name: str, reason: str) -> None:
    """Too small, too elongated or unreadable images fail the job naming the image."""
    record = preprocess_job(job(corpus["compliant"], "@Video1 as @Image1", [str(corpus[name])]), settings_for(tmp_path))
    assert record.status == "failed" and reason in record.error
    assert f"file {corpus[name]}" in record.error


def test_missing_element_image_fails_the_job(corpus: Corpus, tmp_path: Path) -> None:
    """An element reference image that does not exist is that job's error."""
    element = ElementSpec(frontal=str(corpus["image_jpg.jpg"]), references=[str(tmp_path / "gone.png")])
    record = preprocess_job(job(corpus["compliant"], "@Video1 with @Element1", [], [element]), settings_for(tmp_path))
    assert record.status == "failed" and "gone.png" in record.error and "file not found" in record.error


@pytest.fixture
def http_server(corpus: Corpus) -> Iterator[str]:
    """A real HTTP server in a thread, serving the corpus directory."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(corpus.root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_video_and_image_urls_are_downloaded_and_checked(corpus: Corpus, tmp_path: Path, http_server: str) -> None:
    """URLs are streamed into the work dir; a compliant download passes through as downloaded."""
    video, image = corpus["compliant"], corpus["image_png.png"]
    record = preprocess_job(
        job(f"{http_server}/{video.name}", "@Video1 as @Image1", [f"{http_server}/{image.name}"]),
        settings_for(tmp_path),
    )
    assert record.status == "pending", record.error
    assert record.preprocess_actions == ["passthrough"]
    assert Path(record.input_path).read_bytes() == video.read_bytes()
    assert Path(record.input_path).is_relative_to(tmp_path / "work" / "downloads")
    assert Path(record.prepared_images[0]).read_bytes() == image.read_bytes()


def test_download_failure_is_that_jobs_error(tmp_path: Path, http_server: str) -> None:
    """A 404 fails the job with the URL and the HTTP status."""
    url = f"{http_server}/missing.mp4"
    record = preprocess_job(job(url, "@Video1"), settings_for(tmp_path))
    assert record.status == "failed" and url in record.error and "HTTP 404" in record.error
    assert not list((tmp_path / "work" / "downloads").rglob("*.part"))


def test_download_over_the_byte_ceiling_is_that_jobs_error(corpus: Corpus, tmp_path: Path, http_server: str) -> None:
    """A download past max_download_bytes is stopped, fails the job saying so, and leaves no file behind."""
    settings = PreprocessSettings(work_dir=str(tmp_path / "work"), max_download_bytes=1000)
    record = preprocess_job(job(f"{http_server}/{corpus['compliant'].name}", "@Video1"), settings)
    assert record.status == "failed" and "download is larger than 1000 bytes" in record.error
    assert not [p for p in (tmp_path / "work" / "downloads").rglob("*") if p.is_file()]


@pytest.fixture
def redirecting_server(corpus: Corpus) -> Iterator[tuple[str, list[str]]]:
    """Serves the corpus on 127.0.0.1; `/hop/<name>` redirects to `localhost` (another host); records paths."""
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(corpus.root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path.startswith("/hop/"):
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/{self.path[5:]}")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_a_private_address_is_refused_before_any_request(
    corpus: Corpus, tmp_path: Path, redirecting_server: tuple[str, list[str]]
) -> None:
    """With private addresses refused (deployments, inbox), a loopback URL fails its job and is never fetched."""
    base, seen = redirecting_server
    settings = settings_for(tmp_path).model_copy(update={"inputs": InputPolicy(private_addresses=False)})
    url = f"{base}/{corpus['compliant'].name}"
    record = preprocess_job(job(url, "@Video1"), settings)
    assert record.status == "failed" and url in record.error
    assert "resolves to the non-public address 127.0.0.1" in record.error
    assert seen == []


def test_every_redirect_is_checked_against_the_policy(
    corpus: Corpus, tmp_path: Path, redirecting_server: tuple[str, list[str]]
) -> None:
    """An allowed host cannot bounce the download to a host the policy refuses."""
    base, seen = redirecting_server
    allowed = InputPolicy(hosts=("127.0.0.1",))
    settings = settings_for(tmp_path).model_copy(update={"inputs": allowed})
    direct = preprocess_job(job(f"{base}/{corpus['compliant'].name}", "@Video1"), settings)
    assert direct.status == "pending", direct.error
    bounced = preprocess_job(job(f"{base}/hop/{corpus['compliant'].name}", "@Video1"), settings)
    assert bounced.status == "failed" and "host 'localhost' is not in the allowed input hosts" in bounced.error
    assert seen == [f"/{corpus['compliant'].name}", f"/hop/{corpus['compliant'].name}"]


def test_a_local_file_outside_the_roots_is_refused_before_it_is_opened(corpus: Corpus, tmp_path: Path) -> None:
    """Preprocessing checks the policy itself too (a record built without the manifest's check)."""
    settings = settings_for(tmp_path).model_copy(update={"inputs": InputPolicy(roots=(str(tmp_path / "only"),))})
    record = preprocess_job(job(corpus["compliant"], "@Video1"), settings)
    assert record.status == "failed" and "is outside the allowed input folders" in record.error
