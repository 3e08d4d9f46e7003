"""Seeded fault decisions. One random.Random(seed) drives every draw, so a run is reproducible
for a given sequence of calls; targeted prompt faults need no randomness at all."""

from __future__ import annotations

import random
import threading
from collections import Counter

from klingflow.simulator.config import HTTP_FAULTS, FaultConfig
from klingflow.simulator.models import JobFault


class FaultInjector:
    """Decides which call or job gets which fault under the current FaultConfig."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self._config = config
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
        self._lock = threading.Lock()
        self._injected: Counter[str] = Counter()

    @property
    def config(self) -> FaultConfig:
        """The faults in force."""
        return self._config

    def set_config(self, config: FaultConfig) -> None:
        """Replace the faults (max_count budgets start over)."""
        with self._lock:
            self._config = config
            self._injected.clear()

    def http_fault(self, kind: str) -> str | None:
        """The HTTP fault for one call of a route kind, or None."""
        with self._lock:
            route = self._config.route(kind)
            if route.max_count is not None and self._injected[kind] >= route.max_count:
                return None
            draw, edge = self._rng.random(), 0.0
            for name in HTTP_FAULTS:
                edge += getattr(route, name)
                if draw < edge:
                    self._injected[kind] += 1
                    return name
            return None

    def ingress_code(self) -> int:
        """502 or 503 for an ingress (nginx) error."""
        with self._lock:
            return self._rng.choice((502, 503))

    def job_fault(self, prompt: str) -> JobFault | None:
        """Whether a newly submitted job will fail or hang (targeted prompts first, then rates)."""
        with self._lock:
            cfg = self._config
            if any(s and s in prompt for s in cfg.fail_prompts_containing):
                return "fail"
            if any(s and s in prompt for s in cfg.reject_prompts_containing):
                return "reject"
            if any(s and s in prompt for s in cfg.hang_prompts_containing):
                return "hang"
            draw = self._rng.random()
            if draw < cfg.job_failure_rate:
                return "fail"
            if draw < cfg.job_failure_rate + cfg.job_hang_rate:
                return "hang"
            return None

    def cancel_ignored(self) -> bool:
        """Whether a cancel of a running request is acknowledged but the request runs on (and is billed)."""
        return self._chance(self._config.cancel_running_completes_rate)

    def invalid_billed(self) -> bool:
        """Whether a 422 (invalid input) is billed, as fal may when a runner spent GPU time on it."""
        return self._chance(self._config.invalid_billed_rate)

    def _chance(self, rate: float) -> bool:
        """One seeded draw (none at all at rate 0, so default runs keep their fault sequences)."""
        if not rate:
            return False
        with self._lock:
            return self._rng.random() < rate

    def download_throttle(self) -> int | None:
        """Bytes per second for one file download, or None for full speed."""
        with self._lock:
            cfg = self._config
            if cfg.slow_download_rate and self._rng.random() < cfg.slow_download_rate:
                return cfg.slow_download_bytes_per_s
            return None
