"""`klingflow setup`: its limit (created, raised, never lowered unless asked) and its Secret blocks."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client

from klingflow.app.cli import build_parser
from klingflow.app.setup import ensure_limit, run
from klingflow.fal.backend import resolve_admin_key

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


def test_the_admin_key_is_stored_as_its_secret_block_and_read_back_by_reconcile(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`setup --fal-admin-key-from-env` stores FAL_ADMIN_KEY (printing only a fingerprint); reconcile's
    resolution prefers the block to the environment."""
    admin = f"admin-{uuid.uuid4().hex}"
    monkeypatch.setenv("FAL_ADMIN_KEY", admin)
    args = build_parser().parse_args(["setup", "--fal-admin-key-from-env", "--no-demo-media", "--limit-name", "s"])
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "saved Secret block 'fal-admin-key'" in out and admin not in out
    monkeypatch.setenv("FAL_ADMIN_KEY", "from-the-environment")
    assert resolve_admin_key() == admin
    monkeypatch.delenv("FAL_ADMIN_KEY")
    args = build_parser().parse_args(["setup", "--fal-admin-key-from-env", "--no-demo-media"])
    assert run(args) == 2
    assert "FAL_ADMIN_KEY is not set" in capsys.readouterr().err
