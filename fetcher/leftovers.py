"""Containers the engine would not remove when their job ended: their job's share (which may be a
GPU the container still runs on) stays reserved, under a key of its own, until a retry removes
them (every LEFTOVER_RETRY_S, from the loop's housekeeping)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fetcher.pool import ResourcePool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leftover:
    """A container a job left on the engine: `retry` tries its removal again (True once it is
    gone); `engine_away`: the engine did not answer (a restart, said once elsewhere), not refused."""

    retry: Callable[[], bool]
    engine_away: bool = False


LEFTOVER_RETRY_S = 30.0
LEFTOVER_TRIES_BEFORE_IDLE_EXIT = 3  # --exit-when-idle leaves a container that outlived these


@dataclass
class _Held:
    retry: Callable[[], bool]
    next_at: float
    tries: int = 0


class Leftovers:
    def __init__(self, pool: ResourcePool, retry_s: float = LEFTOVER_RETRY_S) -> None:
        self.pool = pool
        self.retry_s = retry_s
        self._held: dict[str, _Held] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def keep(self, job_id: str, left: Leftover) -> None:
        """The job ended, its container did not go: keep its share out of any offer, under a key
        of its own (the same queue id may be claimed anew), until it is removed. With the engine
        away (a restart, already said once), this is expected: no ERROR."""
        with self._lock:  # job threads end concurrently: one number each
            self._seq += 1
            key = f"job {job_id} (ended, #{self._seq})"  # an id may be reused
        holds = self.pool.rename(job_id, key)
        with self._lock:  # retried only once its share is held under `key`
            self._held[key] = _Held(left.retry, time.monotonic() + self.retry_s)
        what = (
            "its CPU, memory and GPU(s) stay reserved until it is removed"
            if holds  # it may still run on its GPU
            else "it has ended and holds nothing; it is removed"
        )
        (log.info if left.engine_away else log.error)(
            "job %s: its container is still on the engine; %s (tried again every %.0f s)",
            job_id,
            what,
            self.retry_s,
        )

    def retry_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(key, held) for key, held in self._held.items() if held.next_at <= now]
        for key, held in due:
            try:
                gone = held.retry()
            except Exception as exc:  # noqa: BLE001 - tried again later
                log.error("%s: removing its container failed: %s", key, exc)
                gone = False
            with self._lock:
                if gone:
                    self._held.pop(key, None)
                else:
                    held.next_at, held.tries = now + self.retry_s, held.tries + 1
            if gone:
                self.pool.release(key)
                log.info("%s: its container is removed at last", key)

    def flush(self, tries: int = 3, pause_s: float = 1.0) -> None:
        """Before the daemon exits: a few more tries at the containers still to remove that the
        engine has not refused again and again (the next start removes what is left even so)."""
        for i in range(tries):
            with self._lock:
                fresh = [
                    h for h in self._held.values() if h.tries < LEFTOVER_TRIES_BEFORE_IDLE_EXIT
                ]
                if not fresh:  # none, or only those the engine refused again and again
                    return
                for held in fresh:
                    held.next_at = 0.0
            if i:
                time.sleep(pause_s)
            self.retry_due()

    def stuck(self) -> bool:
        """Some shares are held, each by a container that failed to go several times."""
        with self._lock:
            return bool(self._held) and all(
                h.tries >= LEFTOVER_TRIES_BEFORE_IDLE_EXIT for h in self._held.values()
            )
