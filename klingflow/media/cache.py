"""Transcode cache: (source sha256, settings digest) -> normalized file, so the same bytes with the
same settings are never transcoded twice, across runs and workers sharing the state dir.

The index is diskcache with JSONDisk (values stay JSON: the default pickle disk executes code on
load, CVE-2025-69872) in a 0700 directory. A hit is only trusted if the file still exists with the
recorded size and sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from klingflow.cachedir import open_json_cache, private_dir
from klingflow.hashing import sha256_file


class CacheEntry(BaseModel):
    """A normalized file as the index records it."""

    path: str
    sha256: str
    size_bytes: int
    actions: list[str]
    probe: dict


class TranscodeCache:
    """JSON index of normalized files under `directory`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = private_dir(Path(directory))
        self._index = open_json_cache(self.directory)  # opened by the job that needs it, closed after

    @staticmethod
    def key(source_sha256: str, settings_digest: str) -> str:
        return f"{source_sha256}:{settings_digest}"

    def get(self, source_sha256: str, settings_digest: str) -> CacheEntry | None:
        """The cached entry if its file is still there, unchanged; else None (and the entry is dropped)."""
        key = self.key(source_sha256, settings_digest)
        raw = self._index.get(key)
        if raw is None:
            return None
        entry = CacheEntry.model_validate(raw)
        path = Path(entry.path)
        if path.is_file() and path.stat().st_size == entry.size_bytes and sha256_file(path) == entry.sha256:
            return entry
        self._index.delete(key)
        return None

    def put(self, source_sha256: str, settings_digest: str, entry: CacheEntry) -> None:
        self._index.set(self.key(source_sha256, settings_digest), entry.model_dump(mode="json"))

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> TranscodeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
