"""HDR without light-level metadata: PQ and HLG ramps are tone-mapped with a soft roll-off, not clipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from klingflow.media.preprocess import PreprocessSettings, preprocess_job
from klingflow.models import JobRecord
from tests.media.colour import decode_bt709, hlg_signal, make_ramp, pq_signal


@pytest.mark.parametrize(("kind", "peak"), [("pq", 4000.0), ("hlg", 1000.0)])
def test_hdr_ramp_rolls_off_instead_of_clipping(tmp_path: Path, kind: str, peak: float) -> None:
    """A ramp to `peak` cd/m² with no MaxCLL: ≤ 1 % clipped pixels, the highlights keep a gradient, 20 cd/m²
    lands near SDR's 20 % (code ≈ 131 of 255), and the peak used is reported."""
    nits = np.linspace(0, peak, 1280)
    signal = pq_signal(nits) if kind == "pq" else hlg_signal(nits)
    src = make_ramp(tmp_path / f"{kind}.mp4", nits, signal, 16 if kind == "pq" else 18)
    record = preprocess_job(
        JobRecord(job_id="h", row=1, prompt="Make it snow in @Video1", video=str(src)),
        PreprocessSettings(work_dir=str(tmp_path / "w"), x264_preset="ultrafast"),
    )
    assert record.status == "pending", record.error
    peaks = [a for a in record.preprocess_actions if a.startswith("tonemap_peak:")]
    assert peaks and peaks[0].endswith("(measured)")
    measured = float(peaks[0].split(":")[1].split()[0])
    assert measured == pytest.approx(peak, rel=0.1)
    rgb = decode_bt709(record.input_path)
    row = rgb[360, 8:-8].mean(axis=-1)
    clipped = (rgb[:, 8:-8] >= 254.5).any(axis=-1).mean()
    assert clipped <= 0.01, f"{clipped:.1%} clipped"
    top = row[nits[8:-8] >= peak / 4]  # the brightest three quarters of the ramp's range (flat at 255 before)
    assert np.all(np.diff(top) >= -1.0) and top[-1] - top[0] >= 5  # still a gradient, rising to the peak
    assert row.std() > 10  # the whole ramp is not flattened (it was: std ~1 at 255)
    grey = row[np.argmin(np.abs(nits[8:-8] - 20))]
    assert abs(grey - 255 * 0.2 ** (1 / 2.4)) < 15, grey
    print(f"{kind}: peak {measured:g} cd/m2, clipped {clipped:.2%}, grey {grey:.0f}, top {top[0]:.0f}..{top[-1]:.0f}")
