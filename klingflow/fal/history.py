"""fal's request history as the second source of truth, used as fal documents it.

fal lists an endpoint's requests (`GET /v1/models/requests/by-endpoint`) once they have started, with
their input payloads while payload storage is on, and has had incidents of data arriving hours late.
So absence is proven only over a settle window, and only when every listed request in it has its
payload (a request sent with `X-Fal-Store-IO: 0` by anyone could be the one we look for).

Two uses:
- `find_by_payload`: a submit whose answer was lost — is a request with exactly that input there?
- `RecentRequests`: before paying for work the ledger has never seen (a lost ledger, another state
  dir, another machine), the endpoint's requests of the last 24 h are read once per run and a request
  with the same prompt and parameters whose inputs have the same bytes (hashed after download) is
  adopted instead of paying again. Limits: only requests of the same key, in that window, that fal
  lists with payloads; an input URL that no longer downloads cannot be compared.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from klingflow.endpoint import MAX_IMAGE_BYTES, MAX_VIDEO_BYTES
from klingflow.errors import DownloadError, FalError
from klingflow.fal.outcomes import HistoryItem
from klingflow.fal.queue import FalQueue
from klingflow.fal.submit import payload_sha256
from klingflow.hashing import sha256_file
from klingflow.models import JobRecord

LOOKBACK_S = 300.0  # clock skew and queueing margin before the "submitting" mark
ADOPTION_WINDOW = timedelta(hours=24)
HISTORY_SLICES = 6


@dataclass(frozen=True)
class Sighting:
    """What the history says about one payload: the request if listed, and whether absence is provable."""

    item: HistoryItem | None
    complete: bool  # every request listed in the window has its payload


async def find_by_payload(
    fal: FalQueue, digest: str, since_epoch: float, *, not_these: Collection[str] = ()
) -> Sighting:
    """The request whose input hashes to `digest`, sent after `since_epoch` (raises FalError if unreadable).

    A job sent again (after a cancel, a failure, or with force) sends the very same input: within LOOKBACK_S
    the history may list the earlier attempts' requests too, and fal's clock cannot tell them apart from ours.
    `not_these` are those requests (the ledger knows them): never the one looked for, even while the history
    does not list that one yet."""
    start = datetime.fromtimestamp(since_epoch - LOOKBACK_S, UTC)
    items = await fal.history(start=start)
    match = next(
        (
            i
            for i in items
            if i.has_payload and i.request_id not in not_these and payload_sha256(i.json_input) == digest
        ),
        None,
    )
    return Sighting(match, all(i.has_payload for i in items))


class RecentRequests:
    """The endpoint's requests of the last 24 h (one paged read per run), to adopt work already paid for."""

    def __init__(self, fal: FalQueue, logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self._fal = fal
        self._log = logger or logging.getLogger(__name__)
        self._items: list[HistoryItem] | None = None
        self._lock = asyncio.Lock()
        self._digests: dict[str, str | None] = {}  # input URL -> sha256 of its bytes (None: not fetchable)
        self._prefetch: asyncio.Task[list[HistoryItem]] | None = None

    def prefetch(self) -> RecentRequests:
        """Start reading the history now, in the background (a run reads it while its inputs are prepared:
        measured, 1.2 s for 2,000 requests at a busy run's start)."""
        self._prefetch = asyncio.create_task(self.items())
        return self

    async def items(self) -> list[HistoryItem]:
        async with self._lock:
            if self._items is None:
                try:
                    self._items = await self._read_window(datetime.now(UTC))
                except FalError as exc:
                    self._items = []  # no history, no adoption: the ledger alone decides
                    self._log.warning(
                        "fal's request history could not be read (%s): jobs the request ledger has never seen "
                        "are paid for without checking whether fal already did them",
                        exc,
                    )
            return self._items

    async def _read_window(self, now: datetime) -> list[HistoryItem]:
        """The adoption window read as HISTORY_SLICES time slices at once: the pages of one slice follow each
        other's cursors, so 2,000 requests in one slice take 20 round trips in a row, in six slices about
        four each (and each slice has its own page cap)."""
        step = ADOPTION_WINDOW / HISTORY_SLICES
        starts = [now - ADOPTION_WINDOW + i * step for i in range(HISTORY_SLICES)]
        ends = [*starts[1:], None]  # the newest slice is open-ended: a request sent a moment ago is listed
        reads = (self._fal.history(start=s, end=e) for s, e in zip(starts, ends, strict=True))
        slices = await asyncio.gather(*reads, return_exceptions=True)  # every slice ends before this one does
        if failed := next((part for part in slices if isinstance(part, BaseException)), None):
            raise failed
        return [item for part in reversed(slices) if isinstance(part, list) for item in part]

    async def same_work(self, job: JobRecord) -> HistoryItem | None:
        """A started or succeeded request with this job's prompt, parameters and input bytes, if any."""
        for item in await self.items():
            if item.status_code not in (None, 200) or not _same_parameters(item, job):
                continue
            if await self._same_inputs(item, job):
                return item
        return None

    async def _same_inputs(self, item: HistoryItem, job: JobRecord) -> bool:
        payload = item.json_input
        if await self._digest(payload.get("video_url"), MAX_VIDEO_BYTES) != job.input_sha256:
            return False
        wanted = [*job.prepared_images, *(p for e in job.prepared_elements for p in (e.frontal, *e.references))]
        given = [
            *payload.get("image_urls", []),
            *(
                u
                for e in payload.get("elements", [])
                for u in (e.get("frontal_image_url"), *e.get("reference_image_urls", []))
            ),
        ]
        if len(wanted) != len(given):
            return False
        for path, url in zip(wanted, given, strict=True):
            if await self._digest(url, MAX_IMAGE_BYTES) != await asyncio.to_thread(sha256_file, path):
                return False
        return True

    async def _digest(self, url: object, max_bytes: int) -> str | None:
        if not isinstance(url, str):
            return None
        if url not in self._digests:
            with tempfile.TemporaryDirectory(prefix="klingflow-adopt-") as tmp:
                path = Path(tmp) / "input"
                try:
                    await self._fal.download(url, path, max_bytes=max_bytes)
                    self._digests[url] = await asyncio.to_thread(sha256_file, path)
                except (DownloadError, OSError, FalError):
                    self._digests[url] = None
        return self._digests[url]


def _same_parameters(item: HistoryItem, job: JobRecord) -> bool:
    payload = item.json_input
    return (
        item.has_payload
        and payload.get("prompt") == job.prompt
        and payload.get("keep_audio", True) == job.keep_audio
        and payload.get("shot_type", job.shot_type) == job.shot_type
        and len(payload.get("image_urls") or []) == len(job.prepared_images)
        and len(payload.get("elements") or []) == len(job.prepared_elements)
    )
