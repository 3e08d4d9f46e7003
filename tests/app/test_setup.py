"""`klingflow setup`'s limit: created, raised, never lowered unless asked."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client

from klingflow.app.setup import ensure_limit

pytestmark = pytest.mark.usefixtures("prefect_server")


async def _limit(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).limit


async def test_an_existing_limit_is_raised_but_never_lowered_unless_asked() -> None:
    name = f"setup-{uuid.uuid4().hex[:8]}"
    assert "created" in await ensure_limit(name, 4)
    assert "kept, not lowered to 2 (pass --lower" in await ensure_limit(name, 2)
    assert await _limit(name) == 4
    assert "4 -> 6" in await ensure_limit(name, 6)
    assert "6 -> 2" in await ensure_limit(name, 2, lower=True)
    assert await _limit(name) == 2
