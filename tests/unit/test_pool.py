"""The resource pool: each job's share (one slot per GPU, each job its own GPU; a job stating
no hardware gets one slot's share), the offer of what is free, and why a job does not fit."""

from __future__ import annotations

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Gpu, Nvml
from fetcher.host import Host
from fetcher.models import HardwareSpecs
from fetcher.pool import Allocation, NoFit, ResourcePool
from fetcher.quarantine import Quarantine
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml


def gpu(i: int, model: str = "A100", mem: int = 40960, archi: str = "ampere") -> Gpu:
    return Gpu(i, f"GPU-{i}", model, mem, archi)


def test_one_slot_per_gpu_each_job_its_own_gpu() -> None:
    pool = ResourcePool(Host(64, 256000, tuple(gpu(i) for i in range(4))), None, 1, 1000)
    assert pool.max_jobs == 4
    allocs = [
        pool.allocate(str(i), HardwareSpecs(gpu_mem=1000, cpu_cores=2, memory=4000))
        for i in range(4)
    ]
    assert all(isinstance(a, Allocation) for a in allocs)
    assert len({a.gpus[0].uuid for a in allocs if isinstance(a, Allocation)}) == 4
    assert pool.offer([]) is None
    assert isinstance(pool.allocate("5", HardwareSpecs()), NoFit)
    pool.release("2")
    offer = pool.offer(["g"])
    assert offer is not None and offer.gpu_mem == 40960 and offer.groups == ["g"]
    assert offer.cpu_cores == 64 - 6 and offer.memory == 256000 - 12000


def test_offer_sends_free_figures_and_biggest_free_gpu() -> None:
    pool = ResourcePool(
        Host(8, 16000, (gpu(0, "T4", 15360, "turing"), gpu(1, "A100", 40960))), None, 1, 1000
    )
    offer = pool.offer([])
    assert offer is not None
    assert (offer.memory, offer.cpu_cores, offer.gpu_mem, offer.gpu_model, offer.gpu_archi) == (
        16000,
        8,
        40960,
        "A100",
        "ampere",
    )


def test_job_that_does_not_fit_gets_a_reason() -> None:
    pool = ResourcePool(Host(4, 8000, (gpu(0, "T4", 15360, "turing"),)), 2, 1, 1000)
    assert "memory" in str(pool.allocate("1", HardwareSpecs(memory=9000)))
    assert "CPU" in str(pool.allocate("1", HardwareSpecs(cpu_cores=5)))
    assert "none of the free ones fits" in str(pool.allocate("1", HardwareSpecs(gpu_model="A100")))
    assert "none of the free ones fits" in str(pool.allocate("1", HardwareSpecs(gpu_mem=20000)))
    assert pool.running == 0


def test_box_without_gpus_offers_gpu_mem_zero_and_refuses_gpu_jobs() -> None:
    pool = ResourcePool(Host(4, 8000, ()), None, 1, 1000)
    offer = pool.offer([])
    assert offer is not None and offer.gpu_mem == 0 and offer.gpu_model is None
    assert pool.max_jobs == 1
    assert pool.allocate("1", HardwareSpecs(gpu_mem=1)) == NoFit("needs a GPU; this host has none")
    cpu_job = pool.allocate("2", HardwareSpecs())
    assert isinstance(cpu_job, Allocation) and cpu_job.gpus == [] and cpu_job.memory_mb == 1000


def test_a_job_stating_no_share_gets_one_slots_share_counted_and_limited() -> None:
    """A job stating no hardware (the user-facing API's default) gets one slot's share, and that
    share is both what is counted and what is enforced: not 2000 MB and one core, and never the
    whole box counted as 2000 MB (four such jobs would promise the box four times over)."""
    from fetcher.host import Host
    from fetcher.models import HardwareSpecs
    from fetcher.pool import Allocation, ResourcePool

    one_gpu = ResourcePool(Host(16, 64000, (gpu(0),)), None)
    whole = one_gpu.allocate("1", HardwareSpecs())
    assert isinstance(whole, Allocation) and (whole.cpu_cores, whole.memory_mb) == (16, 64000)

    four = ResourcePool(Host(16, 64000, tuple(gpu(i) for i in range(4))), None)
    shares = [four.allocate(str(i), HardwareSpecs()) for i in range(4)]
    assert all(isinstance(a, Allocation) and a.memory_mb == 16000 for a in shares)
    assert sum(a.memory_mb for a in shares if isinstance(a, Allocation)) == 64000
    stated = ResourcePool(Host(16, 64000, ()), 2, default_cpu=1, default_memory_mb=2000)
    alloc = stated.allocate("1", HardwareSpecs())
    assert isinstance(alloc, Allocation) and (alloc.cpu_cores, alloc.memory_mb) == (1, 2000)


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
