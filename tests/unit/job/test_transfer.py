"""The transfers' thread pool: a few items at a time, the first failure stops the rest."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


def test_run_parallel_hands_out_a_few_items_at_a_time() -> None:
    """Items are pulled a few at a time (at most twice the workers ahead), never all at once as
    futures (about 2 KB each: 2 GB for a million outputs)."""
    from fetcher.job.transfer import run_parallel

    lock = threading.Lock()
    state = {"pulled": 0, "finished": 0, "most_ahead": 0}

    def items() -> Iterator[int]:
        for i in range(2000):
            with lock:
                state["pulled"] += 1
                state["most_ahead"] = max(state["most_ahead"], state["pulled"] - state["finished"])
            yield i

    def one(i: int) -> int:
        with lock:
            state["finished"] += 1
        return 1

    assert run_parallel(items(), one, 4, threading.Event()) == 2000
    assert state["most_ahead"] <= 2 * 4 + 1


def test_run_parallel_raises_the_first_failure_and_stops_the_rest() -> None:
    from fetcher.errors import Interrupted
    from fetcher.job.transfer import run_parallel

    ran: list[int] = []

    def one(i: int) -> int:
        ran.append(i)
        if i == 3:
            raise ValueError("broken")
        return 1

    with pytest.raises(ValueError, match="broken"):
        run_parallel(range(1000), one, 2, threading.Event())
    assert len(ran) < 20
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Interrupted):
        run_parallel(range(10), lambda i: 1, 2, cancel)
