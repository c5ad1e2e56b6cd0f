"""The resource pool: each job's share (one slot per GPU, each job its own GPU; a job stating
no hardware gets one slot's share), the offer of what is free, and why a job does not fit."""

from __future__ import annotations

import threading

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


def _gpu() -> Gpu:
    return Gpu(0, "GPU-0", "A100", 40960, "ampere")


def _staging_pool() -> tuple[ResourcePool, Quarantine]:
    q = Quarantine(3)
    board = GpuBoard(None, [_gpu()], q)
    return ResourcePool(Host(8, 8000, (_gpu(),)), 1, board=board, stage_ahead=True), q


HW = HardwareSpecs(gpu_mem=1000, cpu_cores=1, memory=100)


def _staged_behind_1(pool: ResourcePool, job_id: str = "2") -> Allocation:
    """Job 1 runs on the only GPU; `job_id` is claimed and staged behind it."""
    assert isinstance(pool.allocate("1", HW), Allocation)
    found = pool.offer_ahead([])
    assert found is not None and found[1] == "1"
    staged = pool.allocate_behind(job_id, HW, found[1])
    assert isinstance(staged, Allocation) and not staged.ready.is_set()
    return staged


def test_a_staged_job_does_not_start_on_a_gpu_quarantined_while_it_waited() -> None:
    # Given job 1 running on GPU-0 and job 2 staged behind it
    pool, q = _staging_pool()
    staged = _staged_behind_1(pool)
    # When GPU-0 is quarantined (a critical Xid; or job 1's own GPU failure, recorded before
    # its thread gives the share back) and job 1 ends
    q.put("GPU-0", "critical Xid 79 reported by NVML")
    pool.release("1")
    # Then job 2 is not given GPU-0: it is refused the share and goes back unstarted
    assert not staged.ready.is_set() and "GPU-0" not in pool.held_gpus()
    assert staged.refused is not None and "Xid 79" in staged.refused


def test_a_job_claimed_ahead_runs_when_its_predecessor_ended_during_the_claim() -> None:
    # Given job 1 running on the only GPU; an ahead claim is offered behind it
    pool, _q = _staging_pool()
    assert isinstance(pool.allocate("1", HW), Allocation)
    found = pool.offer_ahead([])
    assert found is not None
    # When job 1's container ends while GET /jobs is under way (its share is free now)
    pool.release("1")
    # Then the job the claim brought gets that free share at once (it is not handed back: the
    # server would never give it to this worker again)
    alloc = pool.allocate_behind("2", HW, found[1])
    assert isinstance(alloc, Allocation) and alloc.ready.is_set()


def test_after_a_kill_during_the_overlap_no_job_is_staged_behind_a_shared_gpu() -> None:
    # Given a restart after kill -9 during the overlap: job 1 (its container ended, it was
    # uploading) and job 2 (running on the same GPU) are both adopted with the share each held
    pool, _q = _staging_pool()
    pool.allocate_exact("1", 1, 100, ["GPU-0"])
    pool.allocate_exact("2", 1, 100, ["GPU-0"])
    # Then no job is staged behind either: the GPU would not be free when one of them ends
    assert pool.offer_ahead([]) is None


def test_a_staged_job_waits_until_its_gpu_is_free_of_every_job() -> None:
    # Given job 1 on GPU-0 and job 3 staged behind it; job 2 adopted on GPU-0 too afterwards
    pool, _q = _staging_pool()
    staged = _staged_behind_1(pool, "3")
    pool.allocate_exact("2", 1, 100, ["GPU-0"])
    # When job 1 ends, job 2 still runs on GPU-0: job 3 waits
    assert pool.release("1") == [] and not staged.ready.is_set()
    assert pool.snapshot().staged == 1
    # When job 2 ends too, job 3 gets the GPU
    assert pool.release("2") == ["3"] and staged.ready.is_set()
    assert pool.held_gpus() == {"GPU-0": "3"}


def test_no_job_is_staged_again_behind_a_job_a_staged_one_waited_for_in_vain() -> None:
    # Given job 1 running and job 2 staged behind it, which waited its bound and went back
    pool, _q = _staging_pool()
    _staged_behind_1(pool)
    pool.withdraw("2")
    # Then no other job is staged behind job 1 (each would be claimed, readied, handed back)
    assert pool.offer_ahead([]) is None
    # and once job 1 ends, staging behind the next job works again
    pool.release("1")
    assert isinstance(pool.allocate("3", HW), Allocation)
    assert pool.offer_ahead([]) is not None


def test_a_stop_takes_every_unstarted_staged_job_out_of_reach_of_its_share() -> None:
    # Given job 2 staged behind job 1
    pool, _q = _staging_pool()
    staged = _staged_behind_1(pool)
    # When the worker stops, job 2 is withdrawn; job 1 ending later does not start it
    assert pool.withdraw_unstarted() == ["2"]
    assert pool.release("1") == [] and not staged.ready.is_set()


def test_no_job_is_staged_once_the_worker_stops() -> None:
    # Given job 1 running and an ahead claim under way behind it
    pool, _q = _staging_pool()
    assert isinstance(pool.allocate("1", HW), Allocation)
    found = pool.offer_ahead([])
    assert found is not None
    # When the worker stops before the claimed job is placed
    assert pool.withdraw_unstarted() == []
    # Then it is refused a place (it would start on job 1's GPU during the drain)
    refused = pool.allocate_behind("2", HW, found[1])
    assert isinstance(refused, NoFit) and "stopping" in refused.reason
    assert pool.snapshot().staged == 0


def test_a_staged_place_the_stop_took_is_told_from_a_share_given_before_it() -> None:
    # Given job 2 staged behind job 1, and job 4 staged behind job 3, which ended: job 4 started
    pool = ResourcePool(Host(8, 8000, (gpu(0), gpu(1))), 2, stage_ahead=True)
    assert isinstance(pool.allocate("1", HW), Allocation)
    assert isinstance(pool.allocate("3", HW), Allocation)
    waiting = pool.allocate_behind("2", HW, "1")
    started = pool.allocate_behind("4", HW, "3")
    assert isinstance(waiting, Allocation) and isinstance(started, Allocation)
    assert pool.release("3") == ["4"]
    assert not pool.withdrawn_by_stop(waiting), "no stop yet"
    # When the worker stops
    pool.withdraw_unstarted()
    # Then job 2 never gets its share; job 4 runs on (the drain lets it finish)
    assert pool.withdrawn_by_stop(waiting) and not pool.withdrawn_by_stop(started)


def test_a_listener_added_while_the_share_is_given_is_woken() -> None:
    # Given a staged allocation; listeners added from other threads while it is activated
    for _ in range(200):
        alloc = Allocation("2", 1, 100, [], behind="1")
        woken = threading.Event()
        t = threading.Thread(target=alloc.listen, args=(woken,))
        t.start()
        alloc.activate()
        t.join()
        # Then every listener is woken, whichever came first
        assert woken.is_set()


def test_a_claim_made_as_a_running_job_ends_never_takes_the_gpu_its_staged_job_was_promised() -> (
    None
):
    # Given two GPUs, job A on the first and S staged behind it
    gpus = (gpu(0), gpu(1))
    pool = ResourcePool(Host(8, 16000, gpus), 2, 1, 1000, stage_ahead=True)
    hw = HardwareSpecs(gpu_mem=1000, cpu_cores=1, memory=1000)
    a = pool.allocate("A", hw)
    assert isinstance(a, Allocation) and a.gpus == [gpus[0]]
    assert isinstance(pool.allocate_behind("S", hw, "A"), Allocation)
    # When a fresh claim J is allocated just as A releases its share (between A's release and
    # S's start)
    start_waiting = pool.start_waiting
    got: dict[str, Allocation | NoFit] = {}

    def claim_in_between() -> list[str]:
        got["J"] = pool.allocate("J", hw)
        return start_waiting()

    pool.start_waiting = claim_in_between  # type: ignore[method-assign]
    started = pool.release("A")
    # Then S starts on its GPU, and J gets the other one
    assert started == ["S"]
    j = got["J"]
    assert isinstance(j, Allocation) and j.gpus == [gpus[1]]
