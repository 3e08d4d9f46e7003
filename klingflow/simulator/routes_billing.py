"""fal's Platform API for money: pricing, cost estimates, billing events, usage, and request search.

Shapes follow fal's OpenAPI (fal-platform-openapi-excerpt.json). The simulator is one account: its
keys are told apart by key id (`api_key_id`), and every request is an API-key request (none is made with
a team member's login, so a `login_username` filter matches nothing). Pricing, estimates and search take
any API key; billing events and usage need an admin key (guard's "admin" auth mode: another key gets
403). Money is computed in Decimal and answered as JSON numbers.

  * Pricing: the caller's price, i.e. the list price less its key's discount (fal: "custom pricing or
    discounts may be applied based on account status"); unknown endpoint ids are left out, none known 404.
  * Estimate: `unit_price` = Σ unit_quantity x the key's price; `historical_api_price` = Σ call_quantity x
    the key's mean charge per billed call of the endpoint (a key without history: 5 s a call at its price).
  * Billing events: one per ledger line, newest first, `timestamp` = the billing time (completed_at); a
    charge is listed `billing_events_delay_s` after it, and `tagged_billing_delay_s` later still through
    `source=tagged-billed` (fal: tagged events lag the default source). Window at most 90 days.
  * Usage: the same charges, listed after the same delay, summed per time bucket x endpoint x (unit price,
    discount) [x key with expand=auth_method]; buckets are calendar minutes/hours/days/ISO weeks (from
    Monday)/months in `timezone`, auto-sized from the window as fal documents; `bound_to_timeframe` (default
    true) widens the window to whole buckets. Not capped at 90 days (fal documents no cap, and a month
    timeframe for windows of 183 days and more).
  * Search: the caller's request history (started requests, after `history_lag_s`, as the history
    route lists them). `query` scores the share of its words found in the prompt; `image_url`/`video_url`
    score 1.0 for an exact URL of the request's input (or its output video), else 0. `min_similarity`
    (default 0.3) applies, as fal documents, to `query` and `image_url` only. Without any of the three it
    browses, newest first.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.simulator.models import LedgerEntry, RequestRecord, utcnow
from klingflow.simulator.pricing import CURRENCY, PRICES, UNIT, key_price
from klingflow.simulator.protocol import output_body
from klingflow.simulator.responses import not_found, platform_error
from klingflow.simulator.routes_platform import (
    DEFAULT_WINDOW,
    QueryError,
    cursor_offset,
    history_item,
    instant_param,
    limit_param,
    listed,
    multi_param,
    page_of,
    platform_route,
)
from klingflow.simulator.routes_queue import base_url
from klingflow.simulator.state import SimState

MAX_IDS = 50
MAX_WINDOW = timedelta(days=90)
BILLING_LIMIT_MAX = 10_000
DEFAULT_SOURCE, TAGGED = "default", "tagged-billed"
HISTORICAL_UNITS = 5  # a key with no history: a call is estimated as 5 output seconds (Kling's common length)
TIMEFRAMES = ("minute", "hour", "day", "week", "month")
AUTO_TIMEFRAMES = (  # fal: minute (<2h), hour (<2d), day (<64d), week (<183d), month (>=183d)
    (timedelta(hours=2), "minute"),
    (timedelta(days=2), "hour"),
    (timedelta(days=64), "day"),
    (timedelta(days=183), "week"),
)
SERIES, SUMMARY = "time_series", "summary"
AUTH_LABEL, AUTH_STRUCTURED = "auth_method", "auth_method_structured"
SEARCH_MIN_SIMILARITY = 0.3
SEARCH_FIELDS = ("query", "image_url", "video_url")
TRUE, FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_WORD = re.compile(r"\w+")


def _number(value: Decimal) -> float | int:
    """A Decimal as a JSON number (an int when whole)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _ids(request: Request, name: str) -> list[str]:
    """A 1-50 id list parameter (comma-separated and/or repeated)."""
    values = multi_param(request, name)
    if len(values) > MAX_IDS:
        raise QueryError(name, f"Accepts 1-{MAX_IDS} values, got {len(values)}")
    return values


def _bool(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in TRUE | FALSE:
        return raw.lower() in TRUE
    raise QueryError(name, "Input should be a valid boolean")


def _window(request: Request, cap: timedelta | None) -> tuple[datetime, datetime]:
    """[start, end): start defaults to 24 h ago, end to now; end must be after start, and at most `cap` later."""
    now = utcnow()
    start = instant_param(request, "start") or now - DEFAULT_WINDOW
    end = instant_param(request, "end") or now
    if end <= start:
        raise QueryError("end", "End must be after start")
    if cap is not None and end - start > cap:
        raise QueryError("start", f"Date range is capped at {cap.days} days")
    return start, end


def _auth_fields(key_id: str, expand: Collection[str]) -> dict[str, Any]:
    """The expandable auth method of a charge: every simulator request is made with an API key."""
    fields: dict[str, Any] = {}
    if AUTH_LABEL in expand:
        fields[AUTH_LABEL] = f"Key {key_id}"
    if AUTH_STRUCTURED in expand:
        fields[AUTH_STRUCTURED] = {"detail": f"Key {key_id}", "api_key_id": key_id}
    return fields


# --- the charges billing events and usage list ------------------------------------------------------
@dataclass(frozen=True)
class Charges:
    """Which ledger lines a billing-events or usage call lists."""

    start: datetime
    end: datetime
    endpoints: frozenset[str]
    keys: frozenset[str]
    request_ids: frozenset[str]
    by_login: bool  # a login_username filter: no simulator request is made with a login
    tags: dict[str, str]
    delay_s: float

    def select(self, entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
        """The matching entries whose delay is over, newest first (ties by request id, so pages are stable)."""
        now = utcnow()
        rows = [
            e
            for e in entries
            if not self.by_login
            and self.start <= e.completed_at < self.end
            and now - e.completed_at >= timedelta(seconds=self.delay_s)
            and (not self.endpoints or e.endpoint in self.endpoints)
            and (not self.keys or e.key_id in self.keys)
            and (not self.request_ids or e.request_id in self.request_ids)
            and all(e.tags.get(k) == v for k, v in self.tags.items())
        ]
        return sorted(rows, key=lambda e: (e.completed_at, e.request_id), reverse=True)


def _source_tags(request: Request) -> tuple[bool, dict[str, str]]:
    """(tagged source?, the tag filters): `tag=k=v` (repeatable, all must match) needs source=tagged-billed
    and that source needs at least one tag."""
    source = request.query_params.get("source") or DEFAULT_SOURCE
    if source not in (DEFAULT_SOURCE, TAGGED):
        raise QueryError("source", f"Input should be '{DEFAULT_SOURCE}' or '{TAGGED}'")
    tags: dict[str, str] = {}
    for raw in request.query_params.getlist("tag"):
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise QueryError("tag", "Input should be key=value")
        tags[key.strip()] = value.strip()
    if tags and source != TAGGED:
        raise QueryError("tag", f"Tag filters need source={TAGGED}")
    if source == TAGGED and not tags:
        raise QueryError("tag", f"source={TAGGED} needs at least one tag")
    return source == TAGGED, tags


def _charges(request: Request, state: SimState, window: tuple[datetime, datetime], *, events: bool) -> Charges:
    """The query's charge filters (raises QueryError). `events`: the billing-events route, which also takes
    request_id, source and tag (usage documents none of them and ignores them)."""
    tagged, tags = _source_tags(request) if events else (False, {})
    config = state.config
    return Charges(
        start=window[0],
        end=window[1],
        endpoints=frozenset(_ids(request, "endpoint_id")),
        keys=frozenset(_ids(request, "api_key_id")),
        request_ids=frozenset(_ids(request, "request_id")) if events else frozenset(),
        by_login=bool(_ids(request, "login_username")),
        tags=tags,
        delay_s=config.billing_events_delay_s + (config.tagged_billing_delay_s if tagged else 0.0),
    )


def billing_event(entry: LedgerEntry, expand: Collection[str] = ()) -> dict[str, Any]:
    """One `billing_events[]` item as fal's schema has it."""
    return {
        "request_id": entry.request_id,
        "endpoint_id": entry.endpoint,
        "timestamp": entry.completed_at.isoformat(),
        "output_units": entry.billed_seconds,
        "unit_price": _number(entry.unit_price),
        "percent_discount": entry.percent_discount,
        "cost_subtotal": _number(entry.cost_subtotal),
        "cost_discount": _number(entry.cost_discount),
        "cost_total": _number(entry.cost_usd),
        "cost_estimate_nano_usd": _number(entry.cost_usd * 1_000_000_000),
        **_auth_fields(entry.key_id, expand),
    }


# --- usage ------------------------------------------------------------------------------------------
def _timezone(request: Request) -> tzinfo:
    name = request.query_params.get("timezone") or "UTC"
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError("timezone", f"Unknown timezone '{name}'") from None


def timeframe_of(requested: str | None, start: datetime, end: datetime) -> str:
    """The bucket size asked for, or fal's auto-detection from the window's length."""
    if requested:
        if requested not in TIMEFRAMES:
            raise QueryError("timeframe", f"Input should be one of {', '.join(TIMEFRAMES)}")
        return requested
    span = end - start
    return next((name for limit, name in AUTO_TIMEFRAMES if span < limit), "month")


def bucket_start(moment: datetime, timeframe: str, tz: tzinfo) -> datetime:
    """The start of the calendar bucket holding `moment`, in `tz` (weeks start on Monday)."""
    local = moment.astimezone(tz).replace(second=0, microsecond=0)
    if timeframe == "minute":
        return local
    local = local.replace(minute=0)
    if timeframe == "hour":
        return local
    local = local.replace(hour=0)
    if timeframe == "week":
        return local - timedelta(days=local.weekday())
    return local.replace(day=1) if timeframe == "month" else local


def next_bucket(start: datetime, timeframe: str) -> datetime:
    """The start of the bucket after the one starting at `start` (calendar arithmetic in its timezone)."""
    if timeframe in ("minute", "hour"):
        step = timedelta(minutes=1) if timeframe == "minute" else timedelta(hours=1)
        return (start.astimezone(UTC) + step).astimezone(start.tzinfo)
    if timeframe == "month":
        year, month = divmod(start.month, 12)
        return start.replace(year=start.year + year, month=month + 1)
    return start + timedelta(days=7 if timeframe == "week" else 1)


def bounded(start: datetime, end: datetime, timeframe: str, tz: tzinfo) -> tuple[datetime, datetime]:
    """fal's bound_to_timeframe: start moved back to its bucket's start, end on to the next bucket start."""
    last = bucket_start(end, timeframe, tz)
    return bucket_start(start, timeframe, tz), last if last == end else next_bucket(last, timeframe)


def usage_results(entries: Iterable[LedgerEntry], expand: Collection[str] = ()) -> list[dict[str, Any]]:
    """Usage line items: charges summed per endpoint and price (unit price, discount), and per key when the
    auth method is expanded (fal: usage at different discount rates appears as separate rows)."""
    by_key = AUTH_LABEL in expand or AUTH_STRUCTURED in expand
    groups: dict[tuple[str, Decimal, float, str], list[LedgerEntry]] = defaultdict(list)
    for e in entries:
        groups[(e.endpoint, e.unit_price, e.percent_discount or 0.0, e.key_id if by_key else "")].append(e)
    results = []
    for (endpoint, unit_price, _, key), group in sorted(groups.items(), key=lambda item: item[0]):
        total = sum((e.cost_usd for e in group), Decimal(0))
        subtotal = sum((e.cost_subtotal for e in group), Decimal(0))
        results.append(
            {
                "endpoint_id": endpoint,
                "unit": UNIT,
                "quantity": sum(e.billed_seconds for e in group),
                "unit_price": _number(unit_price),
                "percent_discount": group[0].percent_discount,
                "cost_subtotal": _number(subtotal),
                "cost_discount": _number(subtotal - total),
                "cost_total": _number(total),
                "cost": _number(total),  # deprecated by fal, "same value as cost_total"
                "currency": CURRENCY,
                **(_auth_fields(key, expand) if by_key else {}),
            }
        )
    return results


# --- search -----------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _image_urls(payload: dict[str, Any]) -> list[str]:
    urls = [u for u in payload.get("image_urls") or [] if isinstance(u, str)]
    for element in payload.get("elements") or []:
        if isinstance(element, dict):
            given = [element.get("frontal_image_url"), *(element.get("reference_image_urls") or [])]
            urls += [u for u in given if isinstance(u, str)]
    return urls


def similarity(rec: RequestRecord, base: str, field: str, asked: str) -> float:
    """How well a request matches a search: for `query`, the share of its words found in the prompt; for
    `image_url`/`video_url`, 1.0 when it is exactly an image (or the video) of the input, or the output video."""
    payload = rec.input if isinstance(rec.input, dict) else {}
    if field == "query":
        words = _words(asked)
        return len(words & _words(str(payload.get("prompt", "")))) / len(words) if words else 0.0
    if field == "image_url":
        return 1.0 if asked in _image_urls(payload) else 0.0
    output = output_body(rec, base) or {}
    return 1.0 if asked in (payload.get("video_url"), output.get("video", {}).get("url")) else 0.0


def _min_similarity(request: Request) -> float:
    raw = request.query_params.get("min_similarity")
    if raw is None or raw in ("", "null"):
        return SEARCH_MIN_SIMILARITY
    try:
        value = float(raw)
    except ValueError:
        raise QueryError("min_similarity", "Input should be a number") from None
    if not 0.0 <= value <= 1.0:
        raise QueryError("min_similarity", "Input should be between 0 and 1")
    return value


@dataclass(frozen=True)
class SearchQuery:
    """The parsed query of one search call."""

    field: str | None  # query, image_url or video_url; None: a filtered browse
    text: str
    floor: float
    endpoints: frozenset[str]
    exclude_api: bool
    limit: int
    offset: int

    @classmethod
    def parse(cls, request: Request) -> SearchQuery:
        """Read and check the query parameters (raises QueryError)."""
        asked = {f: v for f in SEARCH_FIELDS if (v := request.query_params.get(f))}
        if len(asked) > 1:
            raise QueryError(next(iter(asked)), f"Mutually exclusive with {', '.join(list(asked)[1:])}")
        only_api, exclude_api = _bool(request, "only_api_requests"), _bool(request, "exclude_api_requests")
        if only_api and exclude_api:
            raise QueryError("only_api_requests", "Mutually exclusive with exclude_api_requests")
        # endpoint_id wins over the deprecated single `endpoint`
        endpoints = _ids(request, "endpoint_id") or multi_param(request, "endpoint")[:1]
        ((field, text),) = asked.items() if asked else ((None, ""),)
        return cls(
            field=field,
            text=text,
            floor=_min_similarity(request),
            endpoints=frozenset(endpoints),
            exclude_api=bool(exclude_api),
            limit=limit_param(request),
            offset=cursor_offset(request),
        )

    def hits(
        self, records: Iterable[RequestRecord], owner: str, base: str, lag_s: float
    ) -> list[tuple[float | None, RequestRecord]]:
        """(similarity, request) of the caller's listed requests that pass the filters, best first (newest
        first among equals, and in a browse, where the similarity is None)."""
        if self.exclude_api:  # only playground/UI requests: the simulator has none, every request came with a key
            return []
        candidates = sorted(
            (
                rec
                for rec in records
                if rec.key_id == owner and listed(rec, lag_s) and (not self.endpoints or rec.endpoint in self.endpoints)
            ),
            key=lambda rec: (rec.submitted_at, rec.request_id),
            reverse=True,
        )
        if self.field is None:
            return [(None, rec) for rec in candidates]
        scored = [(similarity(rec, base, self.field, self.text), rec) for rec in candidates]
        if self.field != "video_url":  # fal: min_similarity "only applies when query or image_url is provided"
            scored = [(score, rec) for score, rec in scored if score >= self.floor]
        return sorted(scored, key=lambda hit: hit[0], reverse=True)  # stable: equal scores stay newest first


# --- estimate ---------------------------------------------------------------------------------------
QUANTITY_FIELDS = {"unit_price": "unit_quantity", "historical_api_price": "call_quantity"}
MIN_UNIT_QUANTITY = Decimal("0.000001")


def estimate_quantities(body: Any) -> tuple[str, dict[str, Decimal]]:
    """(estimate_type, endpoint -> quantity) of an estimate body as fal's schema has it (else ValueError):
    unit_quantity a number >= 1e-6, call_quantity an integer >= 1."""
    if not isinstance(body, dict) or body.get("estimate_type") not in QUANTITY_FIELDS:
        raise ValueError("estimate_type should be 'historical_api_price' or 'unit_price'")
    kind, endpoints = body["estimate_type"], body.get("endpoints")
    if not isinstance(endpoints, dict):
        raise ValueError("endpoints should be a map of endpoint ids to quantities")
    field = QUANTITY_FIELDS[kind]
    quantities = {}
    for endpoint, spec in endpoints.items():
        value = spec.get(field) if isinstance(spec, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"endpoints.{endpoint}.{field} should be a number")
        quantity = Decimal(str(value))
        if not quantity.is_finite():
            raise ValueError(f"endpoints.{endpoint}.{field} should be a finite number")
        if field == "call_quantity" and (quantity % 1 or quantity < 1):
            raise ValueError(f"endpoints.{endpoint}.call_quantity should be an integer >= 1")
        if quantity < MIN_UNIT_QUANTITY:
            raise ValueError(f"endpoints.{endpoint}.unit_quantity should be >= 1e-06")
        quantities[endpoint] = quantity
    return kind, quantities


# --- routes -----------------------------------------------------------------------------------------
def billing_routes(state: SimState) -> list[Route]:
    """Pricing, estimate, billing events, usage and search; before the platform routes' 404 catch-all."""

    def answering(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except QueryError as exc:
                return platform_error(400, "validation_error", str(exc))

        return endpoint

    def unit_price(key: str, endpoint: str) -> Decimal:
        return key_price(state.config, key, endpoint).unit_price

    def per_call(key: str, endpoint: str) -> Decimal:
        """The key's mean charge per billed call of the endpoint. Without history fal has nothing to average;
        the simulator then assumes 5 billed seconds a call at the key's price (HISTORICAL_UNITS)."""
        costs = [e.cost_usd for e in state.ledger.entries() if e.key_id == key and e.endpoint == endpoint]
        return sum(costs, Decimal(0)) / len(costs) if costs else unit_price(key, endpoint) * HISTORICAL_UNITS

    async def pricing(request: Request) -> Response:
        endpoints = _ids(request, "endpoint_id")
        if not endpoints:
            raise QueryError("endpoint_id", "Field required")
        known = [e for e in dict.fromkeys(endpoints) if e in PRICES]
        if not known:
            return not_found("Endpoint", style="platform")
        key = request.state.key_id
        prices = [
            {"endpoint_id": e, "unit_price": _number(unit_price(key, e)), "unit": UNIT, "currency": CURRENCY}
            for e in known
        ]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})

    async def estimate(request: Request) -> Response:
        try:
            kind, quantities = estimate_quantities(json.loads(await request.body() or b"null"))
        except ValueError as exc:  # also a body that is not JSON
            return platform_error(400, "validation_error", f"Invalid request body: {exc}")
        unknown = sorted(set(quantities) - set(PRICES))
        if unknown:
            return not_found(f"Endpoint {unknown[0]}", style="platform")
        key = request.state.key_id
        each = per_call if kind == "historical_api_price" else unit_price
        total = sum((each(key, e) * q for e, q in quantities.items()), Decimal(0))
        total = total.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)  # to 0.0001 $, as charges are
        return JSONResponse({"estimate_type": kind, "total_cost": _number(total), "currency": CURRENCY})

    async def billing_events(request: Request) -> Response:
        charges = _charges(request, state, _window(request, MAX_WINDOW), events=True)
        limit, offset = limit_param(request, maximum=BILLING_LIMIT_MAX), cursor_offset(request)
        expand = multi_param(request, "expand")
        page, cursor, more = page_of(charges.select(state.ledger.entries()), offset, limit)
        events = [billing_event(e, expand) for e in page]
        return JSONResponse({"billing_events": events, "next_cursor": cursor, "has_more": more})

    async def usage(request: Request) -> Response:
        start, end = _window(request, None)
        timeframe = timeframe_of(request.query_params.get("timeframe"), start, end)
        tz = _timezone(request)
        if _bool(request, "bound_to_timeframe") is not False:
            start, end = bounded(start, end, timeframe, tz)
        expand = multi_param(request, "expand") or [SERIES]
        if SERIES not in expand and SUMMARY not in expand:
            raise QueryError("expand", f"At least one of '{SERIES}' or '{SUMMARY}' is required")
        entries = _charges(request, state, (start, end), events=False).select(state.ledger.entries())
        limit, offset = limit_param(request), cursor_offset(request)
        body: dict[str, Any] = {"next_cursor": None, "has_more": False}
        if SERIES in expand:
            buckets: dict[datetime, list[LedgerEntry]] = defaultdict(list)
            for e in entries:
                buckets[bucket_start(e.completed_at, timeframe, tz)].append(e)
            series = [{"bucket": b.isoformat(), "results": usage_results(buckets[b], expand)} for b in sorted(buckets)]
            body["time_series"], body["next_cursor"], body["has_more"] = page_of(series, offset, limit)
        if SUMMARY in expand:
            body["summary"] = usage_results(entries, expand)
        return JSONResponse(body)

    async def search(request: Request) -> Response:
        query, base = SearchQuery.parse(request), base_url(request)
        hits = query.hits(state.queue.views(), request.state.key_id, base, state.config.history_lag_s)
        page, cursor, more = page_of(hits, query.offset, query.limit)
        results = [
            history_item(rec, base, payloads=False) | ({} if score is None else {"similarity": round(score, 4)})
            for score, rec in page
        ]
        return JSONResponse({"results": results, "next_cursor": cursor, "has_more": more})

    return [
        platform_route(state, "/v1/models/pricing", answering(pricing), ["GET"]),
        platform_route(state, "/v1/models/pricing/estimate", estimate, ["POST"]),
        platform_route(state, "/v1/models/billing-events", answering(billing_events), ["GET"], auth="admin"),
        platform_route(state, "/v1/models/usage", answering(usage), ["GET"], auth="admin"),
        platform_route(state, "/v1/models/requests/search", answering(search), ["GET"]),
    ]
