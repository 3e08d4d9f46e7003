"""The ASGI app: admin, storage, billing and other platform routes, and queue routes (submit's catch-all,
then the 404 for unknown routes, last) and the queue's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from klingflow.simulator.routes_admin import admin_routes
from klingflow.simulator.routes_billing import billing_routes
from klingflow.simulator.routes_multipart import multipart_routes
from klingflow.simulator.routes_platform import platform_routes
from klingflow.simulator.routes_queue import queue_routes, unknown_route
from klingflow.simulator.routes_run import run_routes
from klingflow.simulator.routes_storage import storage_routes
from klingflow.simulator.routes_stream import stream_routes
from klingflow.simulator.state import SimState


def build_app(state: SimState) -> Starlette:
    """A Starlette app serving one SimState."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.queue.start()
        try:
            yield
        finally:
            await state.queue.stop()
            await state.webhooks.stop()
            state.executor.shutdown(wait=False, cancel_futures=True)

    routes = [
        *admin_routes(state),
        *storage_routes(state),
        *multipart_routes(state),
        *billing_routes(state),
        *platform_routes(state),
        *run_routes(state),
        *stream_routes(state),
        *queue_routes(state),
        unknown_route(state),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
