"""The simulated fal CDN: files on disk under state_dir/files, addressed by loopback URLs.

A file lives at files/<slot>/<name> (slot = random id, one file per slot) with its content type in
files/<slot>/.meta. Its access URL is {base}/files/<slot>/<name>. Because the URL path alone locates
the file, any loopback URL of ours resolves to disk even after a restart on another port.
Multipart uploads stage parts in multipart/<upload_id>/ until `complete` assembles them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})  # noqa: S104 - a name, not a bind
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class StorageError(Exception):
    """A storage operation cannot be done (unknown upload, bad part list...)."""


def safe_name(name: str | None, default: str = "upload.bin") -> str:
    """A file name safe as one path segment (fal_client sends a basename; be strict anyway)."""
    cleaned = _SAFE_NAME.sub("_", os.path.basename(name or "")).lstrip(".")
    return cleaned[:200] or default


def new_id() -> str:
    """A random URL-safe id for slots, uploads and requests' files."""
    return secrets.token_urlsafe(12)


class Storage:
    """Files and multipart sessions under one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.files_dir = state_dir / "files"
        self.multipart_dir = state_dir / "multipart"
        self.tmp_dir = state_dir / "tmp"
        for d in (self.files_dir, self.multipart_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- addressing -------------------------------------------------------------------------
    def path(self, slot: str, name: str) -> Path:
        """The on-disk path of a stored file (raises StorageError for malformed ids)."""
        if not _ID.match(slot) or safe_name(name) != name:
            raise StorageError("no such file")
        return self.files_dir / slot / name

    @staticmethod
    def url(base: str, slot: str, name: str) -> str:
        """The absolute access URL of a stored file."""
        return f"{base.rstrip('/')}/files/{slot}/{quote(name)}"

    def resolve_url(self, url: str) -> Path | None:
        """The local file behind one of our loopback file URLs (any port), or None."""
        parts = urlsplit(url)
        segments = unquote(parts.path).strip("/").split("/")
        if parts.hostname not in LOOPBACK_HOSTS or len(segments) != 3 or segments[0] != "files":
            return None
        try:
            path = self.path(segments[1], segments[2])
        except StorageError:
            return None
        return path if path.is_file() else None

    def content_type(self, slot: str, name: str) -> str:
        """The content type recorded at upload time."""
        meta = self.files_dir / slot / ".meta"
        if meta.exists():
            return json.loads(meta.read_text()).get("content_type") or "application/octet-stream"
        return "video/mp4" if name.endswith(".mp4") else "application/octet-stream"

    # --- writing ----------------------------------------------------------------------------
    def new_slot(self, name: str, content_type: str) -> tuple[str, str]:
        """Reserve a slot for a file and record its content type; returns (slot, safe name)."""
        slot, name = new_id(), safe_name(name)
        (self.files_dir / slot).mkdir(parents=True)
        (self.files_dir / slot / ".meta").write_text(json.dumps({"content_type": content_type}))
        return slot, name

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path in tmp/ (callers move it into a slot or delete it)."""
        return self.tmp_dir / f"{new_id()}{suffix}"

    def adopt(self, src: Path, slot: str, name: str) -> Path:
        """Move a finished temp file into its slot atomically."""
        dst = self.path(slot, name)
        os.replace(src, dst)
        return dst

    async def write_stream(self, dst: Path, chunks: AsyncIterator[bytes]) -> tuple[int, str]:
        """Write a request body to `dst` via a temp file; returns (bytes, md5 hex)."""
        tmp = self.temp_path(".part")
        digest, size = hashlib.md5(usedforsecurity=False), 0
        try:
            with tmp.open("wb") as f:
                async for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return size, digest.hexdigest()

    # --- multipart ----------------------------------------------------------------------------
    def create_multipart(self, slot: str, name: str) -> str:
        """Start a multipart upload into a reserved slot; returns the upload id."""
        upload_id = new_id()
        session = self.multipart_dir / upload_id
        session.mkdir()
        (session / "target.json").write_text(json.dumps({"slot": slot, "name": name}))
        return upload_id

    def part_path(self, slot: str, name: str, upload_id: str, part_number: int) -> Path:
        """Where one part of a known upload is staged."""
        session = self._session(slot, name, upload_id)
        if not 1 <= part_number <= 10_000:
            raise StorageError("part number out of range")
        return session / f"{part_number:05d}.part"

    @staticmethod
    def record_etag(part: Path, etag: str) -> None:
        """Remember a staged part's etag (md5 hex) for the completion check."""
        part.with_suffix(".etag").write_text(etag)

    async def stage_part(
        self, slot: str, name: str, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]
    ) -> str:
        """Write one part of a known upload and remember its etag (md5 hex, returned); StorageError if unknown."""
        part = self.part_path(slot, name, upload_id, part_number)
        _, md5 = await self.write_stream(part, chunks)
        self.record_etag(part, md5)
        return md5

    def complete_multipart(self, slot: str, name: str, upload_id: str, parts: dict[int, str]) -> int:
        """Assemble parts (partNumber -> etag, in any order) into the file; returns its size.

        Blocking (copies up to GBs): run it in a worker thread.
        """
        session = self._session(slot, name, upload_id)
        if not parts:
            raise StorageError("no parts given")
        tmp = self.temp_path(".assembling")
        try:
            with tmp.open("wb") as out:
                for number in sorted(parts):
                    part = session / f"{number:05d}.part"
                    if not part.exists():
                        raise StorageError(f"part {number} was not uploaded")
                    if parts[number].strip('"') != part.with_suffix(".etag").read_text():
                        raise StorageError(f"etag mismatch for part {number}")
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 4 * 1024 * 1024)
            size = tmp.stat().st_size
            self.adopt(tmp, slot, name)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(session, ignore_errors=True)
        return size

    def _session(self, slot: str, name: str, upload_id: str) -> Path:
        session = self.multipart_dir / upload_id
        target = session / "target.json"
        if not _ID.match(upload_id) or not target.exists():
            raise StorageError("unknown upload id")
        if json.loads(target.read_text()) != {"slot": slot, "name": name}:
            raise StorageError("upload id does not belong to this file")
        return session
