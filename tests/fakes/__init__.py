"""Faithful stand-ins for the outside world the fetcher talks to (see each module's docstring):
NVML (`nvml`), the server's side of the status calls (`status`), a clock (`clock`)."""

from tests.fakes.clock import FakeClock
from tests.fakes.nvml import APPLICATION_XIDS, SIMULATED, FakeGpu, FakeMig, FakeNvml, FakeProcess
from tests.fakes.status import StatusServer, StatusSink

__all__ = [
    "APPLICATION_XIDS",
    "SIMULATED",
    "FakeClock",
    "FakeGpu",
    "FakeMig",
    "FakeNvml",
    "FakeProcess",
    "StatusServer",
    "StatusSink",
]
