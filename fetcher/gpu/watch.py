"""The GPU watch thread: waits on NVML's event set for critical Xid and double-bit ECC events
(the NVIDIA device plugin's way: a GPU with one is quarantined at once, `GpuBoard.on_event`), and
samples the GPUs of running jobs every GPU_SAMPLE_INTERVAL_S for their figures
(`fetcher.gpu.usage`). Where the driver offers no events, it only samples (health is then read
at each pass of the loop). It never dies: a failure is logged and the watch goes on."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fetcher.gpu.board import GpuBoard

log = logging.getLogger(__name__)

RENEW_MAX_PAUSE_S = 60.0  # the longest pause between renewals of an event set that keeps failing


class GpuWatch:
    def __init__(self, board: GpuBoard, interval_s: float = 2.0) -> None:
        self.board = board
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._last_failure: str | None = None  # the last failed wait, logged once
        self._failures = 0  # failed waits in a row
        self._thread = threading.Thread(target=self._run, name="gpu-watch", daemon=True)

    def start(self) -> GpuWatch:
        nvml = self.board.nvml
        if nvml is not None and nvml.ok and self.board.gpus:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 5)

    def sample(self) -> None:
        """One reading of every GPU a running job holds, added to the job's figures."""
        nvml = self.board.nvml
        assert nvml is not None
        for gpu in self.board.usage.tracked():
            reading = nvml.reading(gpu)
            if reading is not None:
                self.board.usage.add(gpu.uuid, reading)

    def _run(self) -> None:
        nvml = self.board.nvml
        assert nvml is not None
        events: Any = nvml.event_set(self.board.gpus)
        next_sample = 0.0
        try:
            while not self._stop.is_set():
                events = self._wait(events, max(next_sample - time.monotonic(), 0.05))
                if time.monotonic() >= next_sample:
                    self._guarded(self.sample)
                    next_sample = time.monotonic() + self.interval_s
        finally:
            nvml.free_events(events)

    def _wait(self, events: Any, timeout_s: float) -> Any:
        """Wait for an event (or the timeout); returns the event set still in use (None after
        it failed: events are then given up, health is read at each pass)."""
        nvml = self.board.nvml
        assert nvml is not None
        if events is None:
            self._stop.wait(timeout_s)
            return None
        try:
            event = nvml.wait_event(events, self.board.gpus, int(timeout_s * 1000))
        except Exception as exc:  # noqa: BLE001 - NVMLError (a GPU lost, ...): never die
            return self._renew(events, exc)
        self._failures = 0
        if event is not None:
            self._guarded(lambda: self.board.on_event(event))
        return events

    def _renew(self, events: Any, exc: Exception) -> Any:
        """A wait failed: most often a GPU of the set was lost (NVML then fails every wait on
        the set). Its trouble is put on the board (quarantined), and the GPUs NVML still reads
        are registered in a new set, so that the others' Xids are still seen. None (events given
        up, health read at each pass) when none of them can be registered."""
        nvml = self.board.nvml
        assert nvml is not None
        nvml.free_events(events)
        self._guarded(self.board.check_health)
        readable = [g for g in self.board.gpus if nvml.readable(g)]
        lost = ",".join(sorted({g.parent or g.uuid for g in self.board.gpus if g not in readable}))
        failure = f"{lost}: {exc}"
        if failure != self._last_failure:  # once per failure, not at every renewal
            if lost:
                log.warning(
                    "gpu %s: waiting for NVML events failed (%s); watching the others' events",
                    lost,
                    exc,
                )
            else:
                log.warning("gpu: waiting for NVML events failed (%s); trying again", exc)
            self._last_failure, self._failures = failure, 0
        # a set that fails at once is not spun on: the pause doubles up to a minute
        self._stop.wait(min(self.interval_s * 2**self._failures, RENEW_MAX_PAUSE_S))
        self._failures += 1
        return nvml.event_set(readable) if readable else None

    def _guarded(self, fn: Any) -> None:
        try:
            fn()
        except Exception:
            log.exception("gpu: the watch failed; going on")
