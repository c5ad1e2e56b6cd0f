"""What the claim offers on a GPU box: only free, healthy GPUs, with the memory they really have;
MIG instances are slots of their own; nothing goes to a quarantined GPU."""

from __future__ import annotations

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Nvml
from fetcher.host import Host
from fetcher.models import HardwareSpecs
from fetcher.pool import Allocation, NoFit, ResourcePool
from fetcher.quarantine import Quarantine
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml

GiB = 1024**3


def pool_of(fake: FakeNvml) -> tuple[ResourcePool, GpuBoard]:
    nvml = Nvml(fake)
    assert nvml.open()
    gpus = nvml.devices()
    board = GpuBoard(nvml, gpus, Quarantine(3))
    return ResourcePool(Host(32, 256000, tuple(gpus)), None, board=board), board


def test_the_offer_names_the_free_gpu_with_the_most_memory_it_really_has() -> None:
    # Given an A100 80GB busy with someone's notebook and a free V100
    fake = FakeNvml([FakeGpu.a100(memory_mib=81920), FakeGpu.v100()])
    pool, board = pool_of(fake)
    fake.add_process(0, 4000, 20 * GiB)
    board.refresh(held=set())
    # Then the offer is for the V100, whole
    found = pool.offer_for([])
    assert found is not None
    offer, gpu = found
    assert gpu is not None and gpu.model == "Tesla V100-SXM2-16GB"
    assert (offer.gpu_mem, offer.gpu_model, offer.gpu_archi) == (16384, gpu.model, "volta")
    # and a job needing the A100's 40 GB does not fit what is free
    assert isinstance(pool.allocate("1", HardwareSpecs(gpu_mem=40000)), NoFit)


def test_a_quarantined_gpu_is_never_given_to_a_job() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    pool, board = pool_of(fake)
    board.quarantine.put(board.gpus[0].uuid, "critical Xid 79 reported by NVML")
    first = pool.allocate("1", HardwareSpecs(gpu_mem=1000))
    assert isinstance(first, Allocation) and first.gpus[0].uuid == board.gpus[1].uuid
    assert isinstance(pool.allocate("2", HardwareSpecs(gpu_mem=1000)), NoFit)


def test_each_mig_instance_is_a_slot_with_its_own_memory() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856), FakeMig(2, memory_mib=19968)])
    pool, _ = pool_of(fake)
    assert pool.max_jobs == 2
    small = pool.allocate("1", HardwareSpecs(gpu_mem=8000, cpu_cores=1, memory=1000))
    big = pool.allocate("2", HardwareSpecs(gpu_mem=16000, cpu_cores=1, memory=1000))
    assert isinstance(small, Allocation) and isinstance(big, Allocation)
    assert small.gpus[0].uuid.startswith("MIG-") and small.gpus[0].memory_mb == 9856
    assert big.gpus[0].memory_mb == 19968
    assert pool.offer([]) is None  # both slots taken
