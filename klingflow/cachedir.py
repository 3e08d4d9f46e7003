"""diskcache with JSON values in a directory only the user can read.

diskcache's default Disk pickles values (CVE-2025-69872: a writable cache dir means code
execution); JSONDisk stores plain JSON instead. Every klingflow cache opens through here.
"""

from __future__ import annotations

import os
from pathlib import Path

import diskcache


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and parents) with mode 0700 and tighten it if it already exists."""
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)
    return p


def open_json_cache(path: str | os.PathLike[str]) -> diskcache.Cache:
    """A diskcache.Cache that stores JSON (never pickles) under a private directory."""
    return diskcache.Cache(str(private_dir(path)), disk=diskcache.JSONDisk, disk_compress_level=0)
