"""The job images the fetcher used, and when: image ref -> Unix time a job last used it, kept in
`PATH_BASE/.fetcher/images.json` so that image pruning (fetcher.images.policy) still knows them
after a restart. Only refs in this ledger are ever pruned.

    ledger = ImageLedger(settings.state_dir.images)
    ledger.used(spec.handler.image_url)          # when a job's container is started
    ledger.forget(prune_images(client, ledger.snapshot(), ...))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


class ImageLedger:
    """Thread-safe; every change is written at once (atomically: temporary file, then rename).
    A write that fails is logged, never raised: the change stays in memory and the next change
    writes it again (a job must not fail for its bookkeeping)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._used = self._load()

    def used(self, ref: str, when: float | None = None) -> None:
        """A job used image `ref` at `when` (default: now)."""
        when = time.time() if when is None else when
        with self._lock:
            if self._used.get(ref, 0.0) >= when:
                return
            self._used[ref] = when
            self._save()

    def forget(self, refs: Iterable[str]) -> None:
        """Drop `refs` (removed or gone images)."""
        with self._lock:
            dropped = [r for r in refs if self._used.pop(r, None) is not None]
            if dropped:
                self._save()

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._used)

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("images: ledger %s unreadable (%s); starting an empty one", self.path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("images: ledger %s is not a JSON object; starting an empty one", self.path)
            return {}
        return {
            str(ref): float(ts)
            for ref, ts in data.items()
            if isinstance(ts, int | float) and not isinstance(ts, bool)
        }

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(self._used, fh, indent=0, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("images: could not write the ledger %s (%s)", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
