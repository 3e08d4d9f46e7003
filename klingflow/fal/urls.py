"""The one place that points the real, unmodified fal_client at a backend, and puts it back.

fal_client 1.0.x reads four module constants at call time (queue, run, REST and CDN base URLs); its
uploads (CDN token, single-part and multipart) follow them. `fal_client_pointed_at` sets them, and the
NO_PROXY entries that keep loopback traffic off any proxy, for the duration of a run and restores
both on exit, like stamina's testing switch. The constants are process-wide: runs in one process share
the switch when they point at the same base, and one for another base is refused. A renamed constant
in a future fal_client fails loudly here instead of silently calling the internet (fal-protocol.md 1.2 b).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import fal_client.client as _fc

from klingflow.errors import BackendError

_URL_CONSTANTS = ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REST_URL", "CDN_URL")
_missing = [name for name in _URL_CONSTANTS if not hasattr(_fc, name)]
if _missing:  # pragma: no cover - only with an incompatible fal_client
    agent = getattr(_fc, "USER_AGENT", "fal_client")
    raise BackendError(f"{agent} lacks {_missing}; klingflow needs fal_client 1.0.x")

FAL_DEFAULTS: dict[str, str] = {name: getattr(_fc, name) for name in _URL_CONSTANTS}
FAL_QUEUE_URL = FAL_DEFAULTS["QUEUE_URL_FORMAT"].rstrip("/")
FAL_PLATFORM_URL = "https://api.fal.ai/v1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_PROXY_VARS = ("NO_PROXY", "no_proxy")


class _Switch:
    """Who points fal_client where: runs to the same base share the switch; the last one out restores."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base: str | None = None
        self.users = 0
        self.saved_urls: dict[str, str] = {}
        self.saved_env: dict[str, str | None] = {}


_switch = _Switch()


def _urls_for(base_url: str | None) -> dict[str, str]:
    if base_url is None:
        return dict(FAL_DEFAULTS)
    base = base_url.rstrip("/")
    run = base + "/run/"  # the simulator's sync-run base (fal.run), distinct from its queue base
    return {"QUEUE_URL_FORMAT": base + "/", "RUN_URL_FORMAT": run, "REST_URL": base, "CDN_URL": base}


def _with_loopback(value: str | None) -> str:
    present = [h for h in (value or "").split(",") if h]
    return ",".join(dict.fromkeys([*present, *LOOPBACK_HOSTS]))


def _enter(base_url: str | None) -> None:
    target = base_url.rstrip("/") if base_url else None
    with _switch.lock:
        if _switch.users and _switch.base != target:
            raise BackendError(
                f"another run in this process sends fal_client to {_switch.base or 'fal.ai'}; "
                f"run the one for {target or 'fal.ai'} in its own process"
            )
        if _switch.users == 0:
            _switch.base = target
            _switch.saved_urls = {name: getattr(_fc, name) for name in _URL_CONSTANTS}
            _switch.saved_env = {var: os.environ.get(var) for var in _PROXY_VARS}
            for name, value in _urls_for(target).items():
                setattr(_fc, name, value)
            if target is not None:  # httpx honours HTTP(S)_PROXY and does not exempt loopback by itself
                for var in _PROXY_VARS:
                    os.environ[var] = _with_loopback(_switch.saved_env[var])
        _switch.users += 1


def _exit() -> None:
    with _switch.lock:
        _switch.users -= 1
        if _switch.users:
            return
        for name, value in _switch.saved_urls.items():
            setattr(_fc, name, value)
        for var, value in _switch.saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        _switch.base = None


@contextmanager
def fal_client_pointed_at(base_url: str | None) -> Iterator[None]:
    """Send fal_client's calls in this block to `base_url` (None: the real fal.ai); restore on exit.

    Runs in one process that point at the same base share it (the last one out restores); a run for
    another base while one is active is refused, since the constants are process-wide.
    """
    _enter(base_url)
    try:
        yield
    finally:
        _exit()


def current_urls() -> dict[str, str]:
    """fal_client's URL constants as they are now (for tests and diagnostics)."""
    return {name: getattr(_fc, name) for name in _URL_CONSTANTS}
