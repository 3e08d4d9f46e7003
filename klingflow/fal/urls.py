"""The one place that points the real, unmodified fal_client at a backend.

fal_client 1.0.x reads four module constants at call time (queue, run, REST and CDN base URLs). To
talk to the local simulator we set them; to talk to fal we put the originals back. A renamed
constant in a future fal_client fails loudly here instead of silently calling the internet.
See ../shared/reference/fal-protocol.md section 1.2 (b).
"""

from __future__ import annotations

import os

import fal_client.client as _fc

from klingflow.errors import BackendError

_URL_CONSTANTS = ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REST_URL", "CDN_URL")
_missing = [name for name in _URL_CONSTANTS if not hasattr(_fc, name)]
if _missing:  # pragma: no cover - only with an incompatible fal_client
    agent = getattr(_fc, "USER_AGENT", "fal_client")
    raise BackendError(f"{agent} lacks {_missing}; klingflow needs fal_client 1.0.x")

FAL_DEFAULTS: dict[str, str] = {name: getattr(_fc, name) for name in _URL_CONSTANTS}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def point_fal_client_at(base_url: str) -> None:
    """Send every fal_client call of this process (queue, storage, CDN) to `base_url`."""
    base = base_url.rstrip("/")
    _fc.QUEUE_URL_FORMAT = base + "/"
    _fc.RUN_URL_FORMAT = base + "/"
    _fc.REST_URL = base
    _fc.CDN_URL = base
    _bypass_proxy_for_loopback()


def point_fal_client_at_fal() -> None:
    """Put fal_client's own URLs back (the real fal.ai)."""
    for name, value in FAL_DEFAULTS.items():
        setattr(_fc, name, value)


def _bypass_proxy_for_loopback() -> None:
    """httpx honours HTTP(S)_PROXY and does not exempt loopback by itself."""
    for var in ("NO_PROXY", "no_proxy"):
        present = [h for h in os.environ.get(var, "").split(",") if h]
        os.environ[var] = ",".join(dict.fromkeys([*present, *LOOPBACK_HOSTS]))
