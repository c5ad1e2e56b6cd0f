"""A clock that stands still until the test moves it."""

from __future__ import annotations


class FakeClock:
    """Callable as `time.time` or `time.monotonic`; answers `now`, which only the test changes."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
