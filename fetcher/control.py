"""What an admin asks of the running daemon, through files in its state directory (so that it
works on the host and through `docker exec`, with or without the daemon running):

- `fetcher pause [--reason TEXT]` / `fetcher resume`: no new claims while `paused` exists; running
  jobs go on and report. The file stays across restarts of the daemon.
- `fetcher gpu release [UUID ... | all | box]`: lift quarantines; the daemon takes the request at
  its next pass (a restart lifts every quarantine too).
Each file is written whole (a temporary file renamed into place): the daemon never reads half.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fetcher.statedir import StateDir


@dataclass(frozen=True)
class Pause:
    reason: str
    since: float  # Unix time
    by: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"paused by {self.by} since {when}: {self.reason}"


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def pause(state: StateDir, reason: str | None) -> Pause:
    """Pause claiming (again, with a new reason, when already paused)."""
    p = Pause(reason or "no reason given", time.time(), _user())
    _write(state.paused, {"reason": p.reason, "since": p.since, "by": p.by})
    return p


def resume(state: StateDir) -> bool:
    """Resume claiming; False when it was not paused."""
    try:
        state.paused.unlink()
    except FileNotFoundError:
        return False
    return True


def paused(state: StateDir) -> Pause | None:
    """The pause in force, if any (a file that cannot be read still pauses: the admin meant it)."""
    if not state.paused.exists():
        return None
    raw = _read(state.paused)
    if not isinstance(raw, dict):
        return Pause("(the pause file cannot be read)", state.paused.stat().st_mtime, "?")
    return Pause(
        str(raw.get("reason") or "no reason given")[:500],
        float(raw.get("since") or 0),
        str(raw.get("by") or "?")[:100],
    )


def request_release(state: StateDir, keys: list[str] | None) -> None:
    """Ask the daemon to lift the quarantine of `keys` (GPU UUIDs, "box"); None: all."""
    pending = take_release(state, remove=False) or []
    merged: list[str] | None = None if keys is None or pending == ["*"] else [*pending, *keys]
    _write(state.release, ["*"] if merged is None else sorted(set(merged)))


def take_release(state: StateDir, *, remove: bool = True) -> list[str] | None:
    """The keys asked to be released (["*"]: all), or None when nothing is asked."""
    if not state.release.exists():
        return None
    raw = _read(state.release)
    if remove:
        with contextlib.suppress(FileNotFoundError):
            state.release.unlink()
    if not isinstance(raw, list):
        return None
    return [str(k)[:200] for k in raw]
