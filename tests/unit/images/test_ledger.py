"""The ledger of the images jobs used, and when: kept across restarts, read as far as it makes
sense when damaged, never a failure when it cannot be written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetcher.images.ledger import ImageLedger


def test_ledger_keeps_the_latest_use_across_restarts(tmp_path: Path) -> None:
    # Given a ledger that records uses
    path = tmp_path / "state" / "images.json"
    ledger = ImageLedger(path)
    ledger.used("a:1", 100.0)
    ledger.used("a:1", 50.0)  # an older use does not move it back
    ledger.used("b:1", 200.0)
    ledger.forget(["b:1", "never-there"])

    # When the fetcher restarts
    again = ImageLedger(path)

    # Then it knows what it knew
    assert again.snapshot() == {"a:1": 100.0}
    assert json.loads(path.read_text()) == {"a:1": 100.0}
    assert not path.with_name("images.json.tmp").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"a:1": "yesterday", "b:1": 5}'])
def test_a_damaged_ledger_is_read_as_far_as_it_makes_sense(tmp_path: Path, content: str) -> None:
    path = tmp_path / "images.json"
    path.write_text(content)
    snapshot = ImageLedger(path).snapshot()
    assert snapshot in ({}, {"b:1": 5.0})


def test_a_ledger_that_cannot_be_written_logs_and_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a ledger whose directory is a file
    blocker = tmp_path / "state"
    blocker.write_text("")
    ledger = ImageLedger(blocker / "images.json")

    # When a use is recorded, nothing is raised and it is remembered in memory
    ledger.used("a:1", 1.0)
    assert ledger.snapshot() == {"a:1": 1.0}
    assert "images: could not write the ledger" in caplog.text
