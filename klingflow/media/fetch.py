"""Bring a job's input to a local file: local paths are checked in place, http(s) URLs are streamed
into the work dir (atomically, with a byte ceiling) so preprocessing can probe and hash them."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from klingflow.errors import DownloadError, MediaError
from klingflow.fal.transfer import download_sync


def is_url(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def check_local(path: str) -> Path:
    """The path if it is a readable regular file; MediaError saying what is wrong otherwise."""
    p = Path(path)
    if not p.exists():
        raise MediaError("file not found")
    if not p.is_file():
        raise MediaError("not a regular file")
    if not os.access(p, os.R_OK):
        raise MediaError("permission denied (file is not readable)")
    return p


def part_path(out: Path, suffix: str = "") -> Path:
    """A temporary sibling of `out`, unique per process and thread, to write and then rename."""
    return out.with_name(f"{out.name}.{os.getpid()}-{threading.get_ident()}.part{suffix}")


def download(
    url: str,
    dest_dir: Path,
    *,
    timeout_s: float,
    max_bytes: int,
    deadline_s: float | None = None,
    check: Callable[[str], None] | None = None,
) -> Path:
    """Stream a URL to dest_dir, named by the URL's hash and keeping its extension; `check` vets every URL
    requested, redirects included (it raises MediaError to refuse one).

    Runs its own event loop: preprocessing calls this from worker threads that have none.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = Path(urlparse(url).path).suffix.lower()[:8]
    out = dest_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}{suffix}"
    tmp = part_path(out)
    try:
        # tmp is gone on failure
        download_sync(url, tmp, timeout_s=timeout_s, deadline_s=deadline_s, max_bytes=max_bytes, check=check)
    except DownloadError as exc:
        reason = f"is larger than {max_bytes} bytes" if exc.too_large else f"failed: {exc}"
        raise MediaError(f"download {reason}") from exc
    tmp.replace(out)
    return out
