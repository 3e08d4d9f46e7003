"""Choosing and opening the backend: the real fal.ai, or the local fal simulator.

Both are the same real fal_client pointed at different base URLs (klingflow.fal.urls). With the
simulator backend the pipeline uses a running simulator when KLINGFLOW_SIMULATOR_URL is set (so
deployments, several workers and outside checks share one queue and one ledger), and otherwise
starts its own embedded one whose state lives in `<state_dir>/simulator`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fal_client

from klingflow.errors import BackendError
from klingflow.fal.urls import FAL_DEFAULTS, point_fal_client_at, point_fal_client_at_fal
from klingflow.models import Backend, EditParams

SIMULATOR_URL_ENV = "KLINGFLOW_SIMULATOR_URL"
FAL_KEY_SECRET_BLOCK = "fal-key"  # noqa: S105 - a block name, not a secret; Prefect Secret block holding the fal key (environment FAL_KEY is the fallback)
SIMULATOR_KEY = "klingflow-simulator"  # the simulator accepts any key; a user's real key is never sent to it

log = logging.getLogger(__name__)


@dataclass
class BackendSession:
    """An open backend: which one, its queue base URL, and a fal_client bound to it."""

    kind: Backend
    base_url: str
    key: str = field(repr=False)
    client: fal_client.AsyncClient = field(repr=False)

    @property
    def namespace(self) -> str:
        """Identifies where uploaded URLs live, for the upload cache's keys."""
        return "fal" if self.kind is Backend.fal else f"sim@{self.base_url}"

    @property
    def label(self) -> str:
        """The report's `backend` column (never includes the key)."""
        return "fal" if self.kind is Backend.fal else f"simulator ({self.base_url})"


def key_fingerprint(key: str) -> str:
    """A short, non-reversible id of a key, safe to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def resolve_fal_key() -> str | None:
    """The fal key from the Prefect Secret block `fal-key`, else the FAL_KEY environment variable."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(FAL_KEY_SECRET_BLOCK, _sync=True).get()  # type: ignore[call-arg]
        if value:
            return str(value)
    except Exception:  # noqa: BLE001 - no server, no block, or not readable: fall back to the environment
        log.debug("no Prefect Secret block %r; using the environment", FAL_KEY_SECRET_BLOCK)
    key = os.environ.get("FAL_KEY")
    if key:
        return key
    key_id, secret = os.environ.get("FAL_KEY_ID"), os.environ.get("FAL_KEY_SECRET")
    return f"{key_id}:{secret}" if key_id and secret else None


def choose_backend(requested: Backend, logger: logging.Logger | logging.LoggerAdapter = log) -> Backend:
    """`auto` means fal when a key is configured, else the simulator — said loudly."""
    if requested is not Backend.auto:
        return requested
    if resolve_fal_key():
        logger.warning("backend=auto: a fal key is configured, so this run uses the REAL fal.ai and costs money")
        return Backend.fal
    logger.warning("backend=auto: no fal key configured, so this run uses the LOCAL SIMULATOR (no real edits)")
    return Backend.simulator


@contextmanager
def open_backend(
    params: EditParams, logger: logging.Logger | logging.LoggerAdapter = log, *, kind: Backend | None = None
) -> Iterator[BackendSession]:
    """Point fal_client at the backend for the duration of a run (`kind`: already chosen by the caller)."""
    kind = kind or choose_backend(params.backend, logger)
    if kind is Backend.fal:
        key = resolve_fal_key()
        if not key:
            raise BackendError(f"backend=fal needs a key: a Prefect Secret block {FAL_KEY_SECRET_BLOCK!r} or FAL_KEY")
        point_fal_client_at_fal()
        yield BackendSession(kind, FAL_DEFAULTS["QUEUE_URL_FORMAT"].rstrip("/"), key, fal_client.AsyncClient(key=key))
        return
    with _simulator_url(params, logger) as url:
        point_fal_client_at(url)
        yield BackendSession(kind, url, SIMULATOR_KEY, fal_client.AsyncClient(key=SIMULATOR_KEY))


@contextmanager
def _simulator_url(params: EditParams, logger: logging.Logger | logging.LoggerAdapter) -> Iterator[str]:
    external = os.environ.get(SIMULATOR_URL_ENV)
    if external:
        logger.info("using the running simulator at %s (%s)", external, SIMULATOR_URL_ENV)
        yield external.rstrip("/")
        return
    from klingflow.simulator import Simulator, SimulatorConfig

    state = Path(params.state_dir).expanduser() / "simulator"
    config = SimulatorConfig(state_dir=state, time_scale=params.simulator_time_scale)
    with Simulator(config) as sim:
        logger.info("started an embedded fal simulator at %s (state in %s)", sim.url, state)
        yield sim.url
