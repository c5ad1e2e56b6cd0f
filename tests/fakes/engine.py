"""The real engine with one thing taken out, for a test about what the fetcher asks for rather than
what the host's drivers can do."""

from __future__ import annotations

from typing import Any

from fetcher.engine.container import LABEL_JOB


class StripGpuRequests:
    """The real engine, but device requests are recorded and removed before create: this host has
    no GPU runtime, and the test is about what the fetcher asks for, not about the driver."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.device_requests: dict[str, list[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def containers(self) -> Any:
        outer = self
        real = self._real.containers

        class Containers:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def create(self, image: str, **kw: Any) -> Any:
                outer.device_requests[kw["labels"][LABEL_JOB]] = (
                    kw.pop("device_requests", None) or []
                )
                return real.create(image, **kw)

        return Containers()
