"""Manifest loading: formats, path resolution, per-row errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klingflow.errors import ManifestError
from klingflow.inputs import InputPolicy
from klingflow.manifest import load_manifest


def test_csv_rows_resolve_paths_lists_and_booleans(tmp_path: Path) -> None:
    """CSV cells become typed fields; relative paths resolve against the manifest's folder."""
    manifest = tmp_path / "m.csv"
    elements = json.dumps([{"frontal": "f.png", "references": ["r1.png", "https://x.test/r2.png"]}])
    manifest.write_text(
        "id,prompt,video,images,elements,keep_audio,shot_type\n"
        f'a,"Edit @Video1",clips/a.mp4,i1.png;i2.jpg,"{elements.replace(chr(34), chr(34) * 2)}",false,\n'
        ",Second,https://cdn.test/b.mp4,,,,\n"
    )
    first, second = load_manifest(manifest)
    assert first.job_id == "a"
    assert first.video == str(tmp_path / "clips" / "a.mp4")
    assert first.images == [str(tmp_path / "i1.png"), str(tmp_path / "i2.jpg")]
    assert first.elements[0].frontal == str(tmp_path / "f.png")
    assert first.elements[0].references == [str(tmp_path / "r1.png"), "https://x.test/r2.png"]
    assert first.keep_audio is False
    assert first.shot_type == "customize"
    assert second.job_id == "row-0002"
    assert second.video == "https://cdn.test/b.mp4"
    assert second.keep_audio is True


def test_jsonl_and_yaml_give_the_same_jobs(tmp_path: Path) -> None:
    """JSONL and YAML manifests describe rows the same way."""
    rows = [{"id": "x", "prompt": "p", "video": "v.mp4", "images": ["a.png"]}, {"prompt": "q", "video": "/abs/w.mov"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "m.yaml").write_text(
        "jobs:\n  - {id: x, prompt: p, video: v.mp4, images: [a.png]}\n  - {prompt: q, video: /abs/w.mov}\n"
    )
    from_jsonl = load_manifest(tmp_path / "m.jsonl")
    from_yaml = load_manifest(tmp_path / "m.yaml")
    assert [j.model_dump() for j in from_jsonl] == [j.model_dump() for j in from_yaml]
    assert from_jsonl[1].video == "/abs/w.mov"


def test_bad_rows_fail_alone_naming_row_file_and_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A row without a prompt, a broken JSON line or a duplicate id fails; the other rows load; an unknown
    key is said once and left out."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "ok", "prompt": "p", "video": "v.mp4"}\n'
        '{"id": "noprompt", "video": "v.mp4"}\n'
        "{not json\n"
        '{"id": "ok", "prompt": "p2", "video": "w.mp4"}\n'
        '{"id": "extra", "prompt": "p", "video": "v.mp4", "colour": "red"}\n'
    )
    jobs = load_manifest(manifest)
    assert [j.status for j in jobs] == ["pending", "failed", "failed", "failed", "pending"]
    assert "row 2" in jobs[1].error and str(manifest) in jobs[1].error and "prompt" in jobs[1].error
    assert "row 3" in jobs[2].error and "invalid JSON" in jobs[2].error
    assert "already used by row 1" in jobs[3].error
    assert all(j.error_stage == "manifest" for j in jobs[1:4])
    assert caplog.text.count("colour") == 1 and "left out of the requests" in caplog.text


def test_keep_audio_word_must_be_boolean(tmp_path: Path) -> None:
    """An unreadable keep_audio cell is that row's error."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt,video,keep_audio\np,v.mp4,maybe\n")
    (job,) = load_manifest(manifest)
    assert job.status == "failed" and "keep_audio 'maybe'" in job.error


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.csv", None, "file not found"),
        ("m.txt", "x", "unknown format"),
        ("m.yaml", "just: a mapping\n", "must be a list"),
    ],
)
def test_unreadable_manifest_raises(tmp_path: Path, name: str, content: str | None, reason: str) -> None:
    """A manifest that cannot be read at all stops the run with a clear reason."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ManifestError, match=reason):
        load_manifest(path)


def test_demo_manifest_loads_clean() -> None:
    """The committed demo manifest has no bad rows."""
    jobs = load_manifest(Path(__file__).parent.parent / "data" / "demo" / "manifest.csv")
    assert len(jobs) == 4 and all(j.status == "pending" for j in jobs)
    assert jobs[3].keep_audio is False and jobs[3].elements[0].references


SPREADSHEET = (
    "ID;Prompt;Video;Notes;KEEP_AUDIO\n"
    "shot-1;Make @Video1 snowy;a.mp4;client asked twice;no\n"
    "shot-2;Paint @Video1;b.mp4;;yes\n"
)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_a_saved_spreadsheet_loads_every_row(tmp_path: Path, caplog: pytest.LogCaptureFixture, encoding: str) -> None:
    """Capitalised headers, ';' as the delimiter, a BOM and an extra `notes` column: every row loads, the
    unknown column is said once and is in no job."""
    manifest = tmp_path / "sheet.csv"
    manifest.write_text(SPREADSHEET, encoding=encoding)
    jobs = load_manifest(manifest)
    assert [(j.job_id, j.status, j.keep_audio) for j in jobs] == [
        ("shot-1", "pending", False),
        ("shot-2", "pending", True),
    ]
    assert jobs[0].video == str(tmp_path / "a.mp4") and jobs[0].prompt == "Make @Video1 snowy"
    assert caplog.text.count("notes") == 1
    tabbed = tmp_path / "tabs.csv"
    tabbed.write_text(SPREADSHEET.replace(";", "\t"))
    assert [j.job_id for j in load_manifest(tabbed)] == ["shot-1", "shot-2"]


def test_a_latin1_manifest_is_told_to_be_saved_as_utf8(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("prompt,video\nCaf\u00e9 @Video1,a.mp4\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="save it as UTF-8"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("m.csv", ""),
        ("m.csv", "id,prompt,video\n"),
        ("m.jsonl", ""),
        ("m.jsonl", "\n\n"),
        ("m.yaml", ""),
        ("m.yaml", "jobs: []\n"),
    ],
)
def test_a_manifest_without_rows_is_one_error(tmp_path: Path, name: str, text: str) -> None:
    """Empty or header-only, in every format: the same error (the run exits 2), never '0/0 succeeded'."""
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match="the manifest has no rows"):
        load_manifest(tmp_path / name)


def test_a_folder_given_as_the_manifest_says_so(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="is a folder"):
        load_manifest(tmp_path)


def test_file_urls_are_paths_and_other_schemes_fail_their_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"id": "file", "prompt": "p", "video": f"file://{tmp_path}/my%20clip.mp4", "images": ["file:///abs/ref.png"]},
        {"id": "ftp", "prompt": "p", "video": "ftp://host/clip.mp4"},
        {"id": "s3-image", "prompt": "p", "video": "clip.mp4", "images": ["s3://bucket/ref.png"]},
        {"id": "web", "prompt": "p", "video": "https://example.com/clip.mp4"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    jobs = {j.job_id: j for j in load_manifest(manifest)}
    assert jobs["file"].video == str(tmp_path / "my clip.mp4") and jobs["file"].images == ["/abs/ref.png"]
    assert jobs["ftp"].status == "failed" and "ftp:// scheme is not supported" in jobs["ftp"].error
    assert "row 2 (ftp)" in jobs["ftp"].error
    assert jobs["s3-image"].status == "failed" and "s3://" in jobs["s3-image"].error
    assert jobs["web"].video == "https://example.com/clip.mp4" and jobs["web"].status == "pending"


def test_rows_naming_files_or_hosts_the_run_may_not_read_fail_alone(tmp_path: Path) -> None:
    """A confined run (deployment, inbox): `../` climbs and absolute paths out of the folder, and hosts off the
    allow-list, fail their own row naming row, manifest and reason; the other rows go on."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"s")
    manifest = folder / "batch.csv"
    manifest.write_text(
        "id,prompt,video\n"
        "ok,@Video1,clip.mp4\n"
        "climb,@Video1," + "../" * 16 + "etc/passwd\n"
        f"absolute,@Video1,{tmp_path / 'secret.mp4'}\n"
        "remote,@Video1,https://intranet.example/a.mp4\n"
        "cdn,@Video1,https://cdn.example.com/a.mp4\n"
    )
    policy = InputPolicy.confined([], ["cdn.example.com"], None, default_root=folder)
    jobs = {j.job_id: j for j in load_manifest(manifest, inputs=policy)}
    assert [j for j, r in jobs.items() if r.ok] == ["ok", "cdn"]
    assert jobs["climb"].error.startswith(f"row 2 (climb), file {manifest}: /etc/passwd is outside")
    assert jobs["climb"].error_stage == "manifest"
    assert "secret.mp4 is outside the allowed input folders" in jobs["absolute"].error
    assert "host 'intranet.example' is not in the allowed input hosts (cdn.example.com)" in jobs["remote"].error
    assert all(j.ok for j in load_manifest(manifest))  # a local run reads them all


def test_a_manifest_outside_the_allowed_folders_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt,video\na,@Video1,clip.mp4\n")
    with pytest.raises(ManifestError, match="is outside the allowed input folders"):
        load_manifest(manifest, inputs=InputPolicy(roots=(str(tmp_path / "elsewhere"),)))
