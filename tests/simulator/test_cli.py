"""The standalone simulator: `python -m klingflow.simulator` options, startup and clean shutdown."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from klingflow.simulator.auth import DEFAULT_ADMIN_KEY, key_id
from klingflow.simulator.cli import add_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_fault_flags_build_fault_config(tmp_path: Path):
    """--fault-* flags map onto FaultConfig, `all` covering every route."""
    cfg = config_from_args(
        _parse(
            "--state-dir", str(tmp_path), "--port", "0", "--time-scale", "0.5", "--concurrency", "4",
            "--fault-429", "all=0.1", "--fault-drop-after", "submit=0.2", "--fault-max", "submit=3",
            "--fault-fail-prompt", "BOOM", "--fault-job-hang-rate", "0.05", "--fault-slow-download-bps", "1000",
        )
    )  # fmt: skip
    assert cfg.time_scale == 0.5 and cfg.concurrency_per_key == 4
    assert cfg.faults.status.http_429 == cfg.faults.download.http_429 == 0.1
    assert cfg.faults.submit.drop_after == 0.2 and cfg.faults.submit.max_count == 3
    assert cfg.faults.fail_prompts_containing == ["BOOM"] and cfg.faults.job_hang_rate == 0.05
    assert cfg.faults.slow_download_bytes_per_s == 1000


def test_money_and_platform_flags(tmp_path: Path):
    """--history-lag, the money fault rates and the `platform` route (also covered by `all`) reach the config."""
    base = ("--state-dir", str(tmp_path))
    defaults = config_from_args(_parse(*base))
    assert defaults.history_lag_s == 0.0
    assert defaults.faults.cancel_running_completes_rate == defaults.faults.invalid_billed_rate == 0.0
    cfg = config_from_args(
        _parse(
            *base, "--history-lag", "30", "--fault-cancel-running-completes-rate", "0.25",
            "--fault-invalid-billed-rate", "0.5", "--fault-500", "platform=0.2", "--fault-429", "all=0.1",
        )
    )  # fmt: skip
    assert cfg.history_lag_s == 30.0
    assert cfg.faults.cancel_running_completes_rate == 0.25 and cfg.faults.invalid_billed_rate == 0.5
    assert cfg.faults.platform.http_500 == 0.2 and cfg.faults.platform.http_429 == 0.1


def test_billing_flags_keep_key_ids_only(tmp_path: Path):
    """--discount and --admin-key take raw keys and keep their ids; the delays reach the config."""
    base = ("--state-dir", str(tmp_path))
    defaults = config_from_args(_parse(*base))
    assert defaults.key_discounts == {} and defaults.admin_key_ids == [key_id(DEFAULT_ADMIN_KEY)]
    cfg = config_from_args(
        _parse(
            *base, "--discount", "key:with=equals=20", "--admin-key", "boss", "--admin-key", "ops",
            "--billing-delay", "5", "--tagged-billing-delay", "60",
        )
    )  # fmt: skip
    assert cfg.key_discounts == {key_id("key:with=equals"): 20.0}
    assert cfg.admin_key_ids == [key_id("boss"), key_id("ops")]
    assert (cfg.billing_events_delay_s, cfg.tagged_billing_delay_s) == (5.0, 60.0)
    assert "boss" not in cfg.model_dump_json() and "key:with" not in cfg.model_dump_json()
    with pytest.raises(ValueError, match="percentages"):
        config_from_args(_parse(*base, "--discount", "k=150"))


def test_bad_fault_flag_is_rejected(tmp_path: Path):
    """An unknown route in a fault flag is a ValueError."""
    with pytest.raises(ValueError, match="ROUTE"):
        config_from_args(_parse("--state-dir", str(tmp_path), "--fault-500", "nowhere=1"))


def test_python_m_falsim_serves_until_sigterm(tmp_path: Path):
    """`python -m klingflow.simulator` prints its URL, answers health checks and exits 0 on SIGTERM."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    cmd = [sys.executable, "-m", "klingflow.simulator", "--port", "0", "--state-dir", str(tmp_path / "state")]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/_simulator/health").json()["status"] == "ok"
        assert time.monotonic() - started < 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "state" / "secret").exists()
