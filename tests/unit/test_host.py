"""The host: its GPUs from NVML (none without a driver), its CPU and memory from the engine with the
caps and reserves of the settings, and in a Slurm job the job's GPUs, never another job's."""

from __future__ import annotations

from typing import Any

import pytest

from fetcher.gpu.nvml import Gpu
from fetcher.host import detect_gpus, detect_host, pick_slurm_gpus, slurm_gpu_selection
from fetcher.settings import Settings
from tests.helpers import FakeNvml, four_gpus


def settings(**kw: Any) -> Settings:
    return Settings(
        _env_file=None, api_url="http://x", access_token="t0ken", path_base="/tmp", **kw
    )


def test_nvml_gpus_are_detected_with_uuid_model_memory_and_architecture() -> None:
    nvml = four_gpus()
    gpus = detect_gpus(nvml)
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert len({g.uuid for g in gpus}) == 4
    assert (
        gpus[0].model == "NVIDIA A100-SXM4-40GB"
        and gpus[0].memory_mb == 40960
        and gpus[0].archi == "ampere"
    )
    assert nvml.shutdowns == 1


def test_no_nvidia_driver_means_no_gpus() -> None:
    assert detect_gpus(FakeNvml(fail_init=True)) == []


def test_host_comes_from_the_engine_info_with_caps_and_gpu_selection() -> None:
    gpus = detect_gpus(four_gpus())
    info = {"NCPU": 32, "MemTotal": 64 * 1024**3}
    host = detect_host(info, settings(), gpus)
    assert (host.cpu_cores, host.memory_mb, len(host.gpus)) == (32, 65536, 4)
    host = detect_host(
        info, settings(reserve_cpu_cores=2, reserve_memory_mb=4096, gpus=f"1,{gpus[3].uuid}"), gpus
    )
    assert (host.cpu_cores, host.memory_mb) == (30, 61440)
    assert [g.index for g in host.gpus] == [1, 3]
    host = detect_host(info, settings(cpu_cores=8, memory_mb=1000), [])
    assert (host.cpu_cores, host.memory_mb, host.gpus) == (8, 1000, ())


# --- in a Slurm job: the job's GPUs, without configuration, never another job's ------------------
NODE = detect_gpus(four_gpus())  # the node's four GPUs as an unconstrained NVML shows them


UUID = [g.uuid for g in NODE]


INFO = {"NCPU": 32, "MemTotal": 64 * 1024**3}


def constrained(*indices: int) -> list[Gpu]:
    """NVML inside a job whose cgroup lets only these GPUs through: renumbered from 0."""
    nvml = FakeNvml([(UUID[i], "NVIDIA A100-SXM4-40GB", 40960, 7) for i in indices])
    return detect_gpus(nvml)


JOB = {"SLURM_JOB_ID": "77"}


@pytest.mark.parametrize(
    ("environ", "selection"),
    [
        ({}, None),  # not a Slurm job: every GPU
        ({"CUDA_VISIBLE_DEVICES": "1"}, None),  # set by someone else than Slurm: not ours to read
        (JOB, []),  # a Slurm job given no GPU: none
        ({**JOB, "SLURM_JOB_GPUS": "1,3"}, ["1", "3"]),  # sbatch: global ids
        (
            {**JOB, "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "0"},
            ["2"],
        ),  # cgroup: CVD relative
        ({**JOB, "SLURM_JOB_GPUS": "2,3", "SLURM_STEP_GPUS": "3"}, ["3"]),  # an srun step's share
        ({**JOB, "CUDA_VISIBLE_DEVICES": "2"}, ["2"]),  # only CVD (an old Slurm, a Prolog)
        (
            {**JOB, "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": f"{UUID[2]}"},
            [UUID[2]],
        ),  # env_uuid
        ({**JOB, "CUDA_VISIBLE_DEVICES": "NoDevFiles"}, []),  # gres without device files
        ({**JOB, "SLURM_JOB_GPUS": " 0 , 1 "}, ["0", "1"]),
    ],
)
def test_slurm_gpu_selection_reads_what_slurm_sets(
    environ: dict[str, str], selection: list[str] | None
) -> None:
    assert slurm_gpu_selection(environ) == selection


@pytest.mark.parametrize(
    ("visible", "selection", "expected"),
    [
        # unconstrained NVML (whole node): global ids are NVML indices
        (NODE, ["1", "3"], [UUID[1], UUID[3]]),
        (NODE, ["2"], [UUID[2]]),
        (NODE, [], []),
        # devices constrained by the job's cgroup: NVML shows only the job's GPUs, renumbered
        (constrained(2), ["2"], [UUID[2]]),
        (constrained(1, 3), ["1", "3"], [UUID[1], UUID[3]]),
        # UUIDs match exactly, in either view
        (NODE, [UUID[3]], [UUID[3]]),
        (constrained(3), [UUID[3]], [UUID[3]]),
        (constrained(3), [UUID[1]], []),
        # the job's whole node: all of it
        (NODE, ["0", "1", "2", "3"], UUID),
        # no NVIDIA driver: nothing, whatever Slurm says
        ([], ["0"], []),
    ],
)
def test_pick_slurm_gpus_never_takes_another_jobs_gpu(
    visible: list[Gpu], selection: list[str], expected: list[str]
) -> None:
    assert [g.uuid for g in pick_slurm_gpus(visible, selection)] == expected


def test_detect_host_takes_the_slurm_jobs_gpus_unless_gpus_is_set() -> None:
    # Given a Slurm task that was given GPU 2 of a four-GPU node
    environ = {**JOB, "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "2"}
    # When the host is detected without GPUS
    host = detect_host(INFO, settings(), NODE, environ)
    # Then its GPU is the only one offered, and one job at a time runs
    assert [g.uuid for g in host.gpus] == [UUID[2]]
    # And GPUS, when set, wins over Slurm
    assert len(detect_host(INFO, settings(gpus="0,1"), NODE, environ).gpus) == 2
    # And outside Slurm every GPU is the fetcher's
    assert len(detect_host(INFO, settings(), NODE, {}).gpus) == 4
    # And a Slurm task without GPUs offers none, even on a GPU node
    assert detect_host(INFO, settings(), NODE, JOB).gpus == ()


def test_a_gpu_box_whose_every_gpu_is_lost_at_the_start_claims_nothing_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fetcher.gpu.nvml import Nvml
    from fetcher.host import detect_host_and_board
    from fetcher.quarantine import BOX, Quarantine
    from tests.fakes.nvml import FakeGpu
    from tests.fakes.nvml import FakeNvml as FaithfulNvml

    # Given a one-GPU box whose GPU fell off the bus before the start (not a Slurm job)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    fake = FaithfulNvml([FakeGpu.a100()])
    fake.fall_off_bus(0)
    nvml = Nvml(fake)
    assert nvml.open()
    quarantine = Quarantine(3, quiet=True)
    s = settings()
    host, board = detect_host_and_board({"NCPU": 8, "MemTotal": 16 * 2**30}, s, nvml, quarantine)
    # Then it is no CPU worker taking DECODE's GPU jobs (they name no GPU) to fail them: the box
    # is quarantined, naming the lost GPU (the claim loop reads it: `ApiJobSource._unhealthy`)
    why = quarantine.why(BOX)
    assert why is not None and "gpu 0:" in why
    assert host.gpus == () and board is None


def test_a_slurm_pilot_given_no_gpu_is_a_cpu_worker_though_nvml_sees_the_nodes_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Slurm job given no GPU on a node whose GPUs its device cgroup hides (NoPermission)
    import pynvml

    from fetcher.gpu.nvml import Nvml
    from fetcher.host import detect_host_and_board
    from fetcher.quarantine import BOX, Quarantine
    from tests.fakes.nvml import FakeGpu
    from tests.fakes.nvml import FakeNvml as FaithfulNvml

    monkeypatch.setenv("SLURM_JOB_ID", "42")
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        monkeypatch.delenv(name, raising=False)
    fake = FaithfulNvml([FakeGpu.a100()])
    fake.lose_gpu(0, lookup_error=pynvml.NVML_ERROR_NO_PERMISSION)
    nvml = Nvml(fake)
    assert nvml.open()
    quarantine = Quarantine(3, quiet=True)
    detect_host_and_board({"NCPU": 8, "MemTotal": 16 * 2**30}, settings(), nvml, quarantine)
    # Then it runs CPU jobs: nothing is quarantined
    assert quarantine.why(BOX) is None
