"""A hard spending cap for one run: spend is reserved before each submission.

Check-then-record lets concurrent submissions overshoot a cap; reserving the job's estimate first
(and settling it to the billed amount when the request ends) never does, whatever the concurrency.
"""

from __future__ import annotations

import threading
from decimal import Decimal


class Budget:
    """Reservations against `max_usd` (None = no cap). Thread- and task-safe."""

    def __init__(self, max_usd: float | None) -> None:
        self.max_usd = None if max_usd is None else Decimal(str(max_usd))
        self._committed = Decimal(0)
        self._lock = threading.Lock()

    @property
    def committed_usd(self) -> float:
        """Reserved plus billed so far."""
        return float(self._committed)

    def reserve(self, amount_usd: float, *, force: bool = False) -> bool:
        """Reserve `amount_usd`; False (nothing reserved) when it would exceed the cap.

        `force` reserves regardless: for requests that are already at fal (resumed after a crash).
        """
        amount = Decimal(str(amount_usd))
        with self._lock:
            if not force and self.max_usd is not None and self._committed + amount > self.max_usd:
                return False
            self._committed += amount
            return True

    def settle(self, reserved_usd: float, billed_usd: float) -> None:
        """Replace a reservation by what was actually billed (0 for a failed or cancelled request)."""
        with self._lock:
            self._committed += Decimal(str(billed_usd)) - Decimal(str(reserved_usd))
