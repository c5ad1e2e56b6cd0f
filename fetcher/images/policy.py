"""Which job images may go: a pure policy (`plan_prune`) and its application on the engine
(`prune_images`).

Only images named in the fetcher's ledger (image reference -> when a job last used it, see
`fetcher.image_ledger`) are ever looked at: never the user's other images, never the fetcher's
own. Never an image that any container on the engine (running, created, exited, paused, dead)
was made from.

The daemon's intended use, every IMAGE_PRUNE_INTERVAL_S while IMAGE_KEEP_DAYS or
IMAGE_CACHE_MAX_GB is set:

    gone = prune_images(client, ledger.snapshot(), keep_days=settings.image_keep_days,
                        max_total_bytes=gb_to_bytes(settings.image_cache_max_gb),
                        keep_refs=images_of_jobs_starting_now)
    ledger.forget(gone)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors
import requests

from fetcher.metrics import Metrics

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class ImageUse:
    """One image on the engine that jobs used: `refs` are the ledger's names of it."""

    id: str
    refs: tuple[str, ...]
    size_bytes: int
    last_used: float  # Unix time a job last used it (the latest of its refs)


def gb_to_bytes(gb: float | None) -> int | None:
    """IMAGE_CACHE_MAX_GB in bytes (GB = 10^9 bytes, as `docker images` shows sizes)."""
    return None if gb is None else int(gb * 1e9)


def plan_prune(
    images: list[ImageUse],
    now: float,
    keep_days: float | None,
    max_total_bytes: int | None,
    in_use: set[str],
) -> list[ImageUse]:
    """Which of `images` to remove, least recently used first. Pure.

    1. An image whose id is in `in_use` is never removed (it still counts towards the size).
    2. With `keep_days`: every image not used within the last `keep_days` is removed.
    3. Then, with `max_total_bytes`: while the images that remain take more than that, the least
       recently used one that is not in use is removed (also one used within `keep_days`: the
       cap protects the disk). The sizes are the engine's per-image sizes, so layers shared
       between images are counted more than once: the cap errs on the side of removing.
    Without either setting nothing is removed.
    """
    candidates = sorted(
        (i for i in images if i.id not in in_use), key=lambda i: (i.last_used, i.id)
    )
    remove: list[ImageUse] = []
    if keep_days is not None:
        cutoff = now - keep_days * DAY_S
        remove = [i for i in candidates if i.last_used < cutoff]
    if max_total_bytes is not None:
        chosen = {i.id for i in remove}
        total = sum(i.size_bytes for i in images if i.id not in chosen)
        for image in candidates:
            if total <= max_total_bytes:
                break
            if image.id not in chosen:
                remove.append(image)
                chosen.add(image.id)
                total -= image.size_bytes
    return remove


def prune_images(
    client: Any,
    ledger: Mapping[str, float],
    *,
    keep_days: float | None,
    max_total_bytes: int | None,
    now: float | None = None,
    keep_refs: Iterable[str] = (),
    metrics: Metrics | None = None,
) -> list[str]:
    """Apply `plan_prune` to the images of `ledger` (image ref -> Unix time a job last used it)
    on the engine of `client` (a `docker.DockerClient`).

    Images used by any container, and the images of `keep_refs` (jobs starting now, whose
    container does not exist yet), are kept. A chosen image is removed by removing each of its
    ledger refs (`images.remove(ref, noprune=False)`): the engine deletes it with its last
    name, and an image the user also tagged under another name keeps that name. A removal the
    engine refuses (a container made in the meantime, a child image) is logged and skipped.

    Returns the ledger refs that no longer name an image: those removed now and those that were
    already gone. Never raises for an engine failure (it logs and returns what it managed).
    Counts the removed images in `metrics` (`fetcher_images_pruned_total`, ..._bytes_total).
    """
    now = time.time() if now is None else now
    if keep_days is None and max_total_bytes is None:
        return []
    gone: list[str] = []
    try:
        images = _resolve(client, ledger, gone)
        in_use = _images_in_use(client) | _ids_of(client, keep_refs)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.warning("images: pruning skipped: the engine did not answer (%s)", exc)
        return gone
    plan = plan_prune(images, now, keep_days, max_total_bytes, in_use)
    removed = [image for image in plan if _remove_all(client, image, gone)]
    removed_bytes = sum(image.size_bytes for image in removed)
    if metrics is not None:
        metrics.images_pruned(len(removed), removed_bytes)
    if plan:
        log.info(
            "images: pruned %d of %d job images (%.1f GB)",
            len(removed),
            len(images),
            removed_bytes / 1e9,
        )
    return gone


def _remove_all(client: Any, image: ImageUse, gone: list[str]) -> bool:
    """Remove every ledger ref of `image` (each one removed goes to `gone`); True when all went."""
    refs = _remove(client, image)
    gone.extend(refs)
    return len(refs) == len(image.refs)


def _resolve(client: Any, ledger: Mapping[str, float], gone: list[str]) -> list[ImageUse]:
    """The ledger's refs, grouped by the image id each names now; refs naming none go to `gone`."""
    by_id: dict[str, tuple[list[str], int, float]] = {}
    for ref, used in ledger.items():
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            gone.append(ref)
            continue
        except docker.errors.APIError as exc:
            if not exc.is_client_error():
                raise
            log.info("images: %s names no image (%s); forgetting it", ref, exc.explanation)
            gone.append(ref)
            continue
        refs, size, last = by_id.setdefault(image.id, ([], int(image.attrs.get("Size") or 0), 0.0))
        refs.append(ref)
        by_id[image.id] = (refs, size, max(last, used))
    return [
        ImageUse(id=i, refs=tuple(sorted(refs)), size_bytes=size, last_used=last)
        for i, (refs, size, last) in by_id.items()
    ]


def _images_in_use(client: Any) -> set[str]:
    """Ids of the images of every container on the engine, whatever its state."""
    return {str(c.get("ImageID", "")) for c in client.api.containers(all=True)} - {""}


def _ids_of(client: Any, refs: Iterable[str]) -> set[str]:
    ids = set()
    for ref in refs:
        try:
            ids.add(str(client.images.get(ref).id))
        except docker.errors.ImageNotFound:
            continue
    return ids


def _remove(client: Any, image: ImageUse) -> list[str]:
    """Remove the image's ledger refs; returns those removed."""
    removed = []
    for ref in image.refs:
        try:
            client.images.remove(ref, noprune=False)
        except docker.errors.ImageNotFound:
            removed.append(ref)  # gone already: nothing to remove
        except (docker.errors.APIError, requests.RequestException) as exc:
            reason = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
            log.warning("images: %s kept: the engine refused to remove it (%s)", ref, reason)
        else:
            removed.append(ref)
            log.info(
                "images: removed %s (%s, %.1f MB, last used %s)",
                ref,
                image.id[:19],
                image.size_bytes / 1e6,
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(image.last_used)),
            )
    return removed
