"""`fetcher info` and `fetcher gpu probe`: what would be offered now (only free, healthy GPUs; MIG
instances as slots of their own; the first claim names its GPU; what is kept out and why), and
what the probe shows of each device."""

from __future__ import annotations

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Nvml
from fetcher.gpu.probe import offer_view, probe, render
from fetcher.host import Host
from fetcher.pool import ResourcePool
from fetcher.quarantine import Quarantine
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml

GiB = 1024**3


def view(fake: FakeNvml, quarantined: int | None = None) -> dict[str, object]:
    nvml = Nvml(fake)
    assert nvml.open()
    gpus = nvml.devices()
    board = GpuBoard(nvml, gpus, Quarantine(3))
    if quarantined is not None:
        board.quarantine.put(gpus[quarantined].uuid, "critical Xid 79 reported by NVML")
    pool = ResourcePool(Host(32, 256000, tuple(gpus)), None, board=board)
    return offer_view(pool.host, pool, board, [])


def test_info_offers_only_free_healthy_gpus_and_says_why_the_others_are_kept_out() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100(), FakeGpu.v100()])
    fake.add_process(0, 4000, 12 * GiB)  # someone's notebook
    info = view(fake, quarantined=1)
    gpus = info["gpus"]
    assert isinstance(gpus, list) and [g["model"] for g in gpus] == ["Tesla V100-SXM2-16GB"]
    assert info["parallel_jobs"] == 1
    first = info["first_claim"]
    assert isinstance(first, dict) and first["gpu_mem"] == 16384
    assert first["for_gpu"]["uuid"] == gpus[0]["uuid"]
    kept = info["kept_out"]
    assert isinstance(kept, list) and len(kept) == 2
    whys = sorted(k["why"] for k in kept)
    assert whys[0].startswith("busy with others: 1 process(es) not ours use 12288 MB")
    assert whys[1] == "quarantined: critical Xid 79 reported by NVML"


def test_info_counts_mig_instances_as_slots_of_their_own() -> None:
    fake = FakeNvml([FakeGpu.h100()])
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856), FakeMig(2, memory_mib=19968)])
    info = view(fake)
    assert info["parallel_jobs"] == 2
    first = info["first_claim"]
    assert isinstance(first, dict)
    assert first["gpu_mem"] == 19968 and first["for_gpu"]["mig_parent"] == fake.gpu(0).uuid
    assert first["gpu_model"] == "NVIDIA H100 80GB HBM3" and first["gpu_archi"] == "hopper"


def test_with_every_gpu_kept_out_nothing_would_be_claimed() -> None:
    info = view(FakeNvml([FakeGpu.a100()]), quarantined=0)
    assert info["first_claim"] is None and info["parallel_jobs"] == 0


def test_the_probe_shows_health_processes_offer_and_device_request() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()], driver="535.104.05", cuda=12020)
    fake.add_process(0, 4242, 12 * GiB)
    fake.set_retired_pages_pending(1)
    info = probe(fake)
    assert (info["driver"], info["cuda"]) == ("535.104.05", "12.2")
    first, second = info["devices"]
    assert first["processes"] == [{"pid": 4242, "memory_mb": 12288}] and not first["offered"]
    assert second["health"].startswith("retired memory pages are pending") and not second["offered"]
    assert second["device_request"]["DeviceIDs"] == [second["uuid"]]
    assert second["device_request"]["Driver"] == "nvidia"
    text = render(info)
    assert "NVIDIA driver 535.104.05, supports CUDA 12.2" in text
    assert "offered to jobs: no: quarantined: retired memory pages are pending" in text


def test_the_probe_says_plainly_when_there_is_no_driver() -> None:
    import pynvml

    info = probe(FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert info["nvml"].startswith("not available") and info["devices"] == []
    assert "--gpus all" in render(info)


def test_the_probe_on_a_box_with_a_lost_gpu_shows_the_others_and_names_the_lost_one() -> None:
    # Given two A100s, the first fallen off the bus (the box an admin probes)
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    fake.fall_off_bus(0)
    # When probed
    info = probe(fake)
    # Then the healthy one is shown, and the lost one is named with NVML's reason
    assert [d["index"] for d in info["devices"]] == [1]
    assert [g["index"] for g in info["left_out"]] == [0]
    assert "GPU 0: left out, NVML cannot read it" in render(info)
