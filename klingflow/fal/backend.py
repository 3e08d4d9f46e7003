"""Which fal a run talks to, and with which key: resolved once at flow start and passed down.

`backend=auto` means the real fal.ai when a key is configured, else the local simulator — said loudly.
The key comes from the Prefect Secret block `fal-key` (read only where a Prefect API is already at
hand: inside a flow run or with PREFECT_API_URL set, so resolving a key never starts a server), else
FAL_KEY (or FAL_KEY_ID/FAL_KEY_SECRET). It is never logged: `key_fingerprint` is what may be shown.
fal's billing events need an admin key: the Secret block `fal-admin-key`, else FAL_ADMIN_KEY, read
only by `klingflow reconcile` and never sent to a simulator (which gets its own fixed admin key).
"""

from __future__ import annotations

import hashlib
import logging
import os

from klingflow.errors import BackendError
from klingflow.models import Backend

FAL_KEY_SECRET_BLOCK = "fal-key"  # noqa: S105 - a block name, not a secret
FAL_ADMIN_KEY_SECRET_BLOCK = "fal-admin-key"  # noqa: S105 - a block name, not a secret
SIMULATOR_KEY = "klingflow-simulator"  # the simulator accepts any key; a user's real key is never sent to it
SIMULATOR_ADMIN_KEY = "klingflow-simulator-admin"

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter


def key_fingerprint(key: str) -> str:
    """A short, non-reversible id of a key, safe to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _prefect_at_hand() -> bool:
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    return FlowRunContext.get() is not None or bool(PREFECT_API_URL.value())


def _secret_block_key(logger: Logger, block: str = FAL_KEY_SECRET_BLOCK) -> str | None:
    if not _prefect_at_hand():
        return None
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block, _sync=True).get()  # type: ignore[call-arg]
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return None
    except Exception as exc:  # noqa: BLE001 - a broken API must be said, then the environment is used
        logger.warning(
            "could not read the Prefect Secret block %r (%s); using the environment",
            block,
            exc.__class__.__name__,
        )
        return None
    return str(value) if value else None


def resolve_fal_key(logger: Logger = log) -> str | None:
    """The fal key from the Secret block `fal-key`, else FAL_KEY / FAL_KEY_ID:FAL_KEY_SECRET."""
    key = _secret_block_key(logger) or os.environ.get("FAL_KEY")
    if key:
        return key
    key_id, secret = os.environ.get("FAL_KEY_ID"), os.environ.get("FAL_KEY_SECRET")
    return f"{key_id}:{secret}" if key_id and secret else None


def resolve_admin_key(logger: Logger = log) -> str | None:
    """fal's admin key (billing events) from the Secret block `fal-admin-key`, else FAL_ADMIN_KEY."""
    return _secret_block_key(logger, FAL_ADMIN_KEY_SECRET_BLOCK) or os.environ.get("FAL_ADMIN_KEY") or None


def admin_key_for(kind: Backend, key: str | None) -> str:
    """The admin key to send: the user's for fal (required), the simulator's own for the simulator."""
    if kind is not Backend.fal:
        return SIMULATOR_ADMIN_KEY
    if not key:
        raise BackendError(
            "fal's billing events need an admin API key: a Prefect Secret block "
            f"{FAL_ADMIN_KEY_SECRET_BLOCK!r} or FAL_ADMIN_KEY (fal dashboard: API keys, scope ADMIN)"
        )
    return key


def choose_backend(requested: Backend, key: str | None, logger: Logger = log) -> Backend:
    """`auto` means fal when a key is configured, else the simulator — said loudly."""
    if requested is not Backend.auto:
        return requested
    if key:
        logger.warning("backend=auto: a fal key is configured, so this run uses the REAL fal.ai and costs money")
        return Backend.fal
    logger.warning("backend=auto: no fal key configured, so this run uses the LOCAL SIMULATOR (no real edits)")
    return Backend.simulator


def key_for(kind: Backend, key: str | None) -> str:
    """The key to send: the user's for fal (required), a fixed local one for the simulator."""
    if kind is not Backend.fal:
        return SIMULATOR_KEY
    if not key:
        raise BackendError(f"backend=fal needs a key: a Prefect Secret block {FAL_KEY_SECRET_BLOCK!r} or FAL_KEY")
    return key
