"""Faithful stand-ins for the outside world the fetcher talks to (see each module's docstring)."""

from tests.fakes.nvml import (
    APPLICATION_XIDS,
    SIMULATED,
    FakeGpu,
    FakeMig,
    FakeNvml,
    FakeProcess,
)

__all__ = [
    "APPLICATION_XIDS",
    "SIMULATED",
    "FakeGpu",
    "FakeMig",
    "FakeNvml",
    "FakeProcess",
]
