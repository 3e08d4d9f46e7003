"""The `process_inbox` flow: run `edit_videos` on every manifest dropped into an inbox folder.

Layout (all inside the inbox, so every move is an atomic same-filesystem rename):

    inbox/batch.csv                    dropped by a user (write it elsewhere, then `mv` it in)
    inbox/.processing.batch.csv        claimed by one inbox run: no other run can take it
    inbox/done/batch.csv               every job succeeded (+ batch.csv.result.json)
    inbox/failed/batch.csv             a job failed or the manifest could not run (+ .result.json saying why)

The claim renames the manifest inside the inbox folder (rather than into a sub-folder) so that
relative media paths, which resolve against the manifest's folder, still point where the user
meant. A rename succeeds for exactly one process, so overlapping inbox runs (a slow run and the
next scheduled one, or two workers) never process the same manifest twice. A claim left behind by
a crashed run stays visible as `.processing.*`; rename it back to retry it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field, create_model

from flows.edit_videos import RunSummary, edit_videos
from klingflow.manifest import SUFFIXES
from klingflow.models import EditParams

CLAIM_PREFIX = ".processing."
_PER_MANIFEST = ("manifest", "dry_run", "force")

# The inbox parameters are EditParams without the per-manifest fields, plus the inbox folder:
# built from EditParams so the two forms can never drift apart.
InboxParams = create_model(
    "InboxParams",
    __doc__="Parameters of `process_inbox`: the inbox folder and the edit settings for every manifest in it.",
    inbox=(str, Field("inbox", description="Folder watched for manifests (relative to the working directory)")),
    settle_s=(float, Field(2.0, ge=0, description="Skip files modified less than this many seconds ago")),
    **{name: (field.annotation, field) for name, field in EditParams.model_fields.items() if name not in _PER_MANIFEST},
)

_INBOX_ONLY = set(InboxParams.model_fields) - set(EditParams.model_fields)  # inbox, settle_s


class ManifestOutcome(BaseModel):
    """What happened to one inbox manifest (also written as its `.result.json` sidecar)."""

    manifest: str
    moved_to: str
    ok: bool
    reason: str
    summary: RunSummary | None = None


@flow(name="process_inbox")
async def process_inbox(params: InboxParams) -> State:  # type: ignore[valid-type]
    """Claim each manifest in the inbox, run it, and file it under done/ or failed/.

    No default for `params`: defaults like state_dir must be computed on the worker, not baked into
    the deployment's schema on the machine that ran `prefect deploy`.
    """
    logger = get_run_logger()
    inbox = Path(params.inbox).expanduser().resolve()
    for sub in ("done", "failed"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    outcomes: list[ManifestOutcome] = []
    for candidate in pending_manifests(inbox, params.settle_s):
        claimed = claim(candidate)
        if claimed is None:
            logger.info("%s was claimed by another run; skipping", candidate.name)
            continue
        outcome = await run_manifest(claimed, candidate.name, params)
        logger.info("%s -> %s: %s", candidate.name, outcome.moved_to, outcome.reason)
        outcomes.append(outcome)
    failed = [o for o in outcomes if not o.ok]
    message = f"{len(outcomes) - len(failed)} manifest(s) done, {len(failed)} failed"
    return Failed(message=message, data=outcomes) if failed else Completed(message=message, data=outcomes)


def pending_manifests(inbox: Path, settle_s: float) -> list[Path]:
    """Manifests waiting in the inbox, oldest first (hidden files and files still being written skipped)."""
    now = time.time()
    found = [
        p
        for p in inbox.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in SUFFIXES
        and now - p.stat().st_mtime >= settle_s
    ]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def claim(manifest: Path) -> Path | None:
    """Atomically take a manifest for this run; None when another run took it first."""
    claimed = manifest.with_name(CLAIM_PREFIX + manifest.name)
    try:
        os.rename(manifest, claimed)  # atomic; fails for every process but one
    except FileNotFoundError:
        return None
    return claimed


async def run_manifest(claimed: Path, name: str, params: Any) -> ManifestOutcome:  # params: InboxParams
    """Run `edit_videos` as a subflow on a claimed manifest and file it by the outcome."""
    summary: RunSummary | None = None
    try:
        edit = EditParams(manifest=str(claimed), **_confined(params.model_dump(exclude=_INBOX_ONLY), claimed.parent))
        state = await edit_videos(edit, return_state=True)
        result = await state.aresult(raise_on_failure=False)
        summary = result if isinstance(result, RunSummary) else None
        ok, reason = _judge(state, summary, result)
    except Exception as exc:  # noqa: BLE001 - any failure files the manifest under failed/ with the reason
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    target = file_manifest(claimed, claimed.parent / ("done" if ok else "failed"), name)
    outcome = ManifestOutcome(manifest=name, moved_to=str(target), ok=ok, reason=reason, summary=summary)
    write_sidecar(target, outcome)
    return outcome


def _confined(settings: dict[str, Any], inbox: Path) -> dict[str, Any]:
    """An inbox run reads only files in the inbox and public hosts, unless its parameters say otherwise
    (klingflow.inputs): whoever can drop a file must not reach the worker's other files or its network."""
    return {
        **settings,
        "input_roots": settings.get("input_roots") or [str(inbox)],
        "allow_private_addresses": bool(settings.get("allow_private_addresses")),
    }


def _judge(state: State, summary: RunSummary | None, result: object) -> tuple[bool, str]:
    if summary is None:
        return False, f"the run did not finish: {state.type.value} {state.message or result}"
    if summary.all_succeeded and state.is_completed():
        return True, f"{summary.succeeded}/{summary.jobs} job(s) succeeded"
    bad = {job: status for job, status in summary.statuses.items() if status not in ("succeeded", "dry_run")}
    return False, f"{summary.failed}/{summary.jobs} job(s) did not succeed: {bad}"


def file_manifest(claimed: Path, folder: Path, name: str) -> Path:
    """Rename a claimed manifest into done/ or failed/ under its original name (stamped if taken)."""
    target = folder / name
    if target.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run = str(flow_run.get_id() or "local")[:8]
        target = folder / f"{Path(name).stem}.{stamp}-{run}{Path(name).suffix}"
    os.replace(claimed, target)
    return target


def write_sidecar(manifest: Path, outcome: ManifestOutcome) -> Path:
    """`<manifest>.result.json` next to the filed manifest: ok, why, and the run's summary."""
    sidecar = manifest.with_name(manifest.name + ".result.json")
    tmp = sidecar.with_name("." + sidecar.name + ".tmp")
    tmp.write_text(json.dumps(outcome.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, sidecar)
    return sidecar
