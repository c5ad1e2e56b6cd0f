"""The daemon in a test: run in a thread of its own and never left hanging, or as a real `fetcher
run` process; and what it leaves on the engine and under PATH_BASE."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fetcher.daemon import Daemon, build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.settings import Settings
from tests.helpers.env import TOKEN, Env

# How long a daemon may take after a force stop before the test gives up on it.
FORCE_STOP_WAIT_S = 30.0


class DaemonThread:
    """A daemon running `Daemon.run` in a thread of its own (see `daemon_in_thread`)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.rc: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:  # handed to the test by join()
            self._error = exc

    def start(self) -> DaemonThread:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the daemon to end, and return its exit code (what `run`
        raised is raised here). The hang guard: a daemon still running then is force-stopped (its
        jobs cancelled, their containers removed) and the test fails."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.force_stop()
            pytest.fail(f"the daemon did not end within {timeout_s} s; it was force-stopped")
        if self._error is not None:
            raise self._error
        assert self.rc is not None
        return self.rc

    def force_stop(self) -> None:
        """Stop the daemon now (as a second signal does) and wait a while for it."""
        self.daemon.worker.request_force_stop()
        self._thread.join(FORCE_STOP_WAIT_S)


@contextlib.contextmanager
def daemon_in_thread(daemon: Daemon, *, timeout_s: float = 90) -> Iterator[DaemonThread]:
    """Run `daemon` in a thread while the with-block looks at it. Leaving the block waits for the
    daemon to end, at most `timeout_s` (the hang guard of `DaemonThread.join`): a daemon built
    with `exit_when_idle` ends by itself, any other must be asked to stop in the block
    (`daemon.worker.request_stop()`). If the block fails, the daemon is force-stopped at once.

        with daemon_in_thread(build_daemon(settings, exit_when_idle=True, ...)) as run:
            wait_for(lambda: job.status.value == "running", 30, "job running")
        assert run.rc == 0
    """
    run = DaemonThread(daemon).start()
    try:
        yield run
    except BaseException:
        run.force_stop()
        raise
    run.join(timeout_s)


def run_until_idle(settings: Settings, engine: Any, *, timeout_s: float = 90, **build: Any) -> int:
    """Build a daemon that exits when idle (`build_daemon(settings, exit_when_idle=True,
    docker_client=engine, **build)`), run it to its end and return its exit code. The hang guard:
    a daemon still running after `timeout_s` is force-stopped and the test fails."""
    daemon = build_daemon(settings, exit_when_idle=True, docker_client=engine, **build)
    with daemon_in_thread(daemon, timeout_s=timeout_s) as run:
        pass
    return run.join(0)


# --- a real fetcher process ----------------------------------------------------------------------
def fetcher_environ(env: Env, name: str, **settings: str) -> dict[str, str]:
    """The environment of a real fetcher process against the test's mock API."""
    environ = {k: v for k, v in os.environ.items() if k not in ("USERNAME", "PASSWORD")}
    environ.update(
        {
            "API_URL": env.mock.url,
            "ACCESS_TOKEN": TOKEN,
            "PATH_BASE": str(env.base),
            "FETCHER_ID": name,
            "TIMEOUT_JOB": "0.2",
            "TIMEOUT_STATUS": "1",
            "STOP_GRACE_S": "2",
            "SHM_SIZE": "64m",
            "JOB_DEFAULT_MEMORY_MB": "64",
            "API_RETRY_S": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    environ.update(settings)
    return environ


def fetcher_process(env: Env, name: str, *extra: str, **settings: str) -> subprocess.Popen[bytes]:
    """`fetcher run` in a process of its own, with FETCHER_ID `name` and `settings` on top."""
    return subprocess.Popen(
        [sys.executable, "-m", "fetcher", "run", *extra],
        cwd=env.root,
        env=fetcher_environ(env, name, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def output_of(proc: subprocess.Popen[bytes]) -> str:
    """What a fetcher process printed (read once it has ended)."""
    return proc.stdout.read().decode() if proc.stdout else ""


# --- what a daemon leaves ------------------------------------------------------------------------
def running_containers(engine: Any, fetcher_id: str) -> list[Any]:
    """The running containers of fetcher `fetcher_id`."""
    return list(
        engine.containers.list(filters={"label": f"{LABEL_ID}={fetcher_id}", "status": "running"})
    )


def fetcher_containers(engine: Any, fetcher_id: str) -> list[dict[str, Any]]:
    """Every container of fetcher `fetcher_id`, as the plain listing has them (no inspect each:
    the fetcher may remove one between the listing and its inspection)."""
    return list(engine.api.containers(all=True, filters={"label": f"{LABEL_ID}={fetcher_id}"}))


def only_state_left(env: Env) -> None:
    """PATH_BASE holds the fetcher's state directory and nothing else: no job directory."""
    assert [p.name for p in env.base.iterdir()] == [".fetcher"], list(env.base.iterdir())


def nothing_left(env: Env, engine: Any, fetcher_id: str) -> None:
    """No container of fetcher `fetcher_id` on the engine, no job directory under PATH_BASE."""
    assert not fetcher_containers(engine, fetcher_id), "a container is left behind"
    only_state_left(env)


def starts_again(env: Env, engine: Any) -> None:
    """After an attack, a new daemon on the same PATH_BASE starts and runs a job to its end."""
    after = env.submit(["echo still-fine"], files_up={})
    assert run_until_idle(env.settings(), engine) == 0
    assert after.status.value == "finished", after.history
    only_state_left(env)
