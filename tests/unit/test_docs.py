"""The README and .env.example name every setting, and CI runs the README's test command."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    name = env_name(field)
    assert f"{name}=" in (ROOT / ".env.example").read_text(), f"{name} missing from .env.example"
    assert f"`{name}`" in (ROOT / "README.md").read_text(), (
        f"{name} missing from the README's table"
    )


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test.sh" in (ROOT / "README.md").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()
