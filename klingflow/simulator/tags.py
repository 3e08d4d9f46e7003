"""`X-Fal-Tags` as fal's gateway reads it: packed `key=value` pairs, the ones it rejects dropped silently.

fal's rules (docs, "Request tags"): the header packs every tag, comma-separated; each tag is split on
its FIRST `=` (a value may hold more) and the spaces around key and value are removed; a key is
`[a-z0-9._-]`, 1-64 characters, and not in the reserved `fal.` namespace; a value is at most 256
characters; at most 10 tags and 1024 bytes; "the limits count every tag you send, before fal removes
the duplicate keys", and of a key sent twice the last value wins. The gateway never fails a request
because of a tag: it drops each tag that breaks a rule.

Decisions where fal is silent: a pair without `=` is malformed (dropped); an empty value is a value
(kept); the 10 tags are the first 10 valid ones; the 1024 bytes are those of the kept tags packed
back as `k=v,k=v` (a tag that would go past them is dropped, a later one that still fits is kept).
"""

from __future__ import annotations

import re

KEY = re.compile(r"[a-z0-9._-]{1,64}")
RESERVED_PREFIX = "fal."
MAX_VALUE = 256
MAX_PAIRS = 10
MAX_BYTES = 1024


def valid_pair(raw: str) -> tuple[str, str] | None:
    """A tag as (key, value) with the spaces around both removed, or None if the gateway drops it."""
    key, sep, value = raw.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not KEY.fullmatch(key) or key.startswith(RESERVED_PREFIX) or len(value) > MAX_VALUE:
        return None
    return key, value


def parse_tags(header: str | None) -> dict[str, str]:
    """The tags the gateway keeps, in the order sent (a repeated key keeps its first place, last value)."""
    kept: list[tuple[str, str]] = []
    size = 0
    for raw in (header or "").split(","):
        pair = valid_pair(raw)
        if pair is None or len(kept) == MAX_PAIRS:
            continue
        grown = size + (1 if kept else 0) + len(f"{pair[0]}={pair[1]}".encode())
        if grown > MAX_BYTES:
            continue
        kept.append(pair)
        size = grown
    return dict(kept)
