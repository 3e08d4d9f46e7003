"""Job identity: the key of the paid work a job asks for.

Two jobs with the same key would buy the same output: the same preprocessed bytes (video and every
image), the same prompt and parameters, the same endpoint. A job whose key already has a result is
not paid for again. The key ignores file names and manifest ids on purpose.
"""

from __future__ import annotations

import hashlib
import json

from klingflow.hashing import sha256_file
from klingflow.models import JobRecord

KEY_VERSION = 1


def job_key(record: JobRecord, endpoint: str) -> str:
    """SHA-256 over a canonical JSON of everything that determines the output."""
    identity = {
        "v": KEY_VERSION,
        "endpoint": endpoint,
        "video": record.input_sha256,
        "images": [sha256_file(p) for p in record.prepared_images],
        "elements": [
            {"frontal": sha256_file(e.frontal), "references": [sha256_file(r) for r in e.references]}
            for e in record.prepared_elements
        ],
        "prompt": record.prompt,
        "keep_audio": record.keep_audio,
        "shot_type": record.shot_type,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def with_job_key(record: JobRecord, endpoint: str) -> JobRecord:
    """The record with its job_key set (failed records pass through)."""
    if not record.ok or record.input_sha256 is None:
        return record
    return record.with_(job_key=job_key(record, endpoint))
