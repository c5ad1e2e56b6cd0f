"""The image upkeep thread, so that a job never waits on work that could have been done before:
- every IMAGE_REFRESH_INTERVAL_S, pull again the `:latest` (and untagged) images jobs used within
  IMAGE_REFRESH_WITHIN_DAYS: a moved tag is fetched now, and the pull at the next job's start
  (which `auto` does for those images) finds every layer there; off under the pull policies
  that keep a present image (`if-not-present`, `never`);
- every IMAGE_PRUNE_INTERVAL_S, remove the job images the policy (IMAGE_KEEP_DAYS,
  IMAGE_CACHE_MAX_GB) lets go, never one in use or about to be (a staged job's included)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fetcher.engine.errors import ENGINE_ERRORS
from fetcher.engine.pull import effective_policy, pull
from fetcher.images.ledger import ImageLedger
from fetcher.images.policy import DAY_S, gb_to_bytes, prune_images
from fetcher.lifecycle import Phase
from fetcher.metrics import Metrics
from fetcher.settings import Settings
from fetcher.store import JobStore

log = logging.getLogger(__name__)

# the pull policies under which a job pulls its `:latest` image again: only there does a refresh
# fetch what the next job would fetch anyway (`if-not-present` and `never` keep a present image,
# a locally built `decode:latest` for one: a refresh would move its tag under the jobs)
REFRESHED_POLICIES = ("auto", "always")


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

    @property
    def pruning(self) -> bool:
        return bool(self.settings.image_keep_days or self.settings.image_cache_max_gb)

    @property
    def refreshing(self) -> bool:
        s = self.settings
        return bool(s.image_refresh_interval_s) and s.image_pull_policy in REFRESHED_POLICIES

    def start(self) -> ImageUpkeep:
        if self.pruning or self.refreshing:
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

    def refresh_once(self, now: float | None = None) -> list[str]:
        """Pull again the recent jobs' images that `auto` pulls at each job (`:latest`,
        untagged), unless IMAGE_PULL_POLICY keeps present images as they are; returns those
        whose tag moved. Never raises for the engine or a registry."""
        now = time.time() if now is None else now
        within = self.settings.image_refresh_within_days * DAY_S
        moved: list[str] = []
        if self.settings.image_pull_policy not in REFRESHED_POLICIES:
            return moved
        for ref, used in sorted(self.ledger.snapshot().items()):
            if now - used > within or effective_policy(ref, "auto") != "always":
                continue
            before = _image_id(self.docker, ref)
            try:
                pull(self.docker, ref)
            except ENGINE_ERRORS as exc:
                log.warning("images: refreshing %s failed (%s); the next job pulls it", ref, exc)
                continue
            after = _image_id(self.docker, ref)
            if after != before:
                moved.append(ref)
                log.info(
                    "images: %s moved to %s; pulled ahead of its next job", ref, (after or "?")[:19]
                )
        return moved

    def _run(self) -> None:
        s = self.settings
        tasks = [
            (self.refresh_once, "refreshing", s.image_refresh_interval_s, self.refreshing),
            (self.prune_once, "pruning", s.image_prune_interval_s, self.pruning),
        ]
        due = [0.0 if on else float("inf") for *_, on in tasks]
        while not self._halt.is_set() and not self.stop_event.is_set():
            for i, (task, what, interval, _on) in enumerate(tasks):
                if time.monotonic() >= due[i]:
                    self._guarded(task, what)
                    due[i] = time.monotonic() + interval
            if self._halt.wait(max(min(due) - time.monotonic(), 1.0)):
                return

    def _guarded(self, task: Any, what: str) -> None:
        try:
            task()
        except Exception:
            log.exception("images: %s failed; trying again later", what)


def _image_id(client: Any, ref: str) -> str | None:
    try:
        return str(client.images.get(ref).id)
    except ENGINE_ERRORS:
        return None
