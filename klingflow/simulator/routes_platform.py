"""fal's platform API: request history (`GET /v1/models/requests/by-endpoint`) and a 404 for every
other `/v1/...` route, all in the platform error shape `{"error": {"type", "message"}}`.

As fal's schema describes it (required `started_at`, end-time sort), only requests that have STARTED
are listed: a queued request is not, so a run that lost a submit's answer cannot find it until it
starts. On top of that a request shows only `history_lag_s` after its start (fal's status page has
had request data arriving hours late). Running requests are listed with `ended_at`/`status_code`
null; a request re-queued by a restart is listed again once it restarts. Items are sorted by
`ended_at` (default) or `duration`, descending, with the nulls (requests still running) FIRST, as
SQL's `ORDER BY ... DESC` puts them; filtered by `sent_at` in [start, end).
A request submitted with `X-Fal-Store-IO: 0` has null `json_input`/`json_output` even with
`expand=payloads`. Bad queries are 400 `validation_error`, a missing/invalid key 401
`authorization_error`; HTTP faults come from FaultConfig.platform.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.simulator.guard import AuthMode, Handler, guarded
from klingflow.simulator.models import Outcome, RequestRecord, utcnow
from klingflow.simulator.protocol import output_body
from klingflow.simulator.responses import not_found, platform_error
from klingflow.simulator.routes_queue import ANY_METHOD, base_url
from klingflow.simulator.state import SimState

DEFAULT_LIMIT, MAX_LIMIT = 50, 100
DEFAULT_WINDOW = timedelta(hours=24)
STATUS_FILTERS = frozenset({"success", "error", "user_error"})
SORT_KEYS = ("ended_at", "duration")


class QueryError(Exception):
    """A bad query parameter, answered as the platform's 400 validation_error."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(f"Invalid query parameter '{field}': {msg}")


def multi_param(request: Request, name: str) -> list[str]:
    """A parameter given repeated and/or as a comma-separated list."""
    return [part.strip() for raw in request.query_params.getlist(name) for part in raw.split(",") if part.strip()]


def instant_param(request: Request, name: str) -> datetime | None:
    """An ISO8601 datetime or date parameter as aware UTC (naive values are taken as UTC)."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))  # an unencoded '+' arrives as a space
    except ValueError:
        try:
            value = datetime.combine(date.fromisoformat(raw), datetime.min.time())
        except ValueError:
            raise QueryError(name, "Input should be a valid datetime or date") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def limit_param(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise QueryError("limit", f"Input should be an integer between 1 and {maximum}")
    return int(raw)


def encode_cursor(offset: int) -> str:
    """The opaque cursor of the page starting at `offset`."""
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def cursor_offset(request: Request) -> int:
    raw = request.query_params.get("cursor")
    if not raw:
        return 0
    try:
        text = base64.urlsafe_b64decode(raw.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not (text.isascii() and text.isdigit()):
        raise QueryError("cursor", "Invalid cursor")
    return int(text)


def status_code(rec: RequestRecord) -> int | None:
    """The HTTP status the request ended with (None while it is not finished)."""
    if rec.status != "COMPLETED":
        return None
    return 200 if rec.outcome is Outcome.OK else rec.error_status or 500


def _status_class(code: int | None) -> str | None:
    if code is None:
        return None
    return "success" if code < 400 else "user_error" if code < 500 else "error"


def _output(rec: RequestRecord, base: str) -> Any:
    """The result body of a completed request (its error body if it failed)."""
    if rec.status != "COMPLETED":
        return None
    output = output_body(rec, base)
    return rec.error_body if output is None else output


def _ended(rec: RequestRecord) -> datetime | None:
    return rec.completed_at if rec.status == "COMPLETED" else None


def request_duration(rec: RequestRecord) -> float | None:
    ended = _ended(rec)
    return (ended - (rec.started_at or rec.submitted_at)).total_seconds() if ended else None


def history_item(rec: RequestRecord, base: str, *, payloads: bool) -> dict[str, Any]:
    """One `items[]` entry (payloads null when the request opted out of payload storage)."""
    ended = _ended(rec)
    item: dict[str, Any] = {
        "request_id": rec.request_id,
        "endpoint_id": rec.endpoint,
        "sent_at": rec.submitted_at.isoformat(),
        "started_at": rec.started_at.isoformat() if rec.started_at else None,
        "ended_at": ended.isoformat() if ended else None,
        "status_code": status_code(rec),
        "duration": request_duration(rec),
    }
    if payloads:
        stored = rec.store_io
        item |= {"json_input": rec.input if stored else None, "json_output": _output(rec, base) if stored else None}
    return item


def listed(rec: RequestRecord, lag_s: float) -> bool:
    """Whether the history shows a request yet: it has started, at least `lag_s` ago."""
    return rec.started_at is not None and utcnow() - rec.started_at >= timedelta(seconds=lag_s)


def sort_key(rec: RequestRecord, by: str) -> tuple[bool, float, float, str]:
    """Descending-sort key: unfinished (null) values first, then the value, then start time and id
    (so offset cursors page over a stable order)."""
    ended = _ended(rec)
    value = request_duration(rec) if by == "duration" else ended.timestamp() if ended else None
    started = rec.started_at.timestamp() if rec.started_at else 0.0
    return (value is None, value or 0.0, started, rec.request_id)


@dataclass(frozen=True)
class HistoryQuery:
    """The parsed query of one history call."""

    key_id: str
    endpoints: frozenset[str]
    start: datetime
    end: datetime | None
    statuses: frozenset[str]
    request_ids: frozenset[str]
    limit: int
    offset: int
    payloads: bool
    sort_by: str

    @classmethod
    def parse(cls, request: Request, owner: str) -> HistoryQuery:
        """Read and check the query parameters (raises QueryError)."""
        endpoints = frozenset(multi_param(request, "endpoint_id"))
        if not endpoints:
            raise QueryError("endpoint_id", "Field required")
        statuses = frozenset(multi_param(request, "status"))
        if statuses - STATUS_FILTERS:
            raise QueryError("status", f"Input should be one of {', '.join(sorted(STATUS_FILTERS))}")
        sort_by = request.query_params.get("sort_by") or SORT_KEYS[0]
        if sort_by not in SORT_KEYS:
            raise QueryError("sort_by", f"Input should be one of {', '.join(SORT_KEYS)}")
        return cls(
            key_id=owner,
            endpoints=endpoints,
            start=instant_param(request, "start") or utcnow() - DEFAULT_WINDOW,
            end=instant_param(request, "end"),
            statuses=statuses,
            request_ids=frozenset(multi_param(request, "request_id")),
            limit=limit_param(request),
            offset=cursor_offset(request),
            payloads="payloads" in multi_param(request, "expand"),
            sort_by=sort_by,
        )

    def matches(self, rec: RequestRecord) -> bool:
        """Whether a record belongs to the caller and passes every filter."""
        return (
            rec.key_id == self.key_id
            and rec.endpoint in self.endpoints
            and self.start <= rec.submitted_at
            and (self.end is None or rec.submitted_at < self.end)
            and (not self.statuses or _status_class(status_code(rec)) in self.statuses)
            and (not self.request_ids or rec.request_id in self.request_ids)
        )


def history_page(records: list[RequestRecord], query: HistoryQuery, base: str, lag_s: float) -> dict[str, Any]:
    """The page of listed, matching records in `sort_by` order, with the cursor of the next one."""
    rows = [rec for rec in records if listed(rec, lag_s) and query.matches(rec)]
    rows.sort(key=lambda rec: sort_key(rec, query.sort_by), reverse=True)
    page, cursor, more = page_of(rows, query.offset, query.limit)
    return {
        "items": [history_item(rec, base, payloads=query.payloads) for rec in page],
        "next_cursor": cursor,
        "has_more": more,
    }


def page_of(items: list[Any], offset: int, limit: int) -> tuple[list[Any], str | None, bool]:
    """One page of `items` from `offset`: the page, the next page's cursor and whether there is one."""
    end = offset + limit
    more = end < len(items)
    return items[offset:end], encode_cursor(end) if more else None, more


def platform_routes(state: SimState) -> list[Route]:
    """The request history and the 404 of unknown `/v1/...` routes (so other platform routes, e.g.
    routes_billing's, come before these); they must precede the queue routes (whose submit path would
    swallow them).

    Counted, faulted (route kind "platform") and keyed like the queue routes, in the platform error shape.
    """

    async def by_endpoint(request: Request) -> Response:
        try:
            query = HistoryQuery.parse(request, request.state.key_id)
        except QueryError as exc:
            return platform_error(400, "validation_error", str(exc))
        page = history_page(state.queue.views(), query, base_url(request), state.config.history_lag_s)
        return JSONResponse(page)

    async def unknown(request: Request) -> Response:
        return not_found("Route", style="platform")

    return [
        platform_route(state, "/v1/models/requests/by-endpoint", by_endpoint, ["GET"]),
        platform_route(state, "/v1/{path:path}", unknown, ANY_METHOD),
    ]


def platform_route(state: SimState, path: str, handler: Handler, methods: list[str], auth: AuthMode = "key") -> Route:
    """A platform API route: counted and faulted as kind "platform", errors in the platform shape."""
    return Route(path, guarded(state, "platform", auth, handler, style="platform"), methods=methods)
