"""`X-Fal-Tags` as fal's gateway reads it: packed `key=value` pairs, the ones it rejects dropped silently.

fal's limits: at most 10 pairs, key `[a-z0-9._-]` of at most 64 characters and not in the reserved
`fal.` namespace, value at most 256 characters, the whole header at most 1024 bytes.
"""

from __future__ import annotations

import re

KEY = re.compile(r"[a-z0-9._-]{1,64}")
MAX_VALUE = 256
MAX_PAIRS = 10
MAX_BYTES = 1024


def parse_tags(header: str | None) -> dict[str, str]:
    """The pairs the gateway keeps, in order: malformed or over-limit pairs are dropped, not refused."""
    if not header:
        return {}
    if len(header.encode()) > MAX_BYTES:
        header = header.encode()[:MAX_BYTES].decode(errors="ignore").rsplit(",", 1)[0]  # a cut pair is dropped
    kept: dict[str, str] = {}
    for pair in header.split(","):
        key, sep, value = pair.strip().partition("=")
        if not sep or not KEY.fullmatch(key) or key.startswith("fal.") or not value or len(value) > MAX_VALUE:
            continue
        if len(kept) < MAX_PAIRS:
            kept[key] = value
    return kept
