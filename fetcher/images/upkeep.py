"""The image upkeep thread: every IMAGE_PRUNE_INTERVAL_S, remove the job images the policy
(IMAGE_KEEP_DAYS, IMAGE_CACHE_MAX_GB) lets go, never one in use or about to be."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fetcher.images.ledger import ImageLedger
from fetcher.images.policy import gb_to_bytes, prune_images
from fetcher.lifecycle import Phase
from fetcher.metrics import Metrics
from fetcher.settings import Settings
from fetcher.store import JobStore

log = logging.getLogger(__name__)


class ImageUpkeep:
    def __init__(
        self,
        settings: Settings,
        docker: Any,
        store: JobStore,
        ledger: ImageLedger,
        metrics: Metrics,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.docker = docker
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self.stop_event = stop
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="images", daemon=True)

    def start(self) -> ImageUpkeep:
        s = self.settings
        if s.image_keep_days or s.image_cache_max_gb:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def images_needed_soon(self) -> list[str]:
        """The images of jobs claimed but not started: their containers do not exist yet."""
        refs = []
        for rec in self.store.jobs():
            if rec.phase == Phase.claimed:
                ref = (rec.spec or {}).get("handler", {}).get("image_url", "")
                if ref:
                    refs.append(str(ref))
        return refs

    def prune_once(self) -> list[str]:
        s = self.settings
        gone = prune_images(
            self.docker,
            self.ledger.snapshot(),
            keep_days=s.image_keep_days,
            max_total_bytes=gb_to_bytes(s.image_cache_max_gb),
            keep_refs=self.images_needed_soon(),
            metrics=self.metrics,
        )
        self.ledger.forget(gone)
        return gone

    def _run(self) -> None:
        interval = self.settings.image_prune_interval_s
        while not self._halt.is_set() and not self.stop_event.is_set():
            try:
                self.prune_once()
            except Exception:
                log.exception("images: pruning failed; trying again later")
            if self._halt.wait(interval):
                return
