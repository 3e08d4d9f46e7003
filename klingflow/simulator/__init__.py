"""klingflow.simulator: a local fal.ai simulator for `fal-ai/kling-video/o3/pro/video-to-video/edit`.

A loopback HTTP server (starlette + uvicorn) speaking fal's queue and storage protocol, so the
real, unmodified fal_client (pointed at it with klingflow.fal.urls.fal_client_pointed_at) can
upload, submit, poll, cancel and fetch results, and serves the platform API's request history; jobs
produce real, visibly edited mp4s and successful ones are billed in a ledger. Faults are injected
from a seeded RNG. Of the rest of klingflow it imports only klingflow.endpoint, klingflow.errors,
klingflow.hashing and klingflow.media.probe.

State dir layout (everything survives a restart on the same state_dir):

    state_dir/
      secret                     HMAC key for CDN tokens and signed upload URLs (0600)
      ledger.jsonl               one LedgerEntry JSON per billed request (append + fsync)
      requests/<request_id>.json one RequestRecord per live request (deleted when its result expires)
      files/<slot>/<name>        stored files: uploads and outputs, served at {url}/files/<slot>/<name>
      files/<slot>/.meta         {"content_type": ...} of that file
      multipart/<upload_id>/     staged parts (NNNNN.part + .etag) of unfinished multipart uploads
      tmp/                       downloads of remote inputs and outputs being written

Counters are in memory and start from zero on every start.

Behaviour notes (fal's documented worst case, each configurable; decisions where fal is silent):
  * Cancel (202 CANCELLATION_REQUESTED): a queued request is removed and never processed; a running
    one is stopped, except at FaultConfig.cancel_running_completes_rate, where the cancel is ignored
    and it runs to completion and is billed ("may still complete if it was already mid-processing";
    an ignored cancel of a hanging job leaves it hanging). A stopped or removed request ends
    COMPLETED with error_type "client_cancelled", result HTTP 499, and is NOT billed. A cancel of a
    completed request is 400 ALREADY_COMPLETED.
  * Validation errors (422) are billed at FaultConfig.invalid_billed_rate (default 0): the ledger
    line charges the probed input's billable seconds (3 if the video was never probed) and the
    result carries x-fal-billable-units; an unbilled 422 has no such header. Injected job failures
    (500, "runner_server_error") and start timeouts are never billed.
  * Start timeouts: X-Fal-Request-Timeout or X-Fal-Request-Start-Timeout (the shorter wins) drops a
    request not started in time: 504 + X-Fal-Request-Timeout-Type: user, unbilled.
  * Request history (GET /v1/models/requests/by-endpoint) lists a request only once it has
    started, and only SimulatorConfig.history_lag_s after that; sorted by ended_at descending with
    running requests first. X-Fal-Store-IO: 0 on the submit nulls its json_input/json_output there.
  * Platform routes (/v1/...) answer errors as {"error": {"type", "message"}} (400 bad query, 401
    no key, 404 unknown route) and take HTTP faults from FaultConfig.platform. Any other unknown
    path or method is 404.
  * File URLs (GET/HEAD /files/...) are public like fal's CDN; the "fal" fallback's signed PUT URL
    is authorised by its signature. Every other non-admin route needs `Authorization: Key ...`
    (CDN upload routes: the Bearer token from /storage/auth/token).
  * Billing: billable_seconds(output duration) x the key's price, once per request id; the key's price
    is PRICE_PER_SECOND_USD less SimulatorConfig.key_discounts[key id] percent. The ledger line keeps
    the list unit_price, percent_discount, cost_subtotal and cost_usd (the charge) and the request's
    tags. The simulator is one account: its keys are told apart by key id.
  * X-Fal-Tags on a submit is parsed as fal's gateway does (klingflow.simulator.tags): pairs beyond
    fal's limits are dropped, not refused.
  * Money routes (routes_billing): GET /v1/models/pricing and POST /v1/models/pricing/estimate (any
    key, the key's discounted price), GET /v1/models/requests/search (the caller's requests), and,
    admin key only (SimulatorConfig.admin_key_ids, default klingflow-simulator-admin; another key
    gets 403), GET /v1/models/billing-events (filters: window <= 90 days, endpoint, 1-50 request ids,
    key ids, source=tagged-billed&tag=k=v) and GET /v1/models/usage (time buckets, summary). A charge
    is listed billing_events_delay_s after it was made, tagged_billing_delay_s later through the
    tagged source.
"""

from klingflow.simulator.config import FaultConfig, RouteFaults, SimulatorConfig
from klingflow.simulator.models import LedgerEntry
from klingflow.simulator.server import Simulator

__all__ = ["FaultConfig", "LedgerEntry", "RouteFaults", "Simulator", "SimulatorConfig"]
