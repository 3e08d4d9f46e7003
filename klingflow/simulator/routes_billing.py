"""fal's Platform API for money: pricing, cost estimates, billing events, usage, and request search.

Shapes follow fal's OpenAPI (fal-platform-openapi-excerpt.json). The simulator is one account: its
keys are told apart by key id (`api_key_id`). Pricing and search take any API key; billing events and
usage need an admin key (SimulatorConfig.admin_key_ids; another key gets 403). A charge is listed
`billing_events_delay_s` after it was made, and `tagged_billing_delay_s` later still through
`source=tagged-billed` (fal: tagged events lag the default source). Money is computed in Decimal and
answered as JSON numbers.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.endpoint import ENDPOINT_ID
from klingflow.simulator.models import LedgerEntry, RequestRecord, utcnow
from klingflow.simulator.pricing import CURRENCY, PRICES, UNIT, key_price
from klingflow.simulator.responses import not_found, platform_error
from klingflow.simulator.routes_platform import (
    DEFAULT_WINDOW,
    QueryError,
    cursor_offset,
    instant_param,
    limit_param,
    multi_param,
    page_of,
    platform_route,
    request_duration,
    status_code,
)
from klingflow.simulator.state import SimState

MAX_IDS = 50
MAX_WINDOW = timedelta(days=90)
BILLING_LIMIT_MAX = 10_000
TAGGED = "tagged-billed"
HISTORICAL_UNITS = 5  # a key with no history: estimate a call as 5 output seconds (the common Kling length)
TIMEFRAMES = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
SEARCH_MIN_SIMILARITY = 0.3
_WORD = re.compile(r"\w+")


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


def _ids(request: Request, name: str) -> list[str]:
    values = multi_param(request, name)
    if len(values) > MAX_IDS:
        raise QueryError(name, f"Accepts 1-{MAX_IDS} values")
    return values


def _window(request: Request) -> tuple[datetime, datetime]:
    now = utcnow()
    start = instant_param(request, "start") or now - DEFAULT_WINDOW
    end = instant_param(request, "end") or now
    if end - start > MAX_WINDOW:
        raise QueryError("start", "Date range is capped at 90 days")
    if end <= start:
        raise QueryError("end", "End must be after start")
    return start, end


def _tags(request: Request) -> tuple[str | None, dict[str, str]]:
    source = request.query_params.get("source") or None
    if source not in (None, "default", TAGGED):
        raise QueryError("source", f"Input should be 'default' or '{TAGGED}'")
    pairs = [raw.partition("=") for raw in request.query_params.getlist("tag")]
    if any(not sep or not key for key, sep, _ in pairs):
        raise QueryError("tag", "Input should be key=value")
    tags = {key: value for key, _, value in pairs}
    if tags and source != TAGGED:
        raise QueryError("tag", f"Tag filters need source={TAGGED}")
    if source == TAGGED and not tags:
        raise QueryError("tag", f"source={TAGGED} needs at least one tag")
    return source, tags


def _listed(entry: LedgerEntry, delay_s: float) -> bool:
    return utcnow() - entry.completed_at >= timedelta(seconds=delay_s)


def _event(entry: LedgerEntry, expand: list[str]) -> dict[str, Any]:
    subtotal = entry.cost_subtotal if entry.cost_subtotal is not None else entry.cost_usd
    event: dict[str, Any] = {
        "request_id": entry.request_id,
        "endpoint_id": entry.endpoint,
        "timestamp": entry.completed_at.isoformat(),
        "output_units": entry.billed_seconds,
        "unit_price": _number(entry.unit_price),
        "percent_discount": entry.percent_discount,
        "cost_subtotal": _number(subtotal),
        "cost_discount": _number(subtotal - entry.cost_usd),
        "cost_total": _number(entry.cost_usd),
        "cost_estimate_nano_usd": _number(entry.cost_usd * 1_000_000_000),
    }
    if "auth_method" in expand:
        event["auth_method"] = f"Key {entry.key_id}"
    if "auth_method_structured" in expand:
        event["auth_method_structured"] = {"detail": f"Key {entry.key_id}", "api_key_id": entry.key_id}
    return event


def billed_entries(state: SimState, request: Request) -> list[LedgerEntry]:
    """The ledger's charges passing the query's window, endpoint, key, request id and tag filters, listed
    once their delay is over, newest first (raises QueryError)."""
    start, end = _window(request)
    endpoints = set(multi_param(request, "endpoint_id"))
    keys = set(_ids(request, "api_key_id"))
    request_ids = set(_ids(request, "request_id"))
    source, tags = _tags(request)
    delay = state.config.billing_events_delay_s + (state.config.tagged_billing_delay_s if source == TAGGED else 0)
    entries = [
        e
        for e in state.ledger.entries()
        if start <= e.completed_at < end
        and (not endpoints or e.endpoint in endpoints)
        and (not keys or e.key_id in keys)
        and (not request_ids or e.request_id in request_ids)
        and all(e.tags.get(k) == v for k, v in tags.items())
        and _listed(e, delay)
    ]
    return sorted(entries, key=lambda e: (e.completed_at, e.request_id), reverse=True)


# --- usage ------------------------------------------------------------------------------------------
def _timeframe(request: Request, start: datetime, end: datetime) -> timedelta:
    """Bucket size: as asked, else fal's auto-detection (minute < 2 h, hour < 2 d, day otherwise; weeks and
    months are taken as 7 and 30 days)."""
    name = request.query_params.get("timeframe")
    sizes = {**TIMEFRAMES, "week": timedelta(days=7), "month": timedelta(days=30)}
    if name is not None:
        if name not in sizes:
            raise QueryError("timeframe", f"Input should be one of {', '.join(sizes)}")
        return sizes[name]
    span = end - start
    return sizes["minute"] if span < timedelta(hours=2) else sizes["hour"] if span < timedelta(days=2) else sizes["day"]


def _bucket(moment: datetime, size: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return epoch + ((moment - epoch) // size) * size


def usage_results(entries: list[LedgerEntry]) -> list[dict[str, Any]]:
    """Charges grouped per endpoint and price: quantity, unit price, subtotal, discount and total."""
    groups: dict[tuple[str, Decimal, float | None], list[LedgerEntry]] = defaultdict(list)
    for e in entries:
        groups[(e.endpoint, e.unit_price, e.percent_discount)].append(e)
    results = []
    for (endpoint, unit_price, discount), group in sorted(groups.items(), key=lambda item: item[0][0]):
        total = sum((e.cost_usd for e in group), Decimal(0))
        subtotal = sum((e.cost_subtotal if e.cost_subtotal is not None else e.cost_usd for e in group), Decimal(0))
        results.append(
            {
                "endpoint_id": endpoint,
                "unit": UNIT,
                "quantity": sum(e.billed_seconds for e in group),
                "unit_price": _number(unit_price),
                "percent_discount": discount,
                "cost_subtotal": _number(subtotal),
                "cost_discount": _number(subtotal - total),
                "cost_total": _number(total),
                "cost": _number(total),
                "currency": CURRENCY,
            }
        )
    return results


# --- search -----------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def similarity(rec: RequestRecord, *, query: str | None, image_url: str | None, video_url: str | None) -> float:
    """How well a request matches a search: word overlap (Jaccard) of the query and the prompt, or 1.0 when
    the request's input has the exact image or video URL."""
    payload = rec.input if isinstance(rec.input, dict) else {}
    if video_url is not None:
        return 1.0 if payload.get("video_url") == video_url else 0.0
    if image_url is not None:
        return 1.0 if image_url in (payload.get("image_urls") or []) else 0.0
    asked, prompt = _words(query or ""), _words(str(payload.get("prompt", "")))
    return len(asked & prompt) / len(asked | prompt) if asked and prompt else 0.0


def _flag(request: Request, name: str) -> bool:
    return (request.query_params.get(name) or "").lower() in ("1", "true", "yes")


def _float(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    try:
        value = float(raw) if raw not in (None, "") else default
    except ValueError:
        raise QueryError(name, "Input should be a number") from None
    if not 0.0 <= value <= 1.0:
        raise QueryError(name, "Input should be between 0 and 1")
    return value


# --- routes -----------------------------------------------------------------------------------------
def billing_routes(state: SimState) -> list[Route]:
    """Pricing, estimate, billing events, usage and search; before the platform routes' 404 catch-all."""

    def answering(handler: Callable[[Request], Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return handler(request)
            except QueryError as exc:
                return platform_error(400, "validation_error", str(exc))

        return endpoint

    def pricing(request: Request) -> Response:
        endpoints = _ids(request, "endpoint_id")
        if not endpoints:
            raise QueryError("endpoint_id", "Field required")
        known = [e for e in endpoints if e in PRICES]
        if not known:
            return not_found("Endpoint", style="platform")
        prices = [
            {
                "endpoint_id": e,
                "unit_price": _number(key_price(state.config, request.state.key_id, e).unit_price),
                "unit": UNIT,
                "currency": CURRENCY,
            }
            for e in known
        ]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})

    async def estimate(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"null")
            kind, endpoints = body["estimate_type"], body["endpoints"]
            if kind not in ("unit_price", "historical_api_price") or not isinstance(endpoints, dict) or not endpoints:
                raise ValueError
            field = "unit_quantity" if kind == "unit_price" else "call_quantity"
            quantities = {e: Decimal(str(q[field])) for e, q in endpoints.items()}
            if any(q <= 0 for q in quantities.values()) or (
                field == "call_quantity" and any(q % 1 for q in quantities.values())
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError, ArithmeticError):
            return platform_error(400, "validation_error", "Invalid request body: see the estimate_type schemas")
        unknown = sorted(set(quantities) - set(PRICES))
        if unknown:
            return not_found(f"Endpoint {unknown[0]}", style="platform")
        key = request.state.key_id
        per = {e: _per_call(key, e) if kind == "historical_api_price" else _unit(key, e) for e in quantities}
        total = sum((per[e] * q for e, q in quantities.items()), Decimal(0)).quantize(Decimal("0.0001"))
        return JSONResponse({"estimate_type": kind, "total_cost": _number(total), "currency": CURRENCY})

    def _unit(key: str, endpoint: str) -> Decimal:
        return key_price(state.config, key, endpoint).unit_price

    def _per_call(key: str, endpoint: str) -> Decimal:
        """The key's mean charge per billed call of the endpoint; without history, 5 s at its price."""
        costs = [e.cost_usd for e in state.ledger.entries() if e.key_id == key and e.endpoint == endpoint]
        return sum(costs, Decimal(0)) / len(costs) if costs else _unit(key, endpoint) * HISTORICAL_UNITS

    def billing_events(request: Request) -> Response:
        limit, offset = limit_param(request, maximum=BILLING_LIMIT_MAX), cursor_offset(request)
        expand = multi_param(request, "expand")
        page, cursor, more = page_of(billed_entries(state, request), offset, limit)
        events = [_event(e, expand) for e in page]
        return JSONResponse({"billing_events": events, "next_cursor": cursor, "has_more": more})

    def usage(request: Request) -> Response:
        start, end = _window(request)
        size = _timeframe(request, start, end)
        expand = multi_param(request, "expand") or ["time_series"]
        entries = billed_entries(state, request)
        body: dict[str, Any] = {"next_cursor": None, "has_more": False}
        if "time_series" in expand:
            buckets: dict[datetime, list[LedgerEntry]] = defaultdict(list)
            for e in entries:
                buckets[_bucket(e.completed_at, size)].append(e)
            series = [{"bucket": b.isoformat(), "results": usage_results(buckets[b])} for b in sorted(buckets)]
            page, body["next_cursor"], body["has_more"] = page_of(series, cursor_offset(request), limit_param(request))
            body["time_series"] = page
        if "summary" in expand:
            body["summary"] = usage_results(entries)
        return JSONResponse(body)

    def search(request: Request) -> Response:
        asked = {name: request.query_params.get(name) or None for name in ("query", "image_url", "video_url")}
        if sum(v is not None for v in asked.values()) != 1:
            raise QueryError("query", "Give exactly one of query, image_url and video_url")
        if _flag(request, "only_api_requests") and _flag(request, "exclude_api_requests"):
            raise QueryError("only_api_requests", "Mutually exclusive with exclude_api_requests")
        floor = _float(request, "min_similarity", SEARCH_MIN_SIMILARITY if asked["query"] else 0.0)
        endpoints = set(multi_param(request, "endpoint_id") or multi_param(request, "endpoint")) or {ENDPOINT_ID}
        scored = [
            (similarity(rec, **asked), rec)
            for rec in state.queue.views()
            if rec.key_id == request.state.key_id and rec.endpoint in endpoints
        ]
        if _flag(request, "exclude_api_requests"):
            scored = []  # every request the simulator has came through the API
        hits = sorted(((s, r) for s, r in scored if s >= floor and s > 0), key=lambda h: (-h[0], h[1].request_id))
        page, cursor, more = page_of(hits, cursor_offset(request), limit_param(request))
        return JSONResponse({"results": [_found(rec, s) for s, rec in page], "next_cursor": cursor, "has_more": more})

    return [
        platform_route(state, "/v1/models/pricing", answering(pricing), ["GET"]),
        platform_route(state, "/v1/models/pricing/estimate", estimate, ["POST"]),
        platform_route(state, "/v1/models/billing-events", answering(billing_events), ["GET"], auth="admin"),
        platform_route(state, "/v1/models/usage", answering(usage), ["GET"], auth="admin"),
        platform_route(state, "/v1/models/requests/search", answering(search), ["GET"]),
    ]


def _found(rec: RequestRecord, score: float) -> dict[str, Any]:
    ended = rec.completed_at if rec.status == "COMPLETED" else None
    return {
        "request_id": rec.request_id,
        "endpoint_id": rec.endpoint,
        "started_at": rec.started_at.isoformat() if rec.started_at else None,
        "sent_at": rec.submitted_at.isoformat(),
        "ended_at": ended.isoformat() if ended else None,
        "status_code": status_code(rec),
        "duration": request_duration(rec),
        "similarity": round(score, 4),
    }
