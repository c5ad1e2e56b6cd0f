"""docker-build's wheelhouse: the mock's dependencies are in it, with wheels for the base image's Python."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.docker_tasks import ROOT, image_requirements, wheel_commands


def test_the_image_carries_the_fetcher_and_the_mock_api() -> None:
    names = {r.split("==")[0] for r in image_requirements()}
    assert {"docker", "pydantic", "nvidia-ml-py"} <= names  # main
    assert {"fastapi", "uvicorn", "python-multipart"} <= names  # mock: `fetcher demo` in the image
    assert not {"pytest", "ruff", "mypy", "requests-toolbelt"} & names  # dev stays out
    assert all("==" in r for r in image_requirements())  # pinned from poetry.lock


def test_same_python_builds_wheels_here(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    commands = wheel_commands(tmp_path, (sys.version_info[0], sys.version_info[1]), reqs)
    assert [c[3] for c in commands] == ["wheel", "wheel"]
    assert commands[0][-2:] == ["-r", str(reqs)]


def test_another_python_downloads_binary_wheels_for_it(tmp_path: Path) -> None:
    # Given a base image with Python 3.12 (Ubuntu 24.04's, in CI) and a host with another one
    other = (3, 12) if sys.version_info[:2] != (3, 12) else (3, 13)
    download, project = wheel_commands(tmp_path, other, tmp_path / "requirements.txt")
    tag = f"{other[0]}{other[1]}"
    # Then the dependencies are downloaded as wheels for that Python (pydantic-core is compiled)
    assert download[3] == "download" and "--only-binary=:all:" in download
    assert download[download.index("--python-version") + 1] == f"{other[0]}.{other[1]}"
    assert f"cp{tag}" in download and "--platform" in download
    # And the project itself (pure Python) is built here
    assert project[3] == "wheel" and project[-1] == str(ROOT)
