"""Content hashes are computed once per file version, and a changed file is hashed again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from klingflow.hashing import _sha256, sha256_file


def test_same_version_is_read_once_and_a_new_version_is_rehashed(tmp_path: Path) -> None:
    """A second ask for an unchanged file is a cache hit; rewriting it gives the new bytes' digest."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"first")
    assert sha256_file(path) == hashlib.sha256(b"first").hexdigest()
    hits = _sha256.cache_info().hits
    assert sha256_file(str(path)) == hashlib.sha256(b"first").hexdigest()
    assert _sha256.cache_info().hits == hits + 1
    path.write_bytes(b"second, longer")
    os.utime(path, ns=(1, 1))
    assert sha256_file(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_a_symlink_shares_its_targets_digest(tmp_path: Path) -> None:
    """Paths are resolved, so a link and its target are one file version."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"x" * 10)
    link = tmp_path / "l.bin"
    link.symlink_to(target)
    assert sha256_file(link) == sha256_file(target) == hashlib.sha256(b"x" * 10).hexdigest()
