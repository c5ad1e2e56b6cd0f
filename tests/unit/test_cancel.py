"""Why a running job must stop: the first reason wins, every subscriber is woken."""

from __future__ import annotations

import threading

from fetcher.cancel import Cancel, CancelKind


def test_cancel_wakes_its_subscribers_once_with_the_first_reason() -> None:
    cancel = Cancel()
    early, late = threading.Event(), threading.Event()
    cancel.subscribe(early)
    cancel.set("the job is gone", CancelKind.gone)
    cancel.set("worker shut down", CancelKind.shutdown)
    cancel.subscribe(late)
    assert early.is_set() and late.is_set()
    assert cancel.gone and cancel.reason == "the job is gone"
