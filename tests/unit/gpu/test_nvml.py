"""The NVML adapter over the faithful fake: what it reads of devices, MIG, use, health and events,
and that a GPU's own trouble comes back as a value, never an exception."""

from __future__ import annotations

import pynvml
import pytest

from fetcher.gpu.nvml import Nvml
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml

GiB = 1024**3


def opened(fake: FakeNvml) -> Nvml:
    nvml = Nvml(fake)
    assert nvml.open()
    return nvml


def test_each_gpu_is_a_device_with_its_uuid_model_memory_architecture_brand_and_capability() -> (
    None
):
    # Given a box with an A100 and a V100
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.v100()])
    # When the adapter lists the devices
    devices = opened(fake).devices()
    # Then each shows what NVML says of it
    assert [(d.index, d.model, d.memory_mb, d.archi, d.compute) for d in devices] == [
        (0, "NVIDIA A100-SXM4-40GB", 40960, "ampere", "8.0"),
        (1, "Tesla V100-SXM2-16GB", 16384, "volta", "7.0"),
    ]
    assert all(d.uuid.startswith("GPU-") and d.parent is None for d in devices)
    assert devices[1].brand == pynvml.NVML_BRAND_TESLA


def test_mig_instances_are_devices_of_their_own_and_the_parent_is_not_offered_whole() -> None:
    # Given an H100 with MIG on (two instances) beside a whole A100
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.h100(max_mig_devices=7)])
    fake.enable_mig(
        1, [FakeMig(1, memory_mib=9856), FakeMig(2, profile="2g.20gb", memory_mib=19968)]
    )
    devices = opened(fake).devices()
    # Then the H100 appears as its two instances, each with its own UUID and memory, and the
    # parent's model and architecture
    whole, *migs = devices
    assert whole.parent is None and len(migs) == 2
    parent_uuid = fake.gpu(1).uuid
    assert [(m.parent, m.model, m.archi, m.memory_mb) for m in migs] == [
        (parent_uuid, "NVIDIA H100 80GB HBM3", "hopper", 9856),
        (parent_uuid, "NVIDIA H100 80GB HBM3", "hopper", 19968),
    ]
    assert all(m.uuid.startswith("MIG-") for m in migs)
    assert [m.gpu_instance for m in migs] == [1, 2]
    assert all(m.index == 1 for m in migs)


def test_no_driver_means_no_devices_and_a_reason() -> None:
    fake = FakeNvml([FakeGpu.a100()], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    nvml = Nvml(fake)
    assert not nvml.open()
    assert nvml.why and "Not Found" in nvml.why


def test_the_driver_says_which_cuda_it_supports() -> None:
    fake = FakeNvml([FakeGpu.a100()], driver="535.104.05", cuda=12020)
    driver = opened(fake).driver()
    assert (driver.version, driver.cuda, driver.cuda_text()) == ("535.104.05", (12, 2), "12.2")


def test_a_reading_lists_processes_with_their_memory_utilisation_and_power() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    nvml = opened(fake)
    gpu = nvml.devices()[0]
    fake.add_process(0, 4242, 3 * GiB)
    fake.add_process(0, 4343, None)  # NVML cannot tell its memory
    fake.set_utilization(0, 87)
    fake.set_power(0, 250_000)
    reading = nvml.reading(gpu)
    assert reading is not None
    assert sorted((p.pid, p.memory_mb) for p in reading.processes) == [(4242, 3072), (4343, None)]
    assert reading.utilization == 87 and reading.power_w == 250.0
    assert reading.memory_used_mb >= 3072


def test_a_mig_instance_has_processes_and_memory_but_no_utilisation() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    fake.enable_mig(0, [FakeMig(1)])
    nvml = opened(fake)
    mig = nvml.devices()[0]
    fake.add_process(0, 77, 2 * GiB, mig=0)
    reading = nvml.reading(mig)
    assert reading is not None
    assert [(p.pid, p.memory_mb) for p in reading.processes] == [(77, 2048)]
    assert reading.utilization is None and reading.power_w is None


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        (lambda f: f.set_retired_pages_pending(0), "retired memory pages are pending"),
        (lambda f: f.set_ecc_errors(0, uncorrected_volatile=2), "2 uncorrectable ECC error(s)"),
        (lambda f: f.set_remapped_rows(0, failure=True), "a memory row remapping failed"),
        (lambda f: f.lose_gpu(0), "NVML cannot read it"),
        (lambda f: f.fall_off_bus(0), "NVML cannot read it"),
    ],
)
def test_each_health_signal_is_named(breakage: object, words: str) -> None:
    # Given a healthy A100
    fake = FakeNvml([FakeGpu.a100()])
    nvml = opened(fake)
    gpu = nvml.devices()[0]
    assert nvml.health(gpu) is None
    # When it shows the signal, then health names it (and no call raises)
    breakage(fake)  # type: ignore[operator]
    problem = nvml.health(gpu)
    assert problem is not None and words in problem
    assert nvml.reading(gpu) is None or fake.gpu(0).lost is False


def test_a_mig_instance_is_as_healthy_as_its_gpu() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    fake.enable_mig(0, [FakeMig(1), FakeMig(2)])
    nvml = opened(fake)
    migs = nvml.devices()
    fake.set_retired_pages_pending(0)
    assert all("retired" in (nvml.health(m) or "") for m in migs)


def test_an_older_binding_without_a_function_reads_as_no_answer() -> None:
    # Given a driver that lacks the remapped-rows call (older than Ampere's driver)
    fake = FakeNvml([FakeGpu.v100()], missing_functions=("nvmlDeviceGetRemappedRows",))
    nvml = opened(fake)
    # Then health reads what it can and calls the GPU healthy
    assert nvml.health(nvml.devices()[0]) is None


def test_an_xid_event_names_its_gpu_and_one_on_a_mig_instance_names_that_instance() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    fake.enable_mig(1, [FakeMig(1), FakeMig(2)])
    nvml = opened(fake)
    devices = nvml.devices()
    events = nvml.event_set(devices)
    assert events is not None
    # a whole GPU's Xid
    fake.inject_xid(0, 79)
    event = nvml.wait_event(events, devices, 1000)
    assert event is not None and (event.uuids, event.xid, event.kind) == (
        [devices[0].uuid],
        79,
        "xid",
    )
    # one instance's Xid names that instance only
    fake.inject_xid(1, 48, mig=1)
    event = nvml.wait_event(events, devices, 1000)
    assert event is not None and event.uuids == [devices[2].uuid]
    # nothing more: a timeout is None
    assert nvml.wait_event(events, devices, 10) is None
    # an instance that is none of ours (made after the start) names no device, not its parent
    fake.inject_xid(1, 48, mig=1)
    event = nvml.wait_event(events, devices[:2], 1000)
    assert event is not None and event.uuids == []
    nvml.free_events(events)


def test_a_double_bit_ecc_event_is_an_ecc_event() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    nvml = opened(fake)
    devices = nvml.devices()
    events = nvml.event_set(devices)
    fake.inject_event(0, pynvml.nvmlEventTypeDoubleBitEccError)
    event = nvml.wait_event(events, devices, 1000)
    assert event is not None and event.kind == "ecc"


def test_a_gpu_without_event_support_gives_no_event_set() -> None:
    fake = FakeNvml([FakeGpu.a100(supported_events=0)])
    nvml = opened(fake)
    assert nvml.event_set(nvml.devices()) is None


def test_a_non_root_fetcher_lists_the_mig_instances_of_a_box() -> None:
    # Given an A100 in MIG mode with one instance, seen by a fetcher that is not root (a Slurm
    # pilot: NVML refuses a MIG parent's aggregate memory to unprivileged callers)
    fake = FakeNvml([FakeGpu.a100(max_mig_devices=7)], privileged=False)
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856)])
    nvml = Nvml(fake)
    assert nvml.open()
    # Then its instance is listed (the parent's refused memory does not stop the inventory)
    devices = nvml.devices()
    assert [d.parent for d in devices] == [fake.gpu(0).uuid]


def test_a_healthy_mig_instance_is_healthy_for_a_non_root_fetcher() -> None:
    # Given a MIG instance listed (root-like), then read by an unprivileged caller
    fake = FakeNvml([FakeGpu.a100(max_mig_devices=7)])
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856)])
    nvml = Nvml(fake)
    assert nvml.open()
    (mig,) = nvml.devices()
    fake.privileged = False
    # Then it shows no health signal (the parent's refused memory is no sign of a lost GPU)
    assert nvml.health(mig) is None


def test_a_gpu_in_mig_mode_without_instances_is_not_offered_whole() -> None:
    # Given an A100 whose MIG mode is on but no instance is made yet
    fake = FakeNvml([FakeGpu.a100(max_mig_devices=7)])
    fake.enable_mig(0, [])
    nvml = Nvml(fake)
    assert nvml.open()
    # Then no device is offered (the parent whole would give a container no CUDA device)
    assert nvml.devices() == []


def test_a_gpu_that_fell_off_the_bus_before_the_start_is_left_out_and_the_others_listed() -> None:
    # Given two A100s, the second lost before the daemon starts (its lookup: Unknown Error)
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    fake.fall_off_bus(1)
    # When the adapter lists the devices
    nvml = opened(fake)
    devices = nvml.devices()
    # Then the healthy one is listed, and the lost one is left out with NVML's reason
    assert [d.index for d in devices] == [0]
    assert [i for i, _ in nvml.left_out] == [1]


def test_a_gpu_a_device_cgroup_hides_is_left_out_not_fatal() -> None:
    # nvml.h: the device count includes devices whose handle lookup answers NO_PERMISSION (a
    # Slurm job's device cgroup gives exactly that)
    from fetcher.host import detect_gpus

    fake = FakeNvml([FakeGpu.a100(), FakeGpu.a100()])
    fake.lose_gpu(0, lookup_error=pynvml.NVML_ERROR_NO_PERMISSION)
    assert [g.index for g in detect_gpus(fake)] == [1]


def test_on_a_driver_before_r510_the_process_lists_come_from_v2() -> None:
    # Given an R470 driver: no ..._v3 process lists (pynvml's unversioned functions call _v3)
    fake = FakeNvml.r470([FakeGpu.a100()])
    fake.add_process(0, 4242, 20 * GiB)
    nvml = opened(fake)
    gpu = nvml.devices()[0]
    # When it is read (twice: the fallback is remembered)
    first, second = nvml.reading(gpu), nvml.reading(gpu)
    # Then the process is seen, with its memory
    assert first is not None and second is not None
    assert [(p.pid, p.memory_mb) for p in first.processes] == [(4242, 20 * 1024)]
    assert first == second
