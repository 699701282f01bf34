"""Backoff for everything that retries: exponential, full jitter, capped, and a server's hint honoured."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float, hint: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    Full jitter (a uniform draw up to the exponential bound) spreads a fleet of workers that all failed at once,
    so a recovering profefe is not hit by every retry in the same instant. A ``Retry-After`` or similar hint wins,
    up to ``cap``.
    """
    if hint is not None:
        return min(cap, hint)
    bound = min(cap, base * (2 ** max(0, attempt)))
    return random.uniform(bound / 2, bound)
