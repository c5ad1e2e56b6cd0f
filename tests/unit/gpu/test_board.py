"""The GPU board: which GPUs are offered (healthy, not quarantined, free of others' processes),
with what memory, what is kept out and why, and the CUDA check, over the faithful NVML fake."""

from __future__ import annotations

import pytest

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Nvml, XidEvent
from fetcher.quarantine import Quarantine
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml

GiB = 1024**3
MiB = 1024**2


def board(fake: FakeNvml, foreign_max_mb: int = 256) -> GpuBoard:
    nvml = Nvml(fake)
    assert nvml.open()
    return GpuBoard(nvml, nvml.devices(), Quarantine(3), foreign_max_mb=foreign_max_mb)


def test_a_gpu_with_someone_elses_notebook_on_it_is_not_offered_and_says_why() -> None:
    # Given two A100s, and a notebook of a lab member holding 10 GiB on the first
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    b = board(fake)
    fake.add_process(0, 9001, 10 * GiB)
    # When the board looks
    b.refresh(held=set())
    # Then only the second is offered, whole; the first is kept out with the reason
    offered = b.offerable(held=set())
    assert [(g.uuid, mem) for g, mem in offered] == [(b.gpus[1].uuid, 40960)]
    ((kept, why),) = b.kept_out()
    assert kept.uuid == b.gpus[0].uuid
    assert "busy with others: 1 process(es) not ours use 10240 MB" in why
    assert [v.state for v in b.views({})] == ["busy with others", "free"]


def test_a_small_foreign_context_leaves_the_gpu_offered_with_what_it_really_has() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    b = board(fake, foreign_max_mb=256)
    fake.add_process(0, 9002, 200 * MiB)  # a monitoring tool's context
    b.refresh(held=set())
    assert [mem for _, mem in b.offerable(held=set())] == [40960 - 200]


def test_a_foreign_process_of_unknown_memory_counts_the_whole_devices_use() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    b = board(fake)
    fake.add_process(0, 9003, None)
    fake.set_memory_used(0, 6 * GiB)
    b.refresh(held=set())
    assert b.offerable(held=set()) == []


def test_processes_on_a_gpu_our_job_holds_are_the_jobs_own() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    b = board(fake)
    uuid = b.gpus[0].uuid
    fake.add_process(0, 1234, 30 * GiB)  # our job's training
    b.refresh(held={uuid})
    # not offered (held), but not counted as someone else's either
    assert b.kept_out() == []
    assert [v.state for v in b.views({uuid: "42"})] == ["in use"]
    # once the job ended and its process is gone, the GPU is free and whole
    fake.remove_process(1234)
    b.refresh(held=set())
    assert [mem for _, mem in b.offerable(held=set())] == [40960]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda f: f.set_retired_pages_pending(0),
        lambda f: f.set_ecc_errors(0, uncorrected_volatile=1),
        lambda f: f.lose_gpu(0),
    ],
)
def test_a_health_signal_quarantines_the_gpu_at_once(breakage: object) -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    b = board(fake)
    breakage(fake)  # type: ignore[operator]
    b.refresh(held=set())
    assert [g.uuid for g, _ in b.offerable(held=set())] == [b.gpus[1].uuid]
    assert b.quarantine.why(b.gpus[0].uuid) is not None
    assert [v.state for v in b.views({})] == ["quarantined", "free"]
    assert b.none_healthy() is None


def test_with_every_gpu_quarantined_the_box_says_no_healthy_gpu_is_left() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    b = board(fake)
    fake.set_retired_pages_pending(0)
    b.refresh(held=set())
    assert b.none_healthy() == "no healthy GPU left (1 quarantined: see `fetcher status`)"


def test_a_critical_xid_quarantines_and_an_application_xid_does_not() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    b = board(fake)
    first, second = (g.uuid for g in b.gpus)
    b.on_event(XidEvent([first], 31))  # a page fault of the application: ignored
    b.on_event(XidEvent([second], 79))  # fell off the bus
    assert b.quarantine.why(first) is None
    assert b.quarantine.why(second) == "critical Xid 79 reported by NVML"
    b.on_event(XidEvent([first], 0, "ecc"))
    assert b.quarantine.why(first) == "a double-bit ECC error reported by NVML"


def test_mig_instances_are_offered_one_by_one_with_their_own_memory() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856), FakeMig(2, memory_mib=9856)])
    b = board(fake)
    first, second = b.gpus
    fake.add_process(0, 5000, 4 * GiB, mig=0)  # someone else's process in the first instance
    b.refresh(held=set())
    assert [(g.uuid, mem) for g, mem in b.offerable(held=set())] == [(second.uuid, 9856)]
    assert first.parent == second.parent == fake.gpu(0).uuid


REQUIRE_12_8 = (
    "NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=unknown,driver>=470,driver<471 "
    "brand=tesla,driver>=535,driver<536 brand=nvidia,driver>=535,driver<536"
)


def test_an_image_needing_a_newer_cuda_than_the_driver_is_refused_in_one_line() -> None:
    fake = FakeNvml([FakeGpu.rtx4090()], driver="535.104.05", cuda=12020)
    b = board(fake)
    why = b.cuda_unmet(["PATH=/usr/bin", REQUIRE_12_8], {}, [b.gpus[0].uuid])
    assert why is not None and why.startswith(
        "needs CUDA >= 12.8; this box's driver supports CUDA 12.2 (driver 535.104.05)"
    )
    assert "\n" not in why


def test_an_image_the_driver_can_run_passes_and_so_does_a_cpu_only_job() -> None:
    fake = FakeNvml([FakeGpu.a100()], driver="570.86.15", cuda=12080)
    b = board(fake)
    assert b.cuda_unmet([REQUIRE_12_8], {}, [b.gpus[0].uuid]) is None
    old = FakeNvml([FakeGpu.a100()], driver="535.104.05", cuda=12020)
    assert board(old).cuda_unmet([REQUIRE_12_8], {}, []) is None


def test_the_jobs_own_environment_can_disable_the_check_as_the_runtime_honours_it() -> None:
    fake = FakeNvml([FakeGpu.a100()], driver="535.104.05", cuda=12020)
    b = board(fake)
    assert (
        b.cuda_unmet([REQUIRE_12_8], {"NVIDIA_DISABLE_REQUIRE": "true"}, [b.gpus[0].uuid]) is None
    )


def test_a_humans_notebook_on_an_r470_box_keeps_its_gpu_out_of_the_offer() -> None:
    # Given a driver older than R510 (no _v3 process lists) and someone's 20 GiB notebook
    fake = FakeNvml.r470([FakeGpu.a100(), FakeGpu.a100()])
    fake.add_process(0, 4242, 20 * GiB)
    b = board(fake)
    # When the board looks
    b.refresh(held=set())
    # Then that GPU is kept out
    assert [g.uuid for g, _ in b.offerable(held=set())] == [b.gpus[1].uuid]


def test_trouble_names_a_jobs_gpu_that_was_lost_and_quarantines_it() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    b = board(fake)
    uuids = [b.gpus[1].uuid]
    assert b.trouble(uuids) is None
    fake.fall_off_bus(1)
    why = b.trouble(uuids)
    assert why is not None and why.startswith("gpu 1: NVML cannot read it")
    assert b.quarantine.why(b.gpus[1].uuid) is not None
    assert b.trouble([b.gpus[0].uuid]) is None
