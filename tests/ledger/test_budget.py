"""Budget reservations: a hard cap that concurrency cannot overshoot."""

from __future__ import annotations

import threading

from klingflow.ledger.budget import Budget


def test_reservations_stop_at_the_cap() -> None:
    """Reserving past the cap is refused and reserves nothing."""
    budget = Budget(5.0)
    assert budget.reserve(3.36)
    assert not budget.reserve(1.68 + 0.01)
    assert budget.reserve(1.64)
    assert budget.committed_usd == 5.0


def test_settle_releases_what_was_not_billed() -> None:
    """A failed request gives its reservation back; a billed one keeps the billed amount."""
    budget = Budget(3.36)
    assert budget.reserve(3.36)
    budget.settle(3.36, 0.0)
    assert budget.reserve(3.36)
    budget.settle(3.36, 1.68)
    assert budget.committed_usd == 1.68


def test_no_cap_and_forced_reservations() -> None:
    """None means unlimited; force reserves even past the cap (requests already at fal)."""
    assert Budget(None).reserve(10_000)
    capped = Budget(1.0)
    assert capped.reserve(3.36, force=True)
    assert not capped.reserve(0.01)


def test_concurrent_reservations_never_exceed_the_cap() -> None:
    """Many threads reserving at once still stay within the cap."""
    budget = Budget(10.08)  # 3 jobs of 10 s
    granted: list[bool] = []
    threads = [threading.Thread(target=lambda: granted.append(budget.reserve(3.36))) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 3
    assert budget.committed_usd <= 10.08
