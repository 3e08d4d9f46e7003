"""FalQueue: fal (or the simulator) for one run — the project's one interface to it.

One pooled httpx client per run carries every queue, result, history and download request, with the
one Authorization header added only for fal's own API hosts (never for storage URLs). Uploads go
through the real fal_client (fal's CDN token, single-part and multipart protocol), pointed at the
target for the run by klingflow.fal.urls. Every httpx / fal_client error is translated here into the
typed outcomes of klingflow.fal.outcomes or the FalError tree, so callers decide on meaning, not codes.

Retries, by what they risk: the submit POST is sent once and repeated only when it provably never
reached the queue (refused connection, 429); reads (status, result, history) and cancels are
repeated with backoff within the call, since they buy nothing; uploads are repeated too (free).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import fal_client
import httpx

from klingflow import __version__
from klingflow.endpoint import ENDPOINT_ID, EditOutput
from klingflow.errors import DownloadError, FalError, FalRejected, FalTransient
from klingflow.fal.outcomes import (
    Accepted,
    BillingEvent,
    CancelReply,
    Done,
    Failure,
    HistoryItem,
    Output,
    Price,
    Queued,
    QueueStatus,
    Rejected,
    Result,
    Running,
    SubmitOutcome,
    Unknown,
)
from klingflow.fal.transfer import stream_to_file
from klingflow.fal.urls import FAL_PLATFORM_URL, FAL_QUEUE_URL, fal_client_pointed_at
from klingflow.models import Backend

T = TypeVar("T")
TIMEOUT = httpx.Timeout(120.0, connect=15.0)
SUBMIT_CONNECT_RETRIES = 8
READ_ATTEMPTS = 5
# Idle connections kept open. httpcore checks every idle connection's socket on each request it queues
# or finishes (measured: 13% of a 1,000-job run's samples, 30% of its event loop's, with 50 kept; under 2%
# with 8); requests last milliseconds, so a few connections serve 50 jobs' polls, and a burst opens more
# for the moment.
KEEPALIVE = 8
HISTORY_PAGE = 100
HISTORY_MAX_PAGES = 20
BILLING_PAGE = 1000
BILLING_MAX_PAGES = 200
BILLING_IDS_PER_CALL = 50  # fal's billing events take 1-50 request ids per call


@dataclass(frozen=True)
class Target:
    """Where fal is: the real fal.ai, or a simulator at a base URL."""

    kind: Backend
    queue_url: str
    platform_url: str

    @classmethod
    def fal(cls) -> Target:
        return cls(Backend.fal, FAL_QUEUE_URL, FAL_PLATFORM_URL)

    @classmethod
    def simulator(cls, base_url: str) -> Target:
        base = base_url.rstrip("/")
        return cls(Backend.simulator, base, f"{base}/v1")

    @property
    def redirect(self) -> str | None:
        """The base URL fal_client must be pointed at (None: its own defaults, the real fal.ai)."""
        return None if self.kind is Backend.fal else self.queue_url

    @property
    def namespace(self) -> str:
        """Identifies where uploaded URLs live, for the upload cache's keys."""
        return "fal" if self.kind is Backend.fal else f"sim@{self.queue_url}"

    @property
    def label(self) -> str:
        """The report's `backend` column (never includes the key)."""
        return "fal" if self.kind is Backend.fal else f"simulator ({self.queue_url})"


@dataclass
class Backoff:
    """Exponential backoff with jitter, honouring Retry-After; `base_s=0` in tests that count calls."""

    attempts: int = READ_ATTEMPTS
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return min(self.max_s, retry_after_s)
        return min(self.max_s, self.base_s * 2**attempt) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter


@dataclass
class FalQueue:
    """The run's connection to fal: `async with FalQueue(target, key) as fal: ...`."""

    target: Target
    key: str = field(repr=False)
    endpoint: str = ENDPOINT_ID
    backoff: Backoff = field(default_factory=Backoff)
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)
    _uploader: fal_client.AsyncClient | None = field(default=None, init=False, repr=False)
    _pointed: Any = field(default=None, init=False, repr=False)

    # --- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> FalQueue:
        self._pointed = fal_client_pointed_at(self.target.redirect)
        self._pointed.__enter__()
        self._http = httpx.AsyncClient(
            timeout=TIMEOUT,
            headers={"User-Agent": f"klingflow/{__version__}"},
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=KEEPALIVE),
            trust_env=self.target.kind is Backend.fal,  # loopback traffic never goes through a proxy
        )
        self._uploader = fal_client.AsyncClient(key=self.key)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._http is not None:
                await self._http.aclose()
        finally:
            self._http = self._uploader = None
            self._pointed.__exit__(exc_type, exc, tb)

    @property
    def label(self) -> str:
        return self.target.label

    @property
    def namespace(self) -> str:
        return self.target.namespace

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise FalError("the fal queue is not open (use `async with FalQueue(...)`)")
        return self._http

    def _auth(self) -> dict[str, str]:
        """The one Authorization header, for fal's API hosts only."""
        return {"Authorization": f"Key {self.key}"}

    def request_url(self, request_id: str, suffix: str = "") -> str:
        """fal's queue URLs of a request use the app's owner/alias only (fal-protocol.md section 2)."""
        owner, alias, *_ = self.endpoint.split("/")
        return f"{self.target.queue_url}/{owner}/{alias}/requests/{request_id}{suffix}"

    # --- the edge: one request, translated ----------------------------------------------------------
    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One authenticated API request; a transport failure is FalTransient (nothing decided)."""
        try:
            return await self.http.request(method, url, headers=self._auth(), **kwargs)
        except httpx.HTTPError as exc:
            raise FalTransient(f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__) from exc

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        """429 and 5xx are transient; other 4xx a rejection; 2xx/3xx pass."""
        code = response.status_code
        if code == 429 or code >= 500:
            raise FalTransient(f"HTTP {code}", status=code, retry_after_s=_retry_after(response))
        if code >= 400:
            raise FalRejected(f"HTTP {code}: {error_text(response)}", status=code)

    async def _retrying(self, call: Callable[[], Awaitable[T]], attempts: int | None = None) -> T:
        """Repeat a free call (read, cancel, upload) on FalTransient with backoff; re-raise the last one."""
        attempts = attempts or self.backoff.attempts
        for attempt in range(attempts):
            try:
                return await call()
            except FalTransient as exc:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(self.backoff.delay(attempt, exc.retry_after_s))
        raise AssertionError("unreachable")

    # --- uploads ------------------------------------------------------------------------------------
    async def upload(self, path: str | Path) -> str:
        """Upload a file to fal storage (repeated on failure: uploads are free); its URL."""
        if self._uploader is None:
            raise FalError("the fal queue is not open")
        uploader = self._uploader

        async def once() -> str:
            try:
                return await uploader.upload_file(Path(path))
            except (fal_client.FalClientError, httpx.HTTPError) as exc:
                raise FalTransient(f"upload failed: {exc.__class__.__name__}: {exc}") from exc

        return await self._retrying(once)

    async def is_served(self, url: str) -> bool:
        """Whether a stored file's URL still answers (405: HEAD not allowed, but the URL exists)."""
        try:
            response = await self.http.head(url, follow_redirects=True, timeout=15)
        except httpx.HTTPError:
            return False
        return response.status_code < 400 or response.status_code == 405

    async def download(self, url: str, path: Path, *, max_bytes: int | None = None) -> int:
        """Stream an output to `path` (no auth header: a storage URL); repeated on 429/5xx/transport errors."""
        for attempt in range(self.backoff.attempts):
            try:
                return await stream_to_file(self.http, url, path, max_bytes=max_bytes)
            except DownloadError as exc:
                if not exc.retryable or attempt == self.backoff.attempts - 1:
                    raise
            await asyncio.sleep(self.backoff.delay(attempt))
        raise AssertionError("unreachable")

    # --- the queue ----------------------------------------------------------------------------------
    async def submit_once(self, arguments: dict[str, Any], *, headers: dict[str, str] | None = None) -> SubmitOutcome:
        """POST the request; resent only when it provably did not reach the queue (refused, 429)."""
        url = f"{self.target.queue_url}/{self.endpoint}"
        for attempt in range(SUBMIT_CONNECT_RETRIES + 1):
            try:
                response = await self.http.post(url, json=arguments, headers={**self._auth(), **(headers or {})})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the queue
                if attempt == SUBMIT_CONNECT_RETRIES:
                    return Rejected(f"cannot connect to {self.label}: {exc}")
                await asyncio.sleep(self.backoff.delay(attempt))
                continue
            except httpx.HTTPError as exc:
                return Unknown(f"{exc.__class__.__name__} after the request was sent")
            if response.status_code != 429:
                return _submit_outcome(response)
            if attempt == SUBMIT_CONNECT_RETRIES:
                return Rejected("rate limited (HTTP 429) on every attempt", status=429)
            await asyncio.sleep(self.backoff.delay(attempt, _retry_after(response)))
        raise AssertionError("unreachable")

    async def status(self, request_id: str, *, logs: bool = True) -> QueueStatus:
        """The request's queue status (FalTransient after retries; FalRejected for an unknown id)."""

        async def once() -> QueueStatus:
            response = await self._send("GET", self.request_url(request_id, "/status"), params={"logs": int(logs)})
            self._raise_for(response)
            return _status(_json(response))

        return await self._retrying(once)

    async def result(self, request_id: str) -> Result:
        """The finished request's result: its output and bill, or the error fal ended it with."""

        async def once() -> Result:
            response = await self._send("GET", self.request_url(request_id))
            code = response.status_code
            if code == 429 or (code >= 500 and not _is_request_error(response)):
                raise FalTransient(f"HTTP {code}", status=code, retry_after_s=_retry_after(response))
            if code == 404:
                raise FalRejected(f"HTTP 404: {error_text(response)}", status=404)
            if code >= 400:
                return Failure(code, error_text(response), response.headers.get("x-fal-error-type"), _units(response))
            try:
                output = EditOutput.model_validate(response.json())
            except ValueError as exc:
                raise FalTransient(f"unreadable result ({exc})", status=code) from exc
            return Output(output.video.url, _units(response))

        return await self._retrying(once)

    async def cancel(self, request_id: str, *, attempts: int | None = None) -> CancelReply:
        """Ask fal to cancel; only a `requested` reply followed by a cancelled result is a cancel."""

        async def once() -> CancelReply:
            response = await self._send("PUT", self.request_url(request_id, "/cancel"))
            if response.status_code == 404:
                return CancelReply.not_found
            if response.status_code == 400:
                return CancelReply.already_completed
            self._raise_for(response)
            return CancelReply(_json(response).get("status", CancelReply.requested.value))

        return await self._retrying(once, attempts)

    async def history(
        self, *, start: datetime, end: datetime | None = None, request_id: str | None = None, payloads: bool = True
    ) -> list[HistoryItem]:
        """The endpoint's requests in fal's request history sent in [start, end) (all pages, bounded)."""
        params: dict[str, Any] = {
            "endpoint_id": self.endpoint,
            "start": start.isoformat(timespec="seconds"),
            "limit": HISTORY_PAGE,
        }
        if end is not None:
            params["end"] = end.isoformat(timespec="seconds")
        if payloads:
            params["expand"] = "payloads"
        if request_id:
            params["request_id"] = request_id
        url = f"{self.target.platform_url}/models/requests/by-endpoint"
        items: list[HistoryItem] = []
        for _ in range(HISTORY_MAX_PAGES):
            page = await self._retrying(lambda p=dict(params): self._page(url, p))
            items += [_history_item(raw) for raw in page.get("items", []) if isinstance(raw, dict)]
            if not page.get("has_more") or not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return items

    # --- the platform API: price and bill ---------------------------------------------------------
    async def prices(self) -> list[Price]:
        """fal's price of the endpoint for this key (any API key; discounts included)."""
        url = f"{self.target.platform_url}/models/pricing"
        page = await self._retrying(lambda: self._page(url, {"endpoint_id": self.endpoint}))
        return [price for raw in page.get("prices") or [] if isinstance(raw, dict) and (price := _price(raw))]

    async def billing_events(
        self,
        *,
        start: datetime,
        end: datetime | None = None,
        request_ids: list[str] | None = None,
        tag: tuple[str, str] | None = None,
    ) -> list[BillingEvent]:
        """fal's billing events of the endpoint in [start, end) (needs an admin key): those of `request_ids`
        (asked 50 at a time), or those of requests sent with the tag `tag` (fal's tagged-billed source)."""
        base: dict[str, Any] = {"endpoint_id": self.endpoint, "start": start.isoformat(timespec="seconds")}
        if end is not None:
            base["end"] = end.isoformat(timespec="seconds")
        if tag is not None:
            base |= {"source": "tagged-billed", "tag": f"{tag[0]}={tag[1]}"}
        if request_ids is None:
            return await self._billing_pages(base)
        chunks = [request_ids[i : i + BILLING_IDS_PER_CALL] for i in range(0, len(request_ids), BILLING_IDS_PER_CALL)]
        pages = await asyncio.gather(*(self._billing_pages({**base, "request_id": ",".join(c)}) for c in chunks))
        return [event for page in pages for event in page]

    async def _billing_pages(self, params: dict[str, Any]) -> list[BillingEvent]:
        url = f"{self.target.platform_url}/models/billing-events"
        params = {**params, "limit": BILLING_PAGE}
        events: list[BillingEvent] = []
        for _ in range(BILLING_MAX_PAGES):
            page = await self._retrying(lambda p=dict(params): self._page(url, p))
            events += [e for raw in page.get("billing_events") or [] if isinstance(raw, dict) and (e := _event(raw))]
            if not page.get("has_more") or not page.get("next_cursor"):
                return events
            params["cursor"] = page["next_cursor"]
        raise FalTransient(f"fal's billing events have more than {BILLING_MAX_PAGES * BILLING_PAGE} entries here")

    async def _page(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await self._send("GET", url, params=params)
        self._raise_for(response)
        return _json(response)


# --- translation helpers (pure) ---------------------------------------------------------------------
def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise FalTransient(f"unreadable answer (HTTP {response.status_code})", status=response.status_code) from exc
    if not isinstance(body, dict):
        raise FalTransient(f"unexpected answer (HTTP {response.status_code})", status=response.status_code)
    return body


def _units(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["x-fal-billable-units"])
    except (KeyError, ValueError):
        return None


def _is_request_error(response: httpx.Response) -> bool:
    """A 5xx that is the request's own outcome (fal ended it so), not a failure of this GET."""
    return "x-fal-error-type" in response.headers or "x-fal-request-timeout-type" in response.headers


def _submit_outcome(response: httpx.Response) -> SubmitOutcome:
    code = response.status_code
    if code >= 500:
        return Unknown(f"HTTP {code} from the queue")
    if code >= 400:
        return Rejected(f"HTTP {code}: {error_text(response)}", status=code)
    try:
        return Accepted(str(response.json()["request_id"]))
    except (ValueError, KeyError, TypeError) as exc:
        return Unknown(f"unreadable submit response ({exc.__class__.__name__})")


def _status(body: dict[str, Any]) -> QueueStatus:
    state = body.get("status")
    logs = tuple(body.get("logs") or ())
    if state == "IN_QUEUE":
        return Queued(body.get("queue_position"))
    if state == "IN_PROGRESS":
        return Running(logs)
    if state == "COMPLETED":
        inference = (body.get("metrics") or {}).get("inference_time")
        return Done(logs, float(inference) if isinstance(inference, int | float) else None, body.get("error_type"))
    raise FalTransient(f"unknown queue status {state!r}")


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _decimal(value: Any) -> Decimal | None:
    """A JSON number as a Decimal of its shortest repr (0.2688, not 0.26879999...)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _price(raw: dict[str, Any]) -> Price | None:
    unit_price = _decimal(raw.get("unit_price"))
    if unit_price is None or unit_price < 0:
        return None
    return Price(str(raw.get("endpoint_id")), unit_price, str(raw.get("unit", "")), str(raw.get("currency", "")))


def _event(raw: dict[str, Any]) -> BillingEvent | None:
    cost = _decimal(raw.get("cost_total"))
    if cost is None or not raw.get("request_id"):
        return None
    return BillingEvent(
        request_id=str(raw["request_id"]),
        endpoint_id=str(raw.get("endpoint_id")),
        timestamp=_instant(raw.get("timestamp")),
        output_units=_number(raw.get("output_units")),
        unit_price=_decimal(raw.get("unit_price")),
        percent_discount=_number(raw.get("percent_discount")),
        cost_total=cost,
    )


def _history_item(raw: dict[str, Any]) -> HistoryItem:
    return HistoryItem(
        request_id=str(raw.get("request_id")),
        sent_at=_instant(raw.get("sent_at")),
        started_at=_instant(raw.get("started_at")),
        ended_at=_instant(raw.get("ended_at")),
        status_code=raw.get("status_code"),
        json_input=raw.get("json_input"),
        json_output=raw.get("json_output"),
    )


def error_text(response: httpx.Response) -> str:
    """fal's error bodies, readable: `detail` (string or 422 list) or the platform's `error.message`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)[:300]
