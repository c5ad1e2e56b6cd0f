"""The GPU watch thread over the faithful fake: an Xid quarantines its GPU within moments; a
running job's GPU is sampled; a driver without events still gets its samples."""

from __future__ import annotations

import logging
import time

import pynvml
import pytest

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Nvml
from fetcher.gpu.watch import GpuWatch
from fetcher.quarantine import Quarantine
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.helpers import wait_for

GiB = 1024**3


def watched(fake: FakeNvml) -> tuple[GpuBoard, GpuWatch]:
    nvml = Nvml(fake)
    assert nvml.open()
    b = GpuBoard(nvml, nvml.devices(), Quarantine(3))
    return b, GpuWatch(b, interval_s=0.05).start()


def test_an_xid_quarantines_its_gpu_while_the_watch_waits() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    b, watch = watched(fake)
    try:
        wait_for(lambda: fake.registered_events(1), 5, "the watch to register its events")
        fake.inject_xid(1, 79)
        wait_for(lambda: b.quarantine.why(b.gpus[1].uuid), 5, "the quarantine")
        assert b.quarantine.why(b.gpus[0].uuid) is None
    finally:
        fake.interrupt_waits()
        watch.stop()


def test_a_running_jobs_gpu_is_sampled() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    b, watch = watched(fake)
    try:
        b.usage.start("42", b.gpus)
        fake.add_process(0, 77, 6 * GiB)
        fake.set_utilization(0, 90)
        wait_for(lambda: (b.usage.current("42") or b).devices[0].samples >= 2, 5, "samples")  # type: ignore[union-attr]
        use = b.usage.finish("42")
        assert use is not None and use.peak_mb == 6144 and use.mean_util == 90
    finally:
        fake.interrupt_waits()
        watch.stop()


def test_without_events_the_watch_still_samples() -> None:
    fake = FakeNvml([FakeGpu.a100(supported_events=0)])
    b, watch = watched(fake)
    try:
        b.usage.start("1", b.gpus)
        fake.add_process(0, 5, GiB)
        wait_for(lambda: (b.usage.current("1") or b).devices[0].samples >= 1, 5, "a sample")  # type: ignore[union-attr]
    finally:
        watch.stop()


def test_after_one_gpu_falls_off_the_bus_the_others_xids_are_still_seen() -> None:
    # Given two watched A100s, the second falls off the bus (its Xid 79, then every wait on a
    # set it is in fails with GpuIsLost)
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    b, watch = watched(fake)
    try:
        wait_for(lambda: fake.registered_events(0), 5, "the watch to register its events")
        fake.fall_off_bus(1)
        # Then its own Xid 79 quarantines it
        wait_for(lambda: b.quarantine.why(b.gpus[1].uuid), 3, "GPU 1's quarantine by its Xid")
        # And a later Xid on the healthy GPU is still seen
        time.sleep(0.3)
        fake.inject_xid(0, 48)
        wait_for(lambda: b.quarantine.why(b.gpus[0].uuid), 3, "GPU 0's quarantine")
    finally:
        fake.interrupt_waits()
        watch.stop()


def test_gpus_without_ecc_still_get_their_xids_watched() -> None:
    # Given an RTX 4090 (no ECC) and an A100 with ECC off: no double-bit ECC events; asked for
    # them with the Xids, NVML registers nothing
    fake = FakeNvml([FakeGpu.rtx4090(), FakeGpu.a100(ecc_enabled=False)])
    b, watch = watched(fake)
    try:
        wait_for(
            lambda: fake.registered_events(0) and fake.registered_events(1),
            3,
            "Xid events registered on both GPUs",
        )
        fake.inject_xid(0, 79)
        wait_for(lambda: b.quarantine.why(b.gpus[0].uuid), 3, "GPU 0's quarantine")
    finally:
        fake.interrupt_waits()
        watch.stop()


def test_a_wait_that_keeps_failing_is_logged_once_and_retried_ever_less_often(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given NVML waits that fail for a reason other than a lost GPU (every GPU still reads fine)
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    nvml = Nvml(fake)
    assert nvml.open()
    board = GpuBoard(nvml, nvml.devices(), Quarantine(3, quiet=True))
    waits: list[float] = []

    def broken_wait(*_a: object, **_k: object) -> None:
        waits.append(time.monotonic())
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(nvml, "wait_event", broken_wait)
    caplog.set_level(logging.WARNING, logger="fetcher.gpu.watch")
    watch = GpuWatch(board, interval_s=0.1).start()
    try:
        time.sleep(1.6)
    finally:
        watch.stop()
    # Then it is logged once, and the pauses between tries double (0.1, 0.2, 0.4, 0.8 s: at most
    # 5 tries in 1.6 s, where a fixed pause would make 16)
    warnings = [r for r in caplog.records if "waiting for NVML events failed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert 2 <= len(waits) <= 5, waits
