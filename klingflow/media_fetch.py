"""Bring a job's input to a local file: local paths are checked in place, http(s) URLs are streamed
into the work dir (atomically, with a byte ceiling) so preprocessing can probe and hash them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import httpx

from klingflow.errors import MediaError

CHUNK = 1 << 20


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


def download(url: str, dest_dir: Path, *, timeout_s: float, max_bytes: int) -> Path:
    """Stream a URL to dest_dir, named by the URL's hash and keeping its extension."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = Path(urlparse(url).path).suffix.lower()[:8]
    out = dest_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}{suffix}"
    tmp = out.with_name(f"{out.name}.{os.getpid()}.part")
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as resp:
            resp.raise_for_status()
            written = 0
            with open(tmp, "wb") as fh:
                for chunk in resp.iter_bytes(CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise MediaError(f"download is larger than {max_bytes} bytes")
                    fh.write(chunk)
    except httpx.HTTPStatusError as exc:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"download failed: HTTP {exc.response.status_code}") from exc
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"download failed: {exc.__class__.__name__}: {exc}") from exc
    except MediaError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return out
