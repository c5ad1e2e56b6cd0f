"""Settings: each wrong or missing one named with what is expected, `.env` and the upstream
fetcher's names read, and what works from a shell (JOB_GROUPS; ACCESS_TOKEN over a login shell's
USERNAME)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetcher.api.auth import CognitoLogin, FixedToken
from fetcher.api.client import WorkerApi
from fetcher.errors import ConfigError
from fetcher.settings import Settings, env_name, load_settings


# --- what is missing or wrong is named -------------------------------------------------------
def test_missing_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in ("API_URL", "ACCESS_TOKEN", "USERNAME", "PASSWORD", "PATH_BASE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "API_URL: missing" in str(info.value) and "PATH_BASE: missing" in str(info.value)


def test_wrong_settings_name_the_setting_and_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("API_URL", "ftp://x")
    monkeypatch.setenv("PATH_BASE", str(tmp_path))
    monkeypatch.setenv("ACCESS_TOKEN", "abc12345")
    monkeypatch.setenv("TIMEOUT_JOB", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "API_URL: expected an http:// or https:// URL" in text
    assert "TIMEOUT_JOB:" in text and "number" in text
    assert "abc12345" not in text


def test_auth_settings_need_a_token_or_a_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("API_URL", "http://x")
    monkeypatch.setenv("PATH_BASE", str(tmp_path))
    monkeypatch.delenv("ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("USERNAME", "alice")
    monkeypatch.delenv("PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="PASSWORD"):
        load_settings()


def test_dotenv_and_legacy_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in (
        "API_URL",
        "ACCESS_TOKEN",
        "USERNAME",
        "PASSWORD",
        "PATH_BASE",
        "TIMEOUT_JOB",
        "TIMEOUT_STATUS",
    ):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / ".env").write_text(
        f"API_URL=http://api:8001/\nACCESS_TOKEN=tok12345\nPATH_BASE={tmp_path}\nTIMEOUT_JOB=5\nTIMEOUT_STATUS=30\n"
    )
    s = load_settings()
    assert (
        s.api_url == "http://api:8001" and s.poll_interval_s == 5 and s.keepalive_interval_s == 30
    )
    assert s.host_base == tmp_path and "tok12345" not in repr(s)


def test_exit_idle_polls_defaults_to_3_and_must_be_at_least_1() -> None:
    base = {"api_url": "http://x", "access_token": "t", "path_base": "/tmp"}
    assert Settings(_env_file=None, **base).exit_idle_polls == 3  # type: ignore[arg-type]
    s = Settings(_env_file=None, exit_idle_polls=5, **base)  # type: ignore[arg-type]
    assert s.exit_idle_polls == 5
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings(_env_file=None, exit_idle_polls=0, **base)  # type: ignore[arg-type]


def test_log_format_is_text_by_default_or_json_and_nothing_else() -> None:
    base: dict[str, object] = {
        "_env_file": None,
        "api_url": "http://api.test",
        "path_base": "/tmp/base",
        "access_token": "tok-123456",
    }
    assert load_settings(**base).log_format == "text"
    assert load_settings(**base, log_format="json").log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_settings(**base, log_format="xml")


# --- settings that work from a shell ---------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


AUTH_NAMES = ("ACCESS_TOKEN", "USERNAME", "PASSWORD", "JOB_GROUPS", "GROUPS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Only the required settings in the environment, and a working directory without `.env`."""
    for name in os.environ:
        if name.upper() in AUTH_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("API_URL", "http://127.0.0.1:8001")
    monkeypatch.setenv("PATH_BASE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def shell_settings(script: str, cwd: Path, prefix: str = "") -> dict[str, object]:
    """Run `script` in bash, then load the settings in a Python it starts (with `prefix`
    assignments, as in `GROUPS=lab fetcher run`); their JSON view."""
    code = (
        "import json; from fetcher.settings import load_settings; s = load_settings();"
        " print(json.dumps({'groups': s.group_list, 'username': s.username,"
        " 'ignored': s.ignored_username, 'token': s.access_token is not None}))"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in AUTH_NAMES and k not in ("API_URL", "PATH_BASE")
    }
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        ["bash", "-c", f'{script}\n{prefix} exec "$0" -c "$1"', sys.executable, code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_groups_setting_is_named_job_groups() -> None:
    assert env_name("job_groups") == "JOB_GROUPS"


def test_bash_cannot_export_groups_but_job_groups_works(tmp_path: Path) -> None:
    # Given a shell that exports both names
    base = f"export API_URL=http://h:1 PATH_BASE={tmp_path} ACCESS_TOKEN=tok-123456"
    got = shell_settings(f"{base}\nexport GROUPS=x\nexport JOB_GROUPS=a,b", tmp_path)
    # Then JOB_GROUPS arrives; and GROUPS alone never reaches the fetcher (bash drops it)
    assert got["groups"] == ["a", "b"]
    assert shell_settings(f"{base}\nexport GROUPS=lab", tmp_path)["groups"] == []
    assert shell_settings(base, tmp_path, prefix="GROUPS=lab")["groups"] == []
    assert shell_settings(base, tmp_path, prefix="JOB_GROUPS=lab")["groups"] == ["lab"]


def test_groups_is_still_read_where_it_can_be_set_and_job_groups_wins(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCESS_TOKEN", "tok-123456")
    monkeypatch.setenv("GROUPS", "old, lab")  # as `docker run -e GROUPS=...` or systemd set it
    assert load_settings().group_list == ["old", "lab"]
    monkeypatch.setenv("JOB_GROUPS", "new")
    assert load_settings().group_list == ["new"]


def test_groups_and_job_groups_are_read_from_a_dotenv_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCESS_TOKEN", "tok-123456")
    (clean_env / ".env").write_text("GROUPS=from-file\n")
    assert load_settings().group_list == ["from-file"]
    (clean_env / ".env").write_text("GROUPS=old\nJOB_GROUPS=a,,b \n")
    assert load_settings().group_list == ["a", "b"]


def test_job_groups_can_be_set_by_its_field_name(clean_env: Path) -> None:
    assert Settings(_env_file=None, access_token="tok-123456", job_groups="x").group_list == ["x"]


def test_a_login_shells_username_does_not_stop_the_start_when_a_token_is_set(
    tmp_path: Path,
) -> None:
    base = f"export API_URL=http://h:1 PATH_BASE={tmp_path} ACCESS_TOKEN=tok-123456"
    got = shell_settings(f"{base}\nexport USERNAME=alice", tmp_path)
    assert got == {"groups": [], "username": None, "ignored": "alice", "token": True}


@pytest.mark.parametrize("password", [None, "pw-of-alice-123"])
def test_token_wins_over_username_and_the_log_says_so_without_the_password(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    password: str | None,
) -> None:
    monkeypatch.setenv("ACCESS_TOKEN", "tok-123456")
    monkeypatch.setenv("USERNAME", "alice")
    if password:
        monkeypatch.setenv("PASSWORD", password)
    settings = load_settings()
    assert settings.username is None and settings.password is None
    assert settings.ignored_username == "alice"
    with caplog.at_level(logging.INFO, logger="fetcher.api.client"):
        api = WorkerApi.from_settings(settings)
    assert isinstance(api.tokens, FixedToken) and api.tokens.token() == "tok-123456"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auth:")]
    assert lines == ["auth: ACCESS_TOKEN is set; ignoring USERNAME=alice and any PASSWORD"]
    assert "pw-of-alice" not in caplog.text and "tok-123456" not in caplog.text


def test_no_log_line_when_only_a_token_is_set(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ACCESS_TOKEN", "tok-123456")
    with caplog.at_level(logging.INFO, logger="fetcher.api.client"):
        WorkerApi.from_settings(load_settings())
    assert "ignoring" not in caplog.text


def test_an_empty_token_in_dotenv_leaves_username_and_password(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("ACCESS_TOKEN=\nUSERNAME=alice\nPASSWORD=pw-123456\n")
    settings = load_settings()
    assert settings.access_token is None and settings.username == "alice"
    assert settings.ignored_username is None
    assert isinstance(WorkerApi.from_settings(settings).tokens, CognitoLogin)


def test_username_without_password_or_token_still_names_what_is_missing(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USERNAME", "alice")
    with pytest.raises(ConfigError, match="PASSWORD: required when USERNAME is set"):
        load_settings()


def test_neither_token_nor_login_is_an_error(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="ACCESS_TOKEN or USERNAME/PASSWORD"):
        load_settings()


def test_an_empty_optional_setting_means_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`PATH_HOST_BASE=` (as .env.example ships it) means PATH_BASE, not `.`; `DRAIN_TIMEOUT_S=`
    and the other optional numbers mean unset, not a configuration error."""
    for name, value in {
        "PATH_HOST_BASE": "",
        "DRAIN_TIMEOUT_S": "",
        "JOB_TIME_LIMIT_S": "",
        "METRICS_PORT": "",
        "IMAGE_KEEP_DAYS": "",
        "MAX_PARALLEL_JOBS": "",
    }.items():
        monkeypatch.setenv(name, value)
    s = Settings(_env_file=None, api_url="http://x", access_token="tok-12345", path_base=tmp_path)
    assert s.host_base == tmp_path
    assert s.drain_timeout_s is None and s.job_time_limit_s is None and s.metrics_port is None
    assert s.image_keep_days is None and s.max_parallel_jobs is None


def test_fetcher_info_shows_the_job_groups() -> None:
    from fetcher.metrics import settings_for_info

    s = Settings(
        _env_file=None,
        api_url="http://x",
        access_token="tok-12345",
        path_base="/tmp",
        job_groups="lab-a,lab-b",
    )
    assert settings_for_info(s)["groups"] == "lab-a,lab-b"
