"""klingflow.simulator: a local fal.ai simulator for `fal-ai/kling-video/o3/pro/video-to-video/edit`.

A loopback HTTP server (starlette + uvicorn) speaking fal's queue and storage protocol, so the
real, unmodified fal_client (pointed at it with klingflow.fal.urls.point_fal_client_at) can
upload, submit, poll, cancel and fetch results; jobs produce real, visibly edited mp4s and
successful ones are billed in a ledger. Faults are injected from a seeded RNG.

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

Behaviour notes (decisions where fal is silent):
  * Cancel: a queued request is removed and never processed; a running one is stopped. Both end
    COMPLETED with error_type "client_cancelled" (result 400) and are NOT billed (no ledger line).
  * Validation errors (422), injected job failures (500, "runner_server_error") and start
    timeouts (504 + X-Fal-Request-Timeout-Type: user) are not billed either.
  * File URLs (GET/HEAD /files/...) are public like fal's CDN; the "fal" fallback's signed PUT URL
    is authorised by its signature. Every other non-admin route needs `Authorization: Key ...`
    (CDN upload routes: the Bearer token from /storage/auth/token).
  * Billing: billable_seconds(output duration) x PRICE_PER_SECOND_USD, once per request id.
"""

from klingflow.simulator.config import FaultConfig, RouteFaults, SimulatorConfig
from klingflow.simulator.models import LedgerEntry
from klingflow.simulator.server import Simulator

__all__ = ["FaultConfig", "LedgerEntry", "RouteFaults", "Simulator", "SimulatorConfig"]
