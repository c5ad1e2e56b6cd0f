"""Quarantine: the GPUs, and the box, that get no job until an admin lets them (or the daemon
restarts), and why. The one place that decides it:

- a GPU with a health signal (a critical Xid, retired pages pending, uncorrectable ECC errors, a
  GPU NVML has lost) is quarantined at once (`put`, from `fetcher.gpu.board`);
- a GPU whose jobs fail K times in a row for the GPU's own trouble (its runtime cannot give it to
  the container) is quarantined (`record`), K = QUARANTINE_AFTER_FAILURES;
- the box is quarantined after K jobs in a row fail for this box's trouble not tied to a GPU (the
  engine, the disk, a driver too old for the images, a bug of the fetcher): it claims nothing.
A job whose container ran (whatever its exit code) shows that the box and its GPUs work: their
counts start again. Hand-backs for a stop, an outage of the API, or an engine restart count for
nothing: those are not this box's lasting trouble.

`lift` is the admin's way back (`fetcher gpu release`); a restart forgets every quarantine (a GPU
that is still unhealthy is quarantined again at its first look).
"""

from __future__ import annotations

import logging
import threading

from fetcher.outcome import Outcome, Trouble

log = logging.getLogger(__name__)

BOX = "box"


class Quarantine:
    def __init__(self, after_failures: int, *, quiet: bool = False) -> None:
        self.after = after_failures
        self.quiet = quiet  # a probe's look, not the daemon's decision: nothing logged
        self._why: dict[str, str] = {}
        self._streak: dict[str, int] = {}
        self._lock = threading.Lock()

    def why(self, key: str) -> str | None:
        """Why `key` (a GPU's UUID, or BOX) is quarantined; None when it is not."""
        with self._lock:
            return self._why.get(key)

    def items(self) -> dict[str, str]:
        with self._lock:
            return dict(self._why)

    def put(self, key: str, why: str) -> bool:
        """Quarantine `key`; True when it was not quarantined before (the log names it once)."""
        with self._lock:
            if key in self._why:
                return False
            self._why[key] = why
            self._streak.pop(key, None)
        if self.quiet:
            return True
        subject = "worker" if key == BOX else f"gpu {key}"
        log.error(
            "%s: quarantined: %s; no job goes there until `fetcher gpu release %s` or a restart",
            subject,
            why,
            "box" if key == BOX else key,
        )
        return True

    def lift(self, keys: list[str] | None = None) -> list[str]:
        """Lift the quarantine of `keys` (None: all); returns those lifted."""
        with self._lock:
            lifted = [k for k in (self._why if keys is None else keys) if k in self._why]
            for key in lifted:
                del self._why[key]
                self._streak.pop(key, None)
        for key in lifted:
            log.info("%s: quarantine lifted", "worker" if key == BOX else f"gpu {key}")
        return lifted

    def record(self, outcome: Outcome, gpus: list[str]) -> None:
        """Count a job's outcome against (or for) its GPUs and the box."""
        last = outcome.first_line.removeprefix("handed back by the worker: ")
        if outcome.trouble == Trouble.gpu and gpus:
            for uuid in gpus:
                self._failed(uuid, last)
        elif outcome.trouble in (Trouble.box, Trouble.gpu):
            self._failed(BOX, last)
        elif outcome.ran:
            with self._lock:
                for key in (BOX, *gpus):
                    self._streak.pop(key, None)

    def _failed(self, key: str, last: str) -> None:
        with self._lock:
            self._streak[key] = count = self._streak.get(key, 0) + 1
        if count >= self.after:
            whose = "this box's" if key == BOX else "this GPU's"
            self.put(key, f"{count} jobs in a row failed for {whose} trouble; the last: {last}")
