"""Opening the run's backend: the real fal.ai, a running simulator, or an embedded one.

With the simulator backend the pipeline uses a running simulator when KLINGFLOW_SIMULATOR_URL is set
(so deployments, several workers and outside checks share one queue and one ledger), and otherwise
starts its own embedded one whose state lives in `<state_dir>/simulator`, on the port it had before when
that is free (its file URLs carry the port, as fal's stay valid). Either way the run gets one
FalQueue; fal_client's URL constants are back to what they were when the block ends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from klingflow.fal.backend import Logger, key_for
from klingflow.fal.queue import FalQueue, Target
from klingflow.models import Backend, EditParams

SIMULATOR_URL_ENV = "KLINGFLOW_SIMULATOR_URL"
PORT_FILE = "port"  # in the embedded simulator's state dir: the port it last served on


def target_namespace(kind: Backend) -> str:
    """Where a run of `kind` would send its requests, as caches key it (an embedded simulator: 'sim')."""
    if kind is Backend.fal:
        return Target.fal().namespace
    external = os.environ.get(SIMULATOR_URL_ENV)
    return Target.simulator(external).namespace if external else "sim"


@asynccontextmanager
async def open_backend(params: EditParams, kind: Backend, key: str | None, logger: Logger) -> AsyncIterator[FalQueue]:
    """The run's FalQueue for an already chosen backend (`key`: resolved once at flow start)."""
    send_key = key_for(kind, key)
    if kind is Backend.fal:
        async with FalQueue(Target.fal(), send_key, endpoint=params.endpoint) as fal:
            yield fal
        return
    with simulator_url(params.state_dir, logger, time_scale=params.simulator_time_scale) as url:
        async with FalQueue(Target.simulator(url), send_key, endpoint=params.endpoint) as fal:
            yield fal


@contextmanager
def simulator_url(state_dir: str | Path, logger: Logger, *, time_scale: float = 1.0) -> Iterator[str]:
    """The running simulator's URL, or an embedded one's (state in `<state_dir>/simulator`) for the block."""
    external = os.environ.get(SIMULATOR_URL_ENV)
    if external:
        logger.info("using the running simulator at %s (%s)", external, SIMULATOR_URL_ENV)
        yield external.rstrip("/")
        return
    from klingflow.simulator import Simulator, SimulatorConfig

    state = Path(state_dir).expanduser() / "simulator"
    port = embedded_port(state, logger)
    config = SimulatorConfig(state_dir=state, time_scale=time_scale, port=port)
    with Simulator(config) as sim:
        (state / PORT_FILE).write_text(str(sim.port))
        logger.info("started an embedded fal simulator at %s (state in %s)", sim.url, state)
        yield sim.url


def embedded_port(state: Path, logger: Logger) -> int:
    """The port the state dir's embedded simulator had before, when it is free: its stored files' URLs carry
    it, so an output paid in an earlier run downloads again (fal's own file URLs do not change). 0 (any
    port) the first time, or when another process has it."""
    try:
        port = int((state / PORT_FILE).read_text())
    except (OSError, ValueError):
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            logger.warning(
                "the embedded simulator's port %d is taken; outputs of earlier runs that are gone locally "
                "cannot be downloaded again from it in this run",
                port,
            )
            return 0
    return port
