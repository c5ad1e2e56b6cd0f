"""What the daemon is doing, as one snapshot: written by the daemon every pass (into the job
store's `meta` table) and read by `fetcher status` from another process, on the host or through
`docker exec`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fetcher.gpu.board import GpuView

META_KEY = "daemon"


@dataclass(frozen=True)
class Slots:
    busy: int = 0
    total: int = 0


@dataclass(frozen=True)
class Free:
    cpu_cores: int = 0
    memory_mb: int = 0
    gpus: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DaemonSnapshot:
    pid: int = 0
    fetcher_id: str = "?"
    version: str = "?"
    updated: float = 0.0  # Unix time
    slots: Slots = field(default_factory=Slots)
    free: Free = field(default_factory=Free)
    gpus: list[str] = field(default_factory=list)  # "index:model:uuid" of every GPU used
    reports_pending: list[str] = field(default_factory=list)
    api_problem: str | None = None
    claims_paused: str | None = None  # why no claim is made now
    last_claim: float | None = None  # Unix time of the last claim the API answered
    errors: list[tuple[float, str]] = field(default_factory=list)  # recent ERROR lines
    gpu_states: list[GpuView] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # GPU UUID or "box" -> why
    staged: int = 0  # jobs staged ahead (STAGE_AHEAD), waiting for their GPU

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: object) -> DaemonSnapshot | None:
        """The snapshot as stored; None when there is none. Unknown keys (a newer daemon) are
        ignored; missing ones (an older daemon) take their defaults."""
        if not isinstance(raw, dict):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["slots"] = Slots(**_only(Slots, values.get("slots")))
        values["free"] = Free(**_only(Free, values.get("free")))
        values["errors"] = [(float(at), str(text)) for at, text in values.get("errors") or []]
        values["gpu_states"] = [
            GpuView(**_only(GpuView, g)) for g in values.get("gpu_states") or []
        ]
        return cls(**values)


def _only(kind: type, raw: object) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in raw.items() if k in names} if isinstance(raw, dict) else {}
