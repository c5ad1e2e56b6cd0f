"""The files admins expect (scripts/deploy/, docs/deploying.md), each checked with the real tool:
the Compose file (`docker-compose config`, created with its GPU reservation, brought up against the
mock API), the systemd unit (`systemd-analyze verify`; run by the host's systemd as PID 1 in a
container, with a stand-in for the fetcher; its stop signals played against a real fetcher), the
Prometheus alert rules (`promtool check rules`, `promtool test rules`) and the live /metrics page
(`promtool check metrics`).

scripts/test.sh installs the tools. Without one a test skips with the install hint; under CI=true
it fails instead."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fetcher.gpu.board import GpuView
from fetcher.metrics import Metrics
from fetcher.settings import Settings
from mock_api.server import MockServer, free_port
from mock_api.state import MockState
from tests.conftest import IN_CI
from tests.helpers import API_KEY, IMAGE, TOKEN, Env, fetcher_id, fetcher_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts/deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
UNIT = DEPLOY / "decode-fetcher.service"
RULES = DEPLOY / "fetcher-alerts.yml"
RULES_TEST = DEPLOY / "fetcher-alerts.test.yml"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"

ALERTS = {
    "FetcherDown",
    "FetcherHeartbeatStale",
    "FetcherNotClaiming",
    "FetcherStatusesUndelivered",
    "FetcherGpuQuarantined",
    "FetcherUnhealthyPaused",
    "FetcherDiskPaused",
    "FetcherAdminPausedLong",
}


# Where scripts/test.sh puts promtool (out of Debian's prometheus package, without the server).
TOOLS = Path(os.environ.get("FETCHER_TOOLS_DIR", Path.home() / ".cache/decode-fetcher-tools"))
PROMTOOL_DIR = TOOLS / "promtool/usr/bin"


def tool(name: str, package: str) -> str:
    """The path of a command-line tool; skips (fails under CI=true) when it is missing."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}{PROMTOOL_DIR}")
    if path is not None:
        return path
    message = (
        f"{name} not found: scripts/test.sh installs it (Debian's {package} package:"
        f" apt-get install -y --no-install-recommends {package}; promtool: test.sh takes it"
        f" alone into {PROMTOOL_DIR})"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


# --- Prometheus: the alert rules and the /metrics page ----------------------------------------------


def test_alert_rules_pass_promtool_check_rules() -> None:
    promtool = tool("promtool", "prometheus")
    result = run([promtool, "check", "rules", str(RULES)])
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
    assert set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE)) == ALERTS


def test_alert_rules_pass_their_unit_tests_and_each_alert_has_one() -> None:
    promtool = tool("promtool", "prometheus")
    result = run([promtool, "test", "rules", str(RULES_TEST)], cwd="/")
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = set(re.findall(r"alertname: (\w+)$", RULES_TEST.read_text(), re.MULTILINE))
    assert tested == ALERTS, f"alerts without a unit test: {sorted(ALERTS - tested)}"


def test_the_unit_tests_catch_a_not_claiming_alert_that_ignores_a_full_box(tmp_path: Path) -> None:
    # Given the rules without "a slot is free" (a full box claims nothing for hours, rightly)
    promtool = tool("promtool", "prometheus")
    rules = RULES.read_text()
    clause = "\n          and fetcher_jobs_running < fetcher_job_slots"
    assert rules.count(clause) == 1
    (tmp_path / RULES.name).write_text(rules.replace(clause, ""))
    shutil.copy(RULES_TEST, tmp_path)
    # When promtool runs the unit tests on them
    result = run([promtool, "test", "rules", RULES_TEST.name], cwd=tmp_path)
    # Then they fail, naming the alert and the full box it would page about
    assert result.returncode == 1, result.stdout + result.stderr
    assert "alertname: FetcherNotClaiming" in result.stdout + result.stderr
    assert 'instance="full:9464"' in result.stdout + result.stderr


def metrics_with_events() -> Metrics:
    """A real Metrics object with every kind of series in it: jobs that ended every way, a stage,
    transfers, API calls, GPUs (one quarantined), a pause, statuses waiting, the info."""
    m = Metrics()
    m.set_info("0.1.0", {"api_url": "https://api.example.org:8001", "fetcher_id": "box-1"})
    m.set_slots(1, 2)
    m.set_gpus(1, 2)
    m.set_gpu_states(
        [
            GpuView(
                "GPU-aaaa", 0, "NVIDIA A100", 40960, None, "in use", None, "42", 10240, 87, 250
            ),
            GpuView("GPU-bbbb", 1, "NVIDIA A100", 40960, None, "quarantined", "Xid 79"),
        ]
    )
    m.heartbeat()
    m.claim_succeeded()
    m.set_claims_paused("disk")
    m.set_outbox(2)
    for outcome, reason in (("finished", ""), ("error", "exit_code"), ("handed_back", "")):
        m.job_claimed()
        m.job_ended(outcome, reason)
    with m.stage("run"):
        pass
    m.transferred("down", 123456)
    m.api_call("claim")
    m.api_call("status", "unavailable")
    m.api_retry("status")
    m.job_gpu(5 * 2**30, 0.6, unused=False)
    m.job_gpu(0, None, unused=True)
    m.images_pruned(1, 10**9)
    return m


def promtool_check_metrics(page: str) -> subprocess.CompletedProcess[str]:
    promtool = tool("promtool", "prometheus")
    return run([promtool, "check", "metrics"], input=page)


def test_the_live_metrics_page_passes_promtool_check_metrics() -> None:
    # Given the metrics a daemon serves (METRICS_PORT), after some of everything
    with metrics_with_events() as m:
        port = m.serve(0, "127.0.0.1")
        # When Prometheus's linter reads the page, as served over HTTP
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            page = r.read().decode()
    result = promtool_check_metrics(page)
    # Then it has nothing to say
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )
    # And every metric the alert rules use is on the page (a renamed metric would silence them)
    served = set(re.findall(r"^# TYPE (\w+) ", page, re.MULTILINE))
    used = set(re.findall(r"\b(fetcher_\w+)", RULES.read_text()))
    assert used and used <= served, f"used by the rules, not served: {sorted(used - served)}"
    assert 'fetcher_gpu_healthy{gpu="GPU-bbbb"} 0.0' in page
    assert 'fetcher_claims_paused{reason="disk"} 1.0' in page


def test_promtool_check_metrics_speaks_up_about_a_bad_page() -> None:
    # (so that the silence above means something)
    result = promtool_check_metrics("# TYPE foo_count counter\nfoo_count 1\n")
    assert result.returncode != 0
    assert 'counter metrics should have "_total" suffix' in result.stdout + result.stderr


# --- Compose ------------------------------------------------------------------------------------------


def compose_tool() -> str:
    return tool("docker-compose", "docker-compose")


def admin_copy(directory: Path, env_lines: str = "") -> Path:
    """What the compose file's comments tell an admin: the file and .env.example as .env, side by
    side, plus `env_lines`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMPOSE_FILE, directory / COMPOSE_FILE.name)
    (directory / ".env").write_text((ROOT / ".env.example").read_text() + env_lines)
    return directory / COMPOSE_FILE.name


def compose_environ(env_file: Path) -> dict[str, str]:
    """Our environment without the variables `.env` sets: Compose lets the shell win over `.env`."""
    names = {
        line.split("=", 1)[0].strip()
        for line in env_file.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    names |= {"FETCHER_IMAGE", "FETCHER_CONTAINER_NAME", "FETCHER_STOP_GRACE_PERIOD"}
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}


def compose(project: str, files: list[Path], *args: str, timeout: float = 180) -> str:
    """`docker-compose -p project -f ... args`, from the directory of the first file; returns its
    output, fails the test on an error."""
    directory = files[0].parent
    cmd = [compose_tool(), "--project-name", project, "--project-directory", str(directory)]
    for f in files:
        cmd += ["--file", str(f)]
    result = run(
        [*cmd, *args], cwd=directory, env=compose_environ(directory / ".env"), timeout=timeout
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"docker-compose {' '.join(args)}: {out}"
    return out


def test_compose_file_passes_docker_compose_config_with_its_gpu_reservation(
    tmp_path: Path,
) -> None:
    # Given the compose file and .env.example copied as the comments say
    compose_file = admin_copy(tmp_path / "fetcher")
    # When docker-compose (Debian 12's 1.29) validates and resolves it
    out = compose("config-check", [compose_file], "config")
    print(out)
    # Then it reads the GPU reservation, and what a GPU box needs is there
    for expected in (
        "driver: nvidia",
        "count: all",
        "- gpu",
        "restart: always",
        "/var/run/docker.sock:/var/run/docker.sock:rw",
        "/srv/decode-fetcher:/data:rw",
        "PATH_BASE: /data",
        "PATH_HOST_BASE: /srv/decode-fetcher",
        "API_URL: https://api.example.org:8001",  # from .env, through env_file
        "host.docker.internal:host-gateway",
        "- fetcher\n      - health",
        "max-size: 50m",
        "image: decode-fetcher:latest",
    ):
        assert expected in out, f"{expected!r} not in docker-compose config:\n{out}"
    # And .env's PATH_BASE and empty PATH_HOST_BASE (.env.example's) do not win over the file's
    assert "/data/decode-fetcher" not in out and "PATH_HOST_BASE: ''" not in out


def unique_project(name: str) -> str:
    return f"fetcher-{name}-{uuid.uuid4().hex[:8]}"


def compose_leftovers(engine: Any, project: str) -> list[str]:
    label = f"com.docker.compose.project={project}"
    containers = [c.name for c in engine.containers.list(all=True, filters={"label": label})]
    networks = [n.name for n in engine.networks.list(filters={"label": label})]
    return containers + networks


@pytest.mark.docker
def test_compose_gives_the_container_the_gpus_socket_paths_and_policies(
    tmp_path: Path, engine: Any
) -> None:
    # Given the admin's copy with a job directory of its own (created, not started: no GPU here;
    # the image is only a stand-in, nothing runs)
    project = unique_project("create")
    host_base = tmp_path / "jobs"
    compose_file = admin_copy(
        tmp_path / "fetcher",
        f"PATH_HOST_BASE={host_base}\nFETCHER_IMAGE=fetcher-test/busybox:1\n"
        f"FETCHER_CONTAINER_NAME={project}-fetcher\n",
    )
    try:
        # When docker-compose creates it
        compose(project, [compose_file], "up", "--no-start")
        attrs = engine.containers.get(f"{project}-fetcher").attrs
        host, config = attrs["HostConfig"], attrs["Config"]
        # Then the engine got the GPU reservation as `--gpus all` would give it
        [request] = host["DeviceRequests"]
        assert request["Driver"] == "nvidia" and request["Count"] == -1
        assert request["Capabilities"] == [["gpu"]]
        # And the socket, the job directory at /data with PATH_HOST_BASE its host side
        assert sorted(host["Binds"]) == sorted(
            ["/var/run/docker.sock:/var/run/docker.sock:rw", f"{host_base}:/data:rw"]
        )
        assert {"PATH_BASE=/data", f"PATH_HOST_BASE={host_base}"} <= set(config["Env"])
        # And restart always, the health check, the stop timeout, rotated logs, the host gateway
        assert host["RestartPolicy"]["Name"] == "always"
        assert config["Healthcheck"]["Test"] == ["CMD", "fetcher", "health"]
        assert config["StopTimeout"] == 45  # also what dockerd waits when it stops the fetcher
        assert host["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-file": "5", "max-size": "50m"},
        }
        assert host["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    finally:
        compose(project, [compose_file], "down")
    assert not compose_leftovers(engine, project)


def without_gpu_reservation(text: str) -> str:
    """The compose file without its `deploy:` block (the GPU reservation): this CI host has no GPU,
    and the engine refuses to start a container that reserves one."""
    lines = text.splitlines(keepends=True)
    start = lines.index("    deploy:\n")
    end = start + 1
    while end < len(lines) and lines[end].startswith("      "):
        end += 1
    out = "".join(lines[:start] + lines[end:])
    assert "nvidia" not in out and "capabilities" not in out
    return out


@pytest.fixture
def bridge_env(tmp_path: Path, engine: Any) -> Iterator[Env]:
    """A mock API on the bridge gateway's address: what a container reaches as
    host.docker.internal (the compose file's extra_hosts), as an API on the host would be. The
    engine says which address that is: the bridge's IPAM does not always name its gateway."""
    hosts = engine.containers.run(
        IMAGE, ["cat", "/etc/hosts"], extra_hosts={"gateway": "host-gateway"}, remove=True
    ).decode()
    [gateway] = [line.split()[0] for line in hosts.splitlines() if line.endswith("\tgateway")]
    state = MockState(str(tmp_path / "data"), API_KEY, [TOKEN])
    base = tmp_path / "base"
    base.mkdir()
    with MockServer(state, host=gateway) as server:
        yield Env(server, tmp_path, base)


@pytest.mark.docker
@pytest.mark.slow
def test_compose_up_runs_a_job_against_the_mock_and_down_leaves_nothing(
    bridge_env: Env,
    engine: Any,
    fetcher_image: str,
) -> None:
    env = bridge_env
    project = unique_project("up")
    name = f"{project}-fetcher"
    metrics_port = free_port()
    directory = env.root / "compose"
    admin_copy(
        directory,
        f"API_URL=http://host.docker.internal:{env.mock.port}\nACCESS_TOKEN={TOKEN}\n"
        f"PATH_HOST_BASE={env.base}\nFETCHER_IMAGE={fetcher_image}\nFETCHER_CONTAINER_NAME={name}\n"
        f"FETCHER_ID={fetcher_id('compose')}\nMETRICS_PORT=9464\nTIMEOUT_JOB=0.5\nTIMEOUT_STATUS=1\n"
        "SHM_SIZE=64m\nJOB_DEFAULT_MEMORY_MB=64\n",
    )
    # Given the compose file without its GPU reservation (no GPU here), and, for the test only, the
    # metrics port published on 127.0.0.1 and a health check every second instead of every minute
    compose_file = directory / COMPOSE_FILE.name
    compose_file.write_text(without_gpu_reservation(COMPOSE_FILE.read_text()))
    override = directory / "test-override.yml"
    override.write_text(
        "services:\n  fetcher:\n"
        f'    ports: ["127.0.0.1:{metrics_port}:9464"]\n'
        "    healthcheck:\n      interval: 1s\n"
    )
    files = [compose_file, override]
    job = env.submit(["echo hello from compose > /files/output/hello.txt"])
    try:
        # When the admin runs `docker compose up -d`
        compose(project, files, "up", "-d")
        # Then the fetcher claims the job, runs it on the host's engine and reports it finished
        wait_for(lambda: job.status.value in ("finished", "error"), 120, "the job's end")
        container = engine.containers.get(name)
        logs = container.logs().decode()
        assert job.status.value == "finished", (job.history, logs)
        assert any(u["filename"] == "hello.txt" for u in job.uploads), logs
        # And Docker calls it healthy (`fetcher health` in the container)
        wait_for(
            lambda: container.reload() or container.attrs["State"]["Health"]["Status"] == "healthy",
            60,
            "the health check",
        )
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
        # And the daemon's own /metrics page is clean for promtool, and counts the job
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            page = r.read().decode()
        assert 'fetcher_jobs_total{outcome="finished"} 1.0' in page
        lint = promtool_check_metrics(page)
        assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr
        # And `docker compose stop` ends it cleanly, well within the stop grace period
        started = time.monotonic()
        compose(project, files, "stop")
        elapsed = time.monotonic() - started
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()
        assert elapsed < 30, f"stop took {elapsed:.1f} s"
        assert TOKEN not in container.logs().decode()
    finally:
        with contextlib.suppress(AssertionError):
            compose(project, files, "down")
    # And `down` leaves no container and no network of the project
    assert not compose_leftovers(engine, project)


# --- systemd --------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> its values, in order (a key may repeat), from a unit file."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `fetcher` instead of
    /opt/decode-fetcher/bin/fetcher (the install step in its comments did not happen here, and
    `systemd-analyze verify` wants the executable to exist). Nothing else is changed."""
    fetcher = Path(sys.executable).with_name("fetcher")
    assert os.access(fetcher, os.X_OK), f"{fetcher}: poetry install makes it"
    text = UNIT.read_text()
    old = "ExecStart=/opt/decode-fetcher/bin/fetcher "
    assert text.count(old) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(old, f"ExecStart={fetcher} "))
    return unit


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    result = run([analyze, "verify", str(unit_here(tmp_path))])
    # clean: no exit code only, not a word either (an unknown key or a bad value is a warning
    # with exit code 0)
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


def test_systemd_analyze_verify_speaks_up_about_a_bad_unit(tmp_path: Path) -> None:
    # (so that the silence above means something)
    analyze = tool("systemd-analyze", "systemd")
    unit = unit_here(tmp_path)
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=mixd\nTimeoutStopSecs=1"))
    result = run([analyze, "verify", str(unit)])
    assert "Failed to parse kill mode" in result.stderr, result.stderr
    assert "Unknown key 'TimeoutStopSecs'" in result.stderr, result.stderr


def seconds(span: str) -> float:
    """A systemd time span in seconds, as systemd reads it (`systemd-analyze timespan`)."""
    result = run([tool("systemd-analyze", "systemd"), "timespan", span])
    assert result.returncode == 0, result.stderr
    [micros] = re.findall(r"μs: (\d+)", result.stdout)
    return int(micros) / 1e6


def test_systemd_unit_stop_semantics_match_the_drain() -> None:
    unit = unit_settings(UNIT.read_text())

    def one(key: str) -> str:
        [value] = unit[key]
        return value

    # The first stop signal is the daemon's drain signal, to the daemon alone
    assert one("Service.KillSignal") == "SIGTERM" and one("Service.KillMode") == "mixed"
    # A long drain: hours-long trainings finish and report
    assert seconds(one("Service.TimeoutStopSec")) >= 3600
    # When it runs out, the daemon gets its second SIGTERM (hand back now), not a SIGKILL...
    assert one("Service.TimeoutStopFailureMode") == "abort"
    assert one("Service.WatchdogSignal") == "SIGTERM"
    assert "Service.WatchdogSec" not in unit  # the watchdog signal is for the stop alone
    # ... and time to hand back: it exits within STOP_GRACE_S + 30 s
    stop_grace_s = Settings.model_fields["stop_grace_s"].default
    assert seconds(one("Service.TimeoutAbortSec")) >= stop_grace_s + 30 + 30
    assert one("Service.SendSIGKILL") == "yes" and one("Service.FinalKillSignal") == "SIGKILL"
    # The engine: ordered after it, but its restart never stops the fetcher
    assert "docker.service" in one("Unit.After") and "docker.service" in one("Unit.Wants")
    assert not {"Unit.Requires", "Unit.BindsTo", "Unit.PartOf"} & set(unit)
    assert one("Service.Restart") == "always"


def test_a_configuration_error_exits_2_which_the_unit_does_not_restart(tmp_path: Path) -> None:
    # Given the unit's RestartPreventExitStatus, and a fetcher.env without API_URL
    assert unit_settings(UNIT.read_text())["Service.RestartPreventExitStatus"] == ["2"]
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PATH_BASE": str(tmp_path)}
    # When systemd starts the fetcher
    result = run([str(Path(sys.executable).with_name("fetcher")), "run"], cwd=tmp_path, env=environ)
    # Then it exits 2 with one line naming the setting, and would not be restarted in a loop
    assert result.returncode == 2, result.stdout + result.stderr
    assert "API_URL" in result.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_the_units_stop_signals_drain_then_hand_back_a_running_job(env: Env, engine: Any) -> None:
    # Given a fetcher running a job, as the unit runs it (settings from the environment)
    unit = unit_settings(UNIT.read_text())
    first = getattr(signal, unit["Service.KillSignal"][0])
    second = getattr(signal, unit["Service.WatchdogSignal"][0])
    abort_s = seconds(unit["Service.TimeoutAbortSec"][0])
    job = env.submit(["trap '' TERM", ";", "sleep 300"])  # a training that ignores SIGTERM
    proc = fetcher_process(env, fetcher_id("unit"), STOP_GRACE_S="2", MAX_PARALLEL_JOBS="2")
    try:
        wait_for(lambda: job.status.value == "running", 60, "the job running")
        # When `systemctl stop` sends KillSignal
        proc.send_signal(first)
        later = env.submit(["true"])
        time.sleep(3)
        # Then the fetcher drains: it lives on, the job runs on, and the free slot claims nothing
        assert proc.poll() is None
        assert job.status.value == "running"
        assert later.status.value == "queued" and not later.claims
        # When TimeoutStopSec has run out and systemd sends WatchdogSignal
        proc.send_signal(second)
        sent = time.monotonic()
        rc = proc.wait(abort_s)
        # Then it stops the job, hands it back and exits 0 well within TimeoutAbortSec
        assert time.monotonic() - sent < abort_s / 2
    finally:
        proc.kill()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert rc == 0, output
    assert job.status.value == "queued", job.history
    assert "worker shut down" in job.history[-1]["runtime_details"]


# --- the unit under a real systemd ------------------------------------------------------------------

# A stand-in for the fetcher at the unit's ExecStart path: it logs every SIGTERM it gets, and what it
# runs as, and after the second SIGTERM exits 0 (MODE=hand-back: what the fetcher does) or goes on
# (MODE=hang: a fetcher that cannot end); MODE=config-error exits 2 at once.
STAND_IN = """#!/usr/bin/python3
import os, signal, sys, time
log = open("/var/log/exp/events", "a", buffering=1)
mode = open("/var/log/exp/mode").read().strip()
def event(what):
    log.write(f"{time.time():.3f} {os.getpid()} {what}\\n")
count = 0
def on_term(signum, frame):
    global count
    count += 1
    event(f"SIGTERM {count}")
    if count == 2 and mode == "hand-back":
        event("exit 0")
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
event(f"start uid={os.getuid()} groups={sorted(os.getgroups())} cwd={os.getcwd()}"
      f" PATH_BASE={os.environ.get('PATH_BASE')} API_URL={os.environ.get('API_URL')}"
      f" mode={oct(os.stat('.').st_mode & 0o777)}")
if mode == "config-error":
    sys.exit(2)
while True:
    time.sleep(0.1)
"""

# The unit's timeouts, shortened for the test (a drop-in, as an admin would tune them).
SHORT = {"TimeoutStopSec": 3, "TimeoutAbortSec": 3, "RestartSec": 1}


def systemd_root(tmp_path: Path) -> Path:
    """A root file system for a container whose /usr is the host's (systemd, python3): the unit
    file as it is, a drop-in with SHORT timeouts, the user and groups the unit's comments create,
    fetcher.env, and STAND_IN as /opt/decode-fetcher/bin/fetcher."""
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
        "decode-fetcher:x:999:999::/var/lib/decode-fetcher:/usr/sbin/nologin\n",
        "etc/group": "root:x:0:\ndocker:x:998:decode-fetcher\ndecode-fetcher:x:999:\n",
        "etc/machine-id": "",
        "etc/decode-fetcher/fetcher.env": "API_URL=https://api.example.org:8001\n",
        f"etc/systemd/system/{UNIT.name}": UNIT.read_text(),
        f"etc/systemd/system/{UNIT.name}.d/short.conf": "[Service]\n"
        + "".join(f"{k}={v}s\n" for k, v in SHORT.items()),
        "opt/decode-fetcher/bin/fetcher": STAND_IN,
    }
    tar = tmp_path / "root.tar"
    with tarfile.open(tar, "w") as t:
        for name in ("bin", "lib", "lib64", "sbin"):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, f"usr/{name}"
            t.addfile(link)
        for name in ("usr", "proc", "sys", "dev", "run", "tmp", "root", "var/lib", "var/log/exp"):
            d = tarfile.TarInfo(name)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            t.addfile(d)
        os_release = tarfile.TarInfo("etc/os-release")
        os_release.type, os_release.linkname = tarfile.SYMTYPE, "../usr/lib/os-release"
        t.addfile(os_release)
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size, info.mode = len(data), 0o755 if name.startswith("opt/") else 0o644
            t.addfile(info, io.BytesIO(data))
    return tar


@pytest.fixture
def systemd_container(tmp_path: Path, engine: Any) -> Iterator[tuple[Any, Path]]:
    """systemd (the host's, as PID 1) in a container, with the unit installed; the stand-in's log
    directory on the host."""
    tool("systemd-analyze", "systemd")
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("systemd in an unprivileged container is set up here for cgroup v1 hosts only")
    if not Path("/usr/lib/systemd/systemd").exists() or not Path("/usr/bin/python3").exists():
        pytest.fail("the host's /usr has no systemd or python3 (scripts/test.sh installs systemd)")
    tag = f"fetcher-test/systemd-root:{uuid.uuid4().hex[:8]}"
    imported = run([DOCKER, "import", str(systemd_root(tmp_path)), tag])
    assert imported.returncode == 0, imported.stderr
    logs = tmp_path / "log"
    logs.mkdir()
    logs.chmod(0o777)  # the unit's User= writes there
    container = None
    try:
        container = engine.containers.run(
            tag,
            entrypoint=["/usr/lib/systemd/systemd"],
            environment={"container": "docker"},
            tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
            volumes={
                "/usr": {"bind": "/usr", "mode": "ro"},
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
                str(logs): {"bind": "/var/log/exp", "mode": "rw"},
            },
            detach=True,
        )
        wait_for(
            lambda: systemctl(container, "is-system-running").strip() in ("running", "degraded"),
            60,
            "systemd up in the container",
        )
        yield container, logs
    finally:
        if container is not None:
            container.remove(force=True)
        engine.images.remove(tag, force=True)


def systemctl(container: Any, *args: str) -> str:
    _code, out = container.exec_run(["systemctl", *args])
    return str(out.decode())


def unit_state(container: Any) -> dict[str, str]:
    out = systemctl(container, "show", UNIT.name, "-p", "ActiveState,Result,NRestarts,MainPID")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def events(logs: Path) -> list[tuple[float, int, str]]:
    text = (logs / "events").read_text() if (logs / "events").exists() else ""
    out = []
    for line in text.splitlines():
        at, pid, what = line.split(" ", 2)
        out.append((float(at), int(pid), what))
    return out


def start_stand_in(container: Any, logs: Path, mode: str) -> None:
    for name, text in (("mode", mode), ("events", "")):
        (logs / name).write_text(text)
        (logs / name).chmod(0o666)  # for the unit's User=
    systemctl(container, "reset-failed", UNIT.name)
    systemctl(container, "start", UNIT.name)
    try:
        wait_for(lambda: any("start" in e[2] for e in events(logs)), 20, "the unit started")
    except AssertionError:
        journal = container.exec_run(["journalctl", "-u", UNIT.name, "--no-pager"])[1].decode()
        raise AssertionError(f"the unit did not start:\n{journal}") from None


@pytest.mark.docker
@pytest.mark.slow
def test_systemd_runs_the_unit_and_its_stop_is_drain_then_hand_back_then_kill(
    systemd_container: tuple[Any, Path],
) -> None:
    container, logs = systemd_container
    # Given the unit started by systemd (with a stand-in for the fetcher that ignores every signal)
    start_stand_in(container, logs, "hang")
    [(_, _, started)] = events(logs)
    # Then it runs as the unit's user with the docker group, in its state directory (mode 700),
    # with fetcher.env's settings
    assert "uid=999 groups=[998, 999]" in started, started
    assert "cwd=/var/lib/decode-fetcher PATH_BASE=/var/lib/decode-fetcher" in started, started
    assert "API_URL=https://api.example.org:8001 mode=0o700" in started, started
    # When the admin stops it
    began = time.monotonic()
    systemctl(container, "stop", UNIT.name)
    elapsed = time.monotonic() - began
    # Then: SIGTERM (the drain); TimeoutStopSec later SIGTERM again (hand back); TimeoutAbortSec
    # later SIGKILL; the unit says it timed out, and is not restarted
    limit = SHORT["TimeoutStopSec"] + SHORT["TimeoutAbortSec"]
    assert limit - 0.5 < elapsed < limit + 5
    got = events(logs)
    assert [what for _, _, what in got[1:]] == ["SIGTERM 1", "SIGTERM 2"], got
    (t1, _, _), (t2, _, _) = got[1:]
    assert SHORT["TimeoutStopSec"] - 0.5 < t2 - t1 < SHORT["TimeoutStopSec"] + 2.5
    state = unit_state(container)
    assert state["ActiveState"] == "failed" and state["Result"] == "timeout", state
    assert state["NRestarts"] == "0"
    journal = container.exec_run(["journalctl", "-u", UNIT.name, "--no-pager", "-o", "cat"])[1]
    assert "State 'stop-sigterm' timed out. Aborting." in journal.decode()
    assert "with signal SIGTERM" in journal.decode()
    assert "State 'stop-watchdog' timed out. Killing." in journal.decode()
    assert "code=killed, status=9/KILL" in journal.decode()


@pytest.mark.docker
@pytest.mark.slow
def test_systemd_second_sigterm_by_hand_kill_restarts_and_a_config_error_does_not(
    systemd_container: tuple[Any, Path],
) -> None:
    container, logs = systemd_container
    # Given the unit running a stand-in that hands back and exits at its second SIGTERM, with a
    # drain of a minute (none of it should be waited for)
    drop_in = f"/etc/systemd/system/{UNIT.name}.d/zz-long-drain.conf"
    code, out = container.exec_run(
        ["sh", "-c", f"printf '[Service]\\nTimeoutStopSec=60s\\n' > {drop_in}"]
    )
    assert code == 0, out.decode()
    systemctl(container, "daemon-reload")
    start_stand_in(container, logs, "hand-back")
    # When the admin stops it, then sends the second SIGTERM by hand, as the unit's comments say
    systemctl(container, "stop", "--no-block", UNIT.name)
    wait_for(lambda: any(e[2] == "SIGTERM 1" for e in events(logs)), 10, "the first SIGTERM")
    systemctl(container, "kill", "--kill-whom=main", "--signal=SIGTERM", UNIT.name)
    # Then the stand-in gets it at once (not TimeoutStopSec later), exits 0, and the stop succeeds
    wait_for(lambda: unit_state(container)["ActiveState"] == "inactive", 10, "the unit stopped")
    got = events(logs)
    assert [what for _, _, what in got[1:]] == ["SIGTERM 1", "SIGTERM 2", "exit 0"], got
    (t1, _, _), (t2, _, _) = got[1:3]
    assert t2 - t1 < 30
    assert unit_state(container)["Result"] == "success"
    container.exec_run(["rm", drop_in])
    systemctl(container, "daemon-reload")

    # When the admin SIGKILLs it to restart it without stopping its jobs
    start_stand_in(container, logs, "hand-back")
    systemctl(container, "kill", "--signal=SIGKILL", UNIT.name)
    # Then systemd starts it again (the fetcher adopts the running containers)
    wait_for(lambda: unit_state(container)["NRestarts"] == "1", 20, "the restart")
    wait_for(lambda: len([e for e in events(logs) if "start" in e[2]]) == 2, 20, "a new process")

    # When it exits 2 (a configuration error)
    systemctl(container, "stop", UNIT.name)
    start_stand_in(container, logs, "config-error")
    time.sleep(SHORT["RestartSec"] + 2)
    # Then it is not restarted in a loop
    state = unit_state(container)
    assert state["ActiveState"] == "failed" and state["NRestarts"] == "0", state
    assert len([e for e in events(logs) if "start" in e[2]]) == 1
