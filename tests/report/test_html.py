"""The offline HTML report: thumbnails as data URIs, inline SVG charts, links, graceful placeholders, screenshot."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from klingflow.report.html import ThumbnailMaker, decode_frames, render_html, safe_href, write_html
from klingflow.report.summary import summarize
from klingflow.report.writer import RunInfo, read_history
from tests.report.test_support import clip_pair, failed, succeeded, three_run_history, write_run

DATA_URI = re.compile(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')
ROOT = Path(__file__).resolve().parents[2]


def _one_run_with_clips(tmp_path: Path) -> Path:
    before, after = clip_pair(tmp_path / "media", "a")
    write_run(
        tmp_path / "reports",
        "r1",
        [
            succeeded("clip", 1, seconds=3, video=str(before), output_path=str(after)),
            succeeded(
                "gone",
                2,
                seconds=3,
                video=str(tmp_path / "missing-in.mp4"),
                output_path=str(tmp_path / "missing-out.mp4"),
            ),
            failed("bad", 3, error="HTTP 422: <script>alert(1)</script>"),
        ],
    )
    return tmp_path / "reports"


def test_thumbnails_are_embedded_jpeg_data_uris(tmp_path: Path) -> None:
    """A job with real input/output files gets 3 before + 3 after JPEG thumbnails inlined as base64."""
    html = render_html(read_history(_one_run_with_clips(tmp_path)), title="t")
    uris = DATA_URI.findall(html)
    assert len(uris) == 6
    image = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert image.format == "JPEG" and image.width == 240


def test_before_and_after_frames_are_taken_at_the_same_moments(tmp_path: Path) -> None:
    """Input and output frames are decoded at 25/50/75 % of the shorter duration, same seconds for both."""
    before, after = clip_pair(tmp_path, "m")
    row = {"input_path": str(before), "output_path": str(after), "input_duration_s": 3.0, "output_duration_s": 2.0}
    pairs = ThumbnailMaker().pairs(row)
    assert [p.at_s for p in pairs] == [0.5, 1.0, 1.5]
    assert all(p.before.uri and p.after.uri for p in pairs)
    assert len({p.before.uri for p in pairs}) == 3  # the moving pattern differs between moments


def test_missing_and_undecodable_files_become_placeholders(tmp_path: Path) -> None:
    """A missing file, a garbage file and a remote URL give placeholders with the reason, never an exception."""
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    assert [t.note for t in decode_frames(tmp_path / "none.mp4", [1.0])] == ["file missing"]
    assert decode_frames(garbage, [1.0, 2.0])[0].note.startswith("not decodable")
    pairs = ThumbnailMaker().pairs(
        {"source_path": "https://example.com/in.mp4", "output_path": None, "input_duration_s": 5.0}
    )
    assert {p.before.note for p in pairs} == {"no local input"} and {p.after.note for p in pairs} == {"no local output"}
    html = render_html(read_history(_one_run_with_clips(tmp_path)), title="t")
    assert 'class="ph">file missing<' in html


def test_charts_links_and_escaping(tmp_path: Path) -> None:
    """The page has SVG cost and duration charts, file:// and output_url links, totals, and escapes error text."""
    reports = _one_run_with_clips(tmp_path)
    html = render_html(read_history(reports), title="Run r1")
    assert html.count("<svg") == 4  # cost + queued/processing/total histograms (one run: no per-run chart)
    assert "<title>Cost per job</title>" in html and "<title>total_s</title>" in html
    assert f'href="{(tmp_path / "media" / "a-out.mp4").as_uri()}"' in html
    assert 'href="https://sim.local/out/clip.mp4"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert 'id="totals"' in html and "$2.02" in html  # 2 jobs x 3 s x $0.336 billed
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch: works offline


def test_unsafe_output_url_is_not_linked() -> None:
    """Only http(s)/file URLs become links (a javascript: URL from a result is shown, not linked)."""
    assert safe_href("javascript:alert(1)") is None
    assert safe_href("https://v3.fal.media/x.mp4") == "https://v3.fal.media/x.mp4"


def test_multi_run_report_has_run_table_and_spend_chart(tmp_path: Path) -> None:
    """A cross-run page lists every run and adds the spend-per-run chart."""
    three_run_history(tmp_path)
    html = render_html(read_history(tmp_path), title="all", thumbnails=False)
    assert "<title>Spend per run</title>" in html
    assert all(f"<code>{r}</code>" in html for r in ("run-a", "run-b", "run-c"))
    assert "timeout after 3600 s" in html


def test_thumbnail_cache_survives_deleted_outputs(tmp_path: Path) -> None:
    """Thumbnails cached under _html/thumbs are reused when the output file was cleaned up later."""
    reports = _one_run_with_clips(tmp_path)
    cache = reports / "_html" / "thumbs"
    first = render_html(read_history(reports), title="t", thumb_cache_dir=cache)
    (tmp_path / "media" / "a-out.mp4").unlink()
    second = render_html(read_history(reports), title="t", thumb_cache_dir=cache)
    assert DATA_URI.findall(first) == DATA_URI.findall(second)
    assert list(cache.glob("*.jpg"))


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshot_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium renders the report offline into a PNG that is not blank (many distinct colours)."""
    shots = _screenshot_module()
    chromium = shots.find_chromium()
    if chromium is None:
        if os.environ.get("CI") and os.environ.get("KLINGFLOW_REQUIRE_CHROMIUM") == "1":
            pytest.fail("Chromium is required (CI and KLINGFLOW_REQUIRE_CHROMIUM=1) but none was found")
        pytest.skip("no Chromium (apt-get install -y chromium, or set KLINGFLOW_CHROMIUM) - screenshot not checked")
    reports = _one_run_with_clips(tmp_path)
    page = write_html(read_history(reports), reports / "_html" / "run-r1.html", title="Run r1")
    png = shots.screenshot(page, tmp_path / "shot.png", chromium=chromium)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 500
    assert image.getbbox() is not None


def _named_runs(tmp_path: Path) -> Path:
    """Two named runs of one manifest, one with 18 timeouts (18 messages differing in row, id and seconds)."""
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,prompt,video\n")
    timeouts = [
        failed(
            f"t{i}", i, stage="collect", error=f"row {i} (t{i}): collect failed: request timed out after {3600 + i} s"
        )
        for i in range(1, 19)
    ]
    write_run(
        tmp_path / "reports", "0a1b2c3d-aaaa", [succeeded("first-job", 1)], run=RunInfo.of(str(manifest), "monday")
    )
    write_run(tmp_path / "reports", "9f8e7d6c-bbbb", timeouts, run=RunInfo.of(str(manifest), "tuesday"))
    return tmp_path / "reports"


def test_multi_run_cost_bars_are_labelled_by_job_then_run(tmp_path: Path) -> None:
    """Each cost bar reads "job id · run name (short run id)", the job id first and never cut off."""
    html = render_html(read_history(_named_runs(tmp_path)), title="all", thumbnails=False)
    assert "<title>first-job · monday (0a1b2c3d)</title>first-job · monday (0a1b2c3d)</text>" in html
    assert ">t18 · tuesday (9f8e7d6c)</text>" in html
    assert "<td>monday</td>" in html and "<td>tuesday</td>" in html  # the runs table names each run


def test_failures_group_by_error_kind_and_stage(tmp_path: Path) -> None:
    """18 timeouts that differ only in row, job id and seconds are one group of 18, with an example message."""
    html = render_html(read_history(_named_runs(tmp_path)), title="all", thumbnails=False)
    section = html.split("<h2>Failures by error</h2>", 1)[1].split("</table>", 1)[0]
    assert section.count('<tr><td class="num">') == 1
    assert (
        '<td class="num">18</td><td>failed</td><td>collect</td><td>collect failed: request timed out after N s</td>'
        in section
    )
    assert "row 1 (t1): collect failed: request timed out after 3601 s" in section


def test_billed_minus_estimated_leaves_budget_skipped_jobs_out(tmp_path: Path) -> None:
    """A budget-skipped job (estimated, never billed by design) is not an estimate error; the page says so."""
    skipped = failed("over", 2, error="row 2 (over): skipped: over budget").model_copy(
        update={"status": "skipped_budget"}
    )
    write_run(tmp_path, "r1", [succeeded("ok", 1, seconds=5), skipped])
    df = read_history(tmp_path)
    totals = summarize(df).totals
    assert totals.estimate_delta_usd == pytest.approx(0.0) and totals.estimate_delta_jobs == 1
    assert totals.budget_skipped == 1 and totals.estimated_cost_usd > totals.cost_usd
    html = render_html(df, title="r1", thumbnails=False)
    card = html.split('id="estimate-delta"', 1)[1].split("</div></div>", 1)[0]
    assert '<div class="value">$0.00</div>' in card
    assert "over 1 job(s), not counting reused or dry-run rows; 1 budget-skipped left out" in card
    assert "sent to fal" not in html  # the budget-skipped job was not, nor is a job that failed before submission


def test_a_reused_row_says_reused_once(tmp_path: Path) -> None:
    """A row paid for by an earlier run shows "(reused)", not "(reused, reused)"."""
    from klingflow.models import CostSource

    row = succeeded("again", 1).model_copy(update={"reused": True, "cost_source": CostSource.reused, "cost_usd": 0.0})
    write_run(tmp_path, "r1", [row])
    html = render_html(read_history(tmp_path), title="r1", thumbnails=False)
    assert "(reused)" in html and "(reused, reused)" not in html


def test_single_run_page_names_the_run_and_manifest(tmp_path: Path) -> None:
    """The page of one run shows its name, id, and the manifest's absolute path with its sha256."""
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,prompt,video\n")
    write_run(tmp_path / "reports", "r1", [succeeded("a", 1)], run=RunInfo.of(str(manifest), "friday batch"))
    html = render_html(read_history(tmp_path / "reports"), title="r1", thumbnails=False)
    assert "<dt>run name</dt><dd>friday batch</dd>" in html
    assert f"<code>{manifest}</code>" in html and hashlib.sha256(manifest.read_bytes()).hexdigest() in html
