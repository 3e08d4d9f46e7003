"""fal's request history as the second source of truth, used as fal documents it.

fal lists an endpoint's requests (`GET /v1/models/requests/by-endpoint`) once they have started, with
their input payloads while payload storage is on, and has had incidents of data arriving hours late.
So absence is proven only over a settle window, and only when every listed request in it has its
payload (a request sent with `X-Fal-Store-IO: 0` by anyone could be the one we look for).

Two uses:
- `find_by_payload`: a submit whose answer was lost — is a request with exactly that input there?
- `RecentRequests`: before paying for work the ledger has never seen (a lost ledger, another state
  dir, another machine), a request with the same prompt and parameters whose inputs have the same bytes
  (hashed after download) is adopted instead of paying again. The endpoint's requests of the last 24 h
  are read once per run; then, right before each new submit, `before_submit` reads again what fal
  listed since the last read (minus the longest a request may wait to start: fal lists a request only
  once it started). Those reads are shared: at most one in flight, at most one every `min_interval_s`,
  and a job waits for a read that began after it asked (never a stale one).

Another state dir on this key (another laptop, another client) shows as listed requests of the adoption
window that this run's ledger does not know (`known_ids`), or that this run adopted. `before_submit`
then calls `on_peer` once (the caller warns), and before this run's first submit waits a short random
jitter and reads again, so that the other run's requests can start and be listed. `reverse` says which
of two such runs should take the manifest from its end: the one whose first listed request is the later
(both read the same history, so exactly one of them turns). The two meet once, in the middle: there the
turned run leaves the rows just ahead of the other run's listed frontier (`contest_rows` of them, more
than that run can have sent but fal not yet listed) to the other run, waiting for them to be listed and
adopting them, unless the other run stops making progress (`stall_s`).

What fal gives no way to see: a request still queued at fal (not started, so not listed) or started
within the history's lag. Two runs that submit one job within that window both pay (both started at
the same instant, before either could see the other); `klingflow reconcile` names them by job key.

Limits: only requests of the same key, in that window, that fal lists with payloads; an input URL that
no longer downloads cannot be compared.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from klingflow.endpoint import MAX_IMAGE_BYTES, MAX_VIDEO_BYTES
from klingflow.errors import DownloadError, FalError
from klingflow.fal.api import FalApi
from klingflow.fal.outcomes import HistoryItem
from klingflow.fal.submit import payload_sha256
from klingflow.hashing import sha256_file
from klingflow.models import JobRecord

LOOKBACK_S = 300.0  # clock skew and queueing margin before the "submitting" mark
ADOPTION_WINDOW = timedelta(hours=24)
HISTORY_SLICES = 6
REFRESH_INTERVAL_S = 1.0  # at most one history read per second, shared by every job about to submit
PEER_WINDOW = timedelta(minutes=10)  # requests sent this long before the run started count as a peer's activity
PEER_JITTER_S = (1.0, 5.0)  # random wait before the first submit once another run shows on the key
PEER_STALL_S = 60.0  # a turned run stops leaving rows to the other run once it listed nothing new this long


@dataclass(frozen=True)
class Sighting:
    """What the history says about one payload: the request if listed, and whether absence is provable."""

    item: HistoryItem | None
    complete: bool  # every request listed in the window has its payload


async def find_by_payload(fal: FalApi, digest: str, since_epoch: float, *, not_these: Collection[str] = ()) -> Sighting:
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
    """The endpoint's requests of the last 24 h (one paged read per run, then incremental reads before each new
    submit), to adopt work already paid for and to notice another run on this key."""

    def __init__(
        self,
        fal: FalApi,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        *,
        start_margin_s: float = 3600.0,
        min_interval_s: float = REFRESH_INTERVAL_S,
        known_ids: Callable[[], set[str]] | None = None,
        on_peer: Callable[[bool], None] | None = None,
        jitter_s: tuple[float, float] = PEER_JITTER_S,
        contest_rows: int = 6,
        stall_s: float = PEER_STALL_S,
    ) -> None:
        self._fal = fal
        self._log = logger or logging.getLogger(__name__)
        self._items: list[HistoryItem] | None = None
        self._lock = asyncio.Lock()
        self._digests: dict[str, str | None] = {}  # input URL -> sha256 of its bytes (None: not fetchable)
        self._prefetch: asyncio.Task[list[HistoryItem]] | None = None
        # incremental reads: each from the last read's start minus the longest a request may wait to start
        self._start_margin = timedelta(seconds=start_margin_s + LOOKBACK_S)
        self._min_interval_s = min_interval_s
        self._refresh_lock = asyncio.Lock()
        self._read_started: float | None = None  # monotonic time the newest read began
        self._read_from: datetime | None = None  # wall-clock time the newest read began
        self._refresh_failed = False
        self.reads = 0  # history reads made (the first one's slices count as one)
        # another run on this key
        self._known_ids = known_ids
        self._on_peer = on_peer
        self._jitter_s = jitter_s
        self._jitter: asyncio.Task[None] | None = None
        self._run_start = datetime.now(UTC)
        self.adopted: set[str] = set()  # request ids this run adopted (another run's work)
        self.submits = 0  # new submits this run let through
        self.peer: str | None = None  # why another run is thought to use this key (None: none seen)
        self.reverse = False  # take the manifest from its end (the later of two runs on one key)
        self._contest_rows = contest_rows
        self._stall_s = stall_s
        self._rows: dict[str, list[int]] = {}  # prompt -> manifest rows (to place the other run's requests)
        self._peer_rows: set[int] = set()  # rows the other run's listed requests are for
        self._peer_moved = time.monotonic()  # when the other run last showed a new row

    def expect(self, jobs: list[JobRecord]) -> RecentRequests:
        """The manifest's rows: where another run's listed requests are in it (its frontier)."""
        for job in jobs:
            self._rows.setdefault(job.prompt, []).append(job.row)
        return self

    def prefetch(self) -> RecentRequests:
        """Start reading the history now, in the background (a run reads it while its inputs are prepared:
        measured, 1.2 s for 2,000 requests at a busy run's start)."""
        self._prefetch = asyncio.create_task(self.items())
        return self

    async def items(self) -> list[HistoryItem]:
        async with self._lock:
            if self._items is None:
                self._read_started, self._read_from = time.monotonic(), datetime.now(UTC)
                self.reads += 1
                try:
                    self._items = await self._read_window(self._read_from)
                except FalError as exc:
                    self._items = []  # no history, no adoption: the ledger alone decides
                    self._log.warning(
                        "fal's request history could not be read (%s): jobs the request ledger has never seen "
                        "are paid for without checking whether fal already did them",
                        exc,
                    )
            return self._items

    async def refresh(self) -> list[HistoryItem]:
        """The items as of a read that began after this call: reads are shared (one in flight; the jobs that
        asked before it began all take it) and at most one every `min_interval_s`; each reads only what was
        sent since the previous read began, minus the start margin, and merges it in."""
        asked = time.monotonic()
        items = await self.items()
        async with self._refresh_lock:
            if self._read_started is not None and self._read_started >= asked:
                return self._items or items  # a read that began after we asked has finished meanwhile
            if self._read_started is not None:
                await asyncio.sleep(max(0.0, self._read_started + self._min_interval_s - time.monotonic()))
            since = (self._read_from or datetime.now(UTC)) - self._start_margin
            self._read_started, self._read_from = time.monotonic(), datetime.now(UTC)
            self.reads += 1
            try:
                fresh = await self._fal.history(start=since)
            except FalError as exc:
                if not self._refresh_failed:
                    self._refresh_failed = True
                    self._log.warning(
                        "fal's request history could not be read again before a submit (%s): another run's "
                        "newest requests on this key may be paid for twice",
                        exc,
                    )
                return self._items or items
            merged = {i.request_id: i for i in self._items or items}
            merged.update((i.request_id, i) for i in fresh)
            self._items = list(merged.values())
            return self._items

    async def before_submit(self, job: JobRecord) -> HistoryItem | None:
        """Right before a new request for `job` is paid for: a listed request that already does this work
        (adopt it), else None (submit). Notices another run on this key; before this run's first submit it
        then waits a short jitter and looks once more."""
        items = await self.refresh()
        self._watch(items)
        if self.peer and self.submits == 0 and self._jitter_s[1] > 0:
            if self._jitter is None:
                self._jitter = asyncio.create_task(asyncio.sleep(random.uniform(*self._jitter_s)))  # noqa: S311
            await asyncio.shield(self._jitter)
            items = await self.refresh()
            self._watch(items)
        found = await self.same_work(job, items)
        while found is None and self._contested(job):  # the other run is about to do it: let it, and adopt
            items = await self.refresh()
            self._watch(items)
            found = await self.same_work(job, items)
        if found is None:
            self.submits += 1
        return found

    def _contested(self, job: JobRecord) -> bool:
        """Whether this (turned) run should leave `job` to the other run: the other run, going up the manifest,
        has listed a row just below it, and listed something new in the last `stall_s` seconds."""
        if not self.reverse or time.monotonic() - self._peer_moved > self._stall_s:
            return False
        return any(job.row - self._contest_rows <= row < job.row for row in self._peer_rows)

    def _watch(self, items: list[HistoryItem]) -> None:
        """Whether another run uses this key: listed requests of the adoption window this run's ledger does not
        know, or that it adopted (a laptop that shared the key yesterday shows before anything is spent); and,
        from those of the last minutes, which of two runs takes the manifest from its end and where the other
        one is in it."""
        if self._known_ids is None:
            return
        known = self._known_ids() - self.adopted
        unknown = [i for i in items if i.request_id not in known]
        if not unknown:
            return
        if self.peer is None:
            self.peer = f"{len(unknown)} request(s) of the last 24 h that this run's request ledger does not know"
            if self._on_peer is not None:
                self._on_peer(self.submits == 0)
        recent = [i for i in items if i.sent_at is None or i.sent_at >= self._run_start - PEER_WINDOW]
        theirs = [i for i in recent if i.request_id not in known]
        if not theirs:
            return
        self.reverse = _earliest([i for i in recent if i.request_id in known]) > _earliest(theirs)
        rows = {row for i in theirs if i.has_payload for row in self._rows.get(i.json_input.get("prompt"), [])}
        if not rows <= self._peer_rows:
            self._peer_rows |= rows
            self._peer_moved = time.monotonic()

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

    async def same_work(self, job: JobRecord, items: list[HistoryItem] | None = None) -> HistoryItem | None:
        """A started or succeeded request with this job's prompt, parameters and input bytes, if any (the one
        sent first when there are several)."""
        listed = await self.items() if items is None else items
        for item in sorted(listed, key=_sent):
            if item.status_code not in (None, 200) or not _same_parameters(item, job):
                continue
            if await self._same_inputs(item, job):
                self.adopted.add(item.request_id)
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


_NEVER = datetime.max.replace(tzinfo=UTC)


def _sent(item: HistoryItem) -> tuple[datetime, str]:
    return (item.sent_at or _NEVER, item.request_id)


def _earliest(items: list[HistoryItem]) -> tuple[datetime, str]:
    """The first sent of `items` (their order is fal's clock: two runs reading one history agree on it)."""
    return min((_sent(i) for i in items), default=(_NEVER, ""))
