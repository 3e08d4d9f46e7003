"""The demo: generate data/demo's inputs, run its manifest on the simulator, reconcile with the ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

from klingflow.media.synth import make_clip, make_image
from klingflow.models import Backend, EditParams

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo"


def ensure_demo_media(media: Path = DEMO_DIR / "media") -> Path:
    """Write the demo's clips and images unless they are already there."""
    clips = {
        "street.mp4": {"seconds": 4, "width": 1280, "height": 720},
        "phone.mov": {"seconds": 3, "width": 1280, "height": 720, "rotation": 90},
        "long.mp4": {"seconds": 12, "width": 1280, "height": 720},
        "small.mp4": {"seconds": 5, "width": 960, "height": 540},
    }
    for name, spec in clips.items():
        if not (media / name).exists():
            make_clip(media / name, **spec)
    for name, color in {"style.png": "purple", "hero_front.png": "teal", "hero_side.png": "gold"}.items():
        if not (media / name).exists():
            make_image(media / name, color=color)
    return media


def run_demo(
    *, time_scale: float = 1.0, output_dir: str = "outputs", report_dir: str = "reports", verbose: bool = False
) -> int:
    """Generate inputs, run the demo manifest on the embedded simulator, print the reconciliation."""
    from klingflow.app.cli import exit_code
    from klingflow.app.runner import run_with_progress

    ensure_demo_media()
    params = EditParams(
        manifest=str(DEMO_DIR / "manifest.csv"),
        backend=Backend.simulator,
        output_dir=output_dir,
        report_dir=report_dir,
        simulator_time_scale=time_scale,
    )
    outcome = asyncio.run(run_with_progress(params, verbose=verbose))
    if outcome.summary is not None:
        print(reconcile(outcome.summary.report_path, Path(params.state_dir).expanduser() / "simulator"))
    return exit_code(outcome.signum, outcome.summary)


def reconcile(report_path: str | None, simulator_state: Path) -> str:
    """One line comparing the run's report with the simulator's billing ledger (read through its API)."""
    import pandas as pd

    from klingflow.simulator import Simulator, SimulatorConfig

    if not report_path:
        return "no report written"
    rows = pd.read_parquet(report_path)
    billed = rows[rows["request_id"].notna() & ~rows["reused"].fillna(False)]
    with Simulator(SimulatorConfig(state_dir=simulator_state)) as sim:
        ledger = {e.request_id: e for e in sim.ledger()}
    matched = [r for r in billed["request_id"] if r in ledger]
    report_total = round(float(billed["cost_usd"].fillna(0).sum()), 2)
    ledger_total = round(sum(float(ledger[r].cost_usd) for r in matched), 2)
    verdict = "MATCH" if len(matched) == len(billed) and report_total == ledger_total else "MISMATCH"
    return (
        f"reconciliation: {verdict} — report ${report_total:.2f} for {len(billed)} request(s), "
        f"simulator ledger ${ledger_total:.2f} for {len(matched)} of them"
    )
