"""Manifest loading: formats, path resolution, per-row errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klingflow.errors import ManifestError
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


def test_bad_rows_fail_alone_naming_row_file_and_reason(tmp_path: Path) -> None:
    """A row without a prompt, a broken JSON line or a duplicate id fails; the other rows load."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "ok", "prompt": "p", "video": "v.mp4"}\n'
        '{"id": "noprompt", "video": "v.mp4"}\n'
        "{not json\n"
        '{"id": "ok", "prompt": "p2", "video": "w.mp4"}\n'
        '{"id": "extra", "prompt": "p", "video": "v.mp4", "colour": "red"}\n'
    )
    jobs = load_manifest(manifest)
    assert [j.status for j in jobs] == ["pending", "failed", "failed", "failed", "failed"]
    assert "row 2" in jobs[1].error and str(manifest) in jobs[1].error and "prompt" in jobs[1].error
    assert "row 3" in jobs[2].error and "invalid JSON" in jobs[2].error
    assert "already used by row 1" in jobs[3].error
    assert "colour" in jobs[4].error
    assert all(j.error_stage == "manifest" for j in jobs[1:])


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
