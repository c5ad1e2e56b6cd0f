"""`fetcher status`: what the fetcher of a PATH_BASE is doing, read from its state directory.

It reads, never writes: the job store (read-only; sqlite's WAL lets it read while the daemon
writes), the daemon's last snapshot in it (free resources, slots, recent errors), the heartbeat,
and /proc/locks to tell whether a daemon holds the state lock. It works on the host and inside
the fetcher's container (`docker exec decode-fetcher fetcher status`), needing only PATH_BASE.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fetcher import control
from fetcher.logs import printable
from fetcher.snapshot import META_KEY, DaemonSnapshot
from fetcher.statedir import StateDir
from fetcher.store import JobRecord, JobStore, StoreError


def lock_held(lock: Path) -> bool | None:
    """Whether some process holds the flock on `lock` (from /proc/locks: no lock is taken here,
    so a daemon starting this very moment is never refused). None where it cannot be told."""
    try:
        inode = lock.stat().st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:123456 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def gather(path_base: Path) -> dict[str, Any]:
    """Everything `status` shows, as one JSON-ready object."""
    state = StateDir.of(path_base)
    now = time.time()
    out: dict[str, Any] = {"path_base": str(path_base), "state_dir": str(state.path)}
    try:
        beat = now - state.heartbeat.stat().st_mtime
    except OSError:
        beat = None
    out["heartbeat_age_s"] = None if beat is None else round(beat, 1)
    out["daemon_running"] = lock_held(state.lock_file)
    pause = control.paused(state)
    out["paused"] = None if pause is None else pause.describe()
    if not state.store.exists():
        out["error"] = f"no fetcher state under {path_base} (is PATH_BASE right?)"
        return out
    try:
        store = JobStore(state.store, read_only=True)
    except StoreError as exc:
        out["error"] = str(exc)
        return out
    try:
        snapshot = DaemonSnapshot.from_json(store.get_meta(META_KEY))
        jobs = store.jobs()
        history = store.history(10)
    finally:
        store.close()
    out["daemon"] = snapshot.to_json() if snapshot else {}
    out["running"] = [_running(r, now) for r in jobs if r.report is None]
    out["reports_pending"] = [_pending(r, now) for r in jobs if r.report is not None]
    out["recent"] = [
        {"job_id": h["job_id"], "at": h["at"], "outcome": h["outcome"]} for h in history
    ]
    return out


def _running(r: JobRecord, now: float) -> dict[str, Any]:
    return {
        "job_id": r.job_id,
        "name": r.name,
        "stage": r.stage.value,
        "elapsed_s": round(now - r.claimed_at),
        "gpus": r.gpus,
        "container": (r.container_id or "")[:12] or None,
    }


def _pending(r: JobRecord, now: float) -> dict[str, Any]:
    assert r.report is not None
    return {
        "job_id": r.job_id,
        "status": r.report.status.value,
        "held_s": round(now - r.report.since),
        "tries": r.report.tries,
    }


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


def render(info: dict[str, Any]) -> str:
    d = DaemonSnapshot.from_json(info.get("daemon")) or DaemonSnapshot()
    state = {True: "running", False: "not running", None: "unknown"}[info.get("daemon_running")]
    lines = [
        f"fetcher {d.fetcher_id} (version {d.version}) on {info['path_base']}: {state},"
        f" heartbeat {_ago(info.get('heartbeat_age_s'))}"
    ]
    if "error" in info:
        return "\n".join([*lines, info["error"]])
    if info.get("paused"):
        lines.append(f"{printable(info['paused'])} (`fetcher resume` to claim again)")
    lines += _daemon_lines(d)
    lines += _gpu_lines(d)
    lines += _job_lines(info)
    if d.errors:
        lines.append("recent errors:")
        for at, text in d.errors[-5:]:
            lines.append(f"  {_stamp(at)} {printable(text)}")
    if info["recent"]:
        lines.append("recent outcomes:")
        for h in info["recent"][:5]:
            lines.append(f"  {_stamp(h['at'])} job {h['job_id']}: {h['outcome']}")
    return "\n".join(lines)


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _daemon_lines(d: DaemonSnapshot) -> list[str]:
    lines = []
    if d.slots.total:
        gpus = ", ".join(d.free.gpus) or "none"
        lines.append(
            f"slots: {d.slots.busy} of {d.slots.total} busy; free: "
            f"{d.free.cpu_cores} CPU cores, {d.free.memory_mb} MB, GPUs: {gpus}"
        )
    since = None if d.last_claim is None else time.time() - d.last_claim
    lines.append(f"API: {d.api_problem or 'answers'}; last claim {_ago(since)}")
    if d.claims_paused:
        lines.append(f"claiming paused: {printable(d.claims_paused)}")
    return lines


def _gpu_lines(d: DaemonSnapshot) -> list[str]:
    lines = []
    for g in d.gpu_states:
        what = f"MIG instance of GPU {g.index}" if g.parent else f"GPU {g.index}"
        head = f"  gpu {g.uuid} ({what}, {printable(g.model)}, {g.memory_mb / 1024:.0f} GiB): "
        if g.state == "quarantined":
            lines.append(f"{head}{printable(g.why or '')} (lift: fetcher gpu release {g.uuid})")
            continue
        used = []
        if g.utilization is not None:
            used.append(f"{g.utilization} % util")
        if g.memory_used_mb is not None:
            used.append(f"{g.memory_used_mb / 1024:.1f} GiB used")
        if g.power_w is not None:
            used.append(f"{g.power_w:.0f} W")
        state = f"in use by job {g.job_id}" if g.job_id else printable(g.why or g.state)
        lines.append(head + ", ".join([state, *used]))
    box = d.quarantined.get("box")
    if box:
        lines.append(f"box quarantined: {printable(box)} (lift: fetcher gpu release box)")
    if d.staged:
        lines.append(f"staged ahead: {d.staged} job(s) waiting for their GPU")
    return ["gpus:", *lines] if d.gpu_states else lines


def _job_lines(info: dict[str, Any]) -> list[str]:
    lines = [f"running: {len(info['running'])}"]
    for job in info["running"]:
        name = f' "{printable(job["name"])}"' if job.get("name") else ""
        gpus = ",".join(job["gpus"]) or "no GPU"
        lines.append(
            f"  job {job['job_id']}{name}: {job['stage'] or '?'}, {_duration(job['elapsed_s'])},"
            f" {gpus}, container {job['container'] or '-'}"
        )
    pending = info["reports_pending"]
    lines.append(f"statuses waiting for delivery: {len(pending)}")
    for r in pending:
        lines.append(
            f"  job {r['job_id']}: {r['status']}, held {_duration(r['held_s'])}, {r['tries']} tries"
        )
    return lines


def path_base_from_environment(env_file: str | None = None) -> Path | None:
    """PATH_BASE from the environment, else from the .env file (the only setting status needs)."""
    if os.environ.get("PATH_BASE"):
        return Path(os.environ["PATH_BASE"])
    from dotenv import dotenv_values

    value = dotenv_values(env_file or ".env").get("PATH_BASE")
    return Path(value) if value else None


def main(path_base: Path, as_json: bool) -> int:
    info = gather(path_base)
    print(json.dumps(info, sort_keys=True) if as_json else render(info))
    return 1 if "error" in info else 0
