"""The NVML fake: conformance with the installed pynvml, and each scenario control."""

from __future__ import annotations

import ctypes
import inspect
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pynvml
import pytest

from fetcher.host import detect_gpus
from tests.fakes.nvml import (
    APPLICATION_XIDS,
    C_SYMBOLS,
    MIG_HANDLE_CALLS,
    PYNVML_STATE,
    SIMULATED,
    UINT_MAX,
    FakeGpu,
    FakeMig,
    FakeNvml,
    MiB,
)

XID = pynvml.nvmlEventTypeXidCriticalError


def machine(*gpus: FakeGpu, **options: Any) -> FakeNvml:
    """A fake with `gpus` (default: two A100), initialised."""
    fake = FakeNvml(gpus or (FakeGpu.a100(), FakeGpu.a100()), **options)
    fake.nvmlInit()
    return fake


def mig_machine(**options: Any) -> FakeNvml:
    """One A100 with MIG on: MIG device 0 = GI 1 (1g.5gb), MIG device 1 = GI 2 (3g.20gb)."""
    migs = [FakeMig(1), FakeMig(2, profile="3g.20gb", memory_mib=19968)]
    return machine(FakeGpu.a100(mig_enabled=True, migs=migs), **options)


def raises(code: int, call: Callable[[], Any]) -> pynvml.NVMLError:
    """`call` raises exactly the real pynvml class of `code` (checked by type, not by subclass)."""
    with pytest.raises(pynvml.NVMLError) as info:
        call()
    assert type(info.value) is pynvml.nvmlExceptionClass(code), info.value
    assert info.value.value == code
    return info.value


# ---------------------------------------------------------------------------------------------
# Conformance: the fake's face is pynvml's


def pynvml_functions() -> list[str]:
    return sorted(
        name
        for name, value in vars(pynvml).items()
        if name.startswith("nvml") and inspect.isfunction(value)
    )


def test_every_pynvml_function_has_the_same_signature_on_the_fake() -> None:
    fake = FakeNvml()
    names = pynvml_functions()
    assert len(names) > 300 and set(SIMULATED) <= set(names)
    for name in names:
        assert inspect.signature(getattr(fake, name)) == inspect.signature(getattr(pynvml, name))
        assert getattr(fake, name).__name__ == getattr(pynvml, name).__name__  # aliases too


def test_the_fake_has_no_nvml_function_that_pynvml_lacks() -> None:
    fake = FakeNvml()
    with pytest.raises(AttributeError):
        _ = fake.nvmlDeviceGetFrobnication
    public = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    assert public == []  # all of them come from pynvml through __getattr__


def c_symbols_of(name: str, seen: set[str] | None = None) -> set[str]:
    """The NVML C functions a pynvml function reaches (its own and those of pynvml functions it
    calls), read from the installed pynvml's source."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    source = inspect.getsource(getattr(pynvml, name))
    symbols = set(re.findall(r'_nvmlGetFunctionPointer\("(\w+)"\)', source))
    for called in set(re.findall(r"\b(nvml\w+)\(", source)) - {name}:
        if inspect.isfunction(getattr(pynvml, called, None)):
            symbols |= c_symbols_of(called, seen)
    return symbols


def test_simulated_functions_reach_only_c_functions_the_fake_implements() -> None:
    """Guards against drift: a newer pynvml calling another versioned symbol fails here."""
    for name in SIMULATED:
        symbols = c_symbols_of(name)
        assert symbols, name
        assert symbols <= C_SYMBOLS, (name, symbols - C_SYMBOLS)


def test_pynvml_keeps_no_module_state_the_private_copies_do_not_renew() -> None:
    source = inspect.getsource(pynvml)
    assigned = set(re.findall(r"^\s+global (\w+)", source, re.MULTILINE))
    assert assigned <= PYNVML_STATE
    assert set(vars(pynvml)) >= PYNVML_STATE


def test_every_c_function_of_the_fake_is_one_pynvml_calls() -> None:
    source = inspect.getsource(pynvml)
    called = set(re.findall(r'_nvmlGetFunctionPointer\("(\w+)"\)', source))
    assert called >= C_SYMBOLS
    assert called >= MIG_HANDLE_CALLS


def test_pynvml_calls_the_versioned_c_functions() -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.nvmlDeviceGetCount()
    assert fake.nvmlDeviceGetComputeRunningProcesses(handle) == []
    fake.add_process(0, 4242)
    fake.nvmlDeviceGetComputeRunningProcesses(handle)
    c_calls = fake.c_calls
    assert c_calls["nvmlInitWithFlags"] == 1
    assert c_calls["nvmlDeviceGetCount_v2"] == 1
    assert c_calls["nvmlDeviceGetHandleByIndex_v2"] == 1
    # no process: one call (SUCCESS); then the size query and the fill
    assert c_calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 3
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 2


def test_returns_are_the_real_pynvml_types() -> None:
    fake = mig_machine()
    gpu = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    fake.add_process(0, 7, mig=0)
    event_set = fake.nvmlEventSetCreate()
    fake.nvmlDeviceRegisterEvents(gpu, XID, event_set)
    fake.inject_xid(0, 48)
    assert isinstance(gpu, pynvml.c_nvmlDevice_t) and isinstance(mig, pynvml.c_nvmlDevice_t)
    assert isinstance(fake.nvmlDeviceGetHandleByUUID(fake.gpus[0].uuid), pynvml.c_nvmlDevice_t)
    assert type(fake.nvmlDeviceGetMemoryInfo(gpu)) is pynvml.c_nvmlMemory_t
    v2 = fake.nvmlDeviceGetMemoryInfo(gpu, version=pynvml.nvmlMemory_v2)
    assert type(v2) is pynvml.c_nvmlMemory_v2_t
    assert isinstance(event_set, pynvml.c_nvmlEventSet_t)
    data = fake.nvmlEventSetWait_v2(event_set, 1000)
    assert type(data) is pynvml.c_nvmlEventData_t and isinstance(data.device, pynvml.c_nvmlDevice_t)
    (process,) = fake.nvmlDeviceGetComputeRunningProcesses(mig)
    assert type(process) is pynvml.nvmlFriendlyObject
    assert set(vars(process)) == {"pid", "usedGpuMemory", "gpuInstanceId", "computeInstanceId"}
    is_mig = fake.nvmlDeviceIsMigDeviceHandle(mig)
    assert type(is_mig) is ctypes.c_uint and is_mig.value == 1 and is_mig  # pynvml: no .value
    assert isinstance(fake.nvmlDeviceGetUUID(gpu), str)
    assert isinstance(fake.nvmlDeviceGetName(gpu), str)
    assert isinstance(fake.nvmlSystemGetDriverVersion(), str)
    assert type(fake.nvmlSystemGetCudaDriverVersion()) is int
    assert fake.nvmlDeviceGetCudaComputeCapability(gpu) == (8, 0)
    assert fake.nvmlDeviceGetMigMode(gpu) == [1, 1]  # a list, as pynvml builds it
    assert fake.nvmlDeviceGetEccMode(gpu) == [1, 1]
    assert type(fake.nvmlDeviceGetRetiredPagesPendingStatus(gpu)) is int
    plain = machine()
    whole = plain.nvmlDeviceGetHandleByIndex(0)
    assert plain.nvmlDeviceGetRemappedRows(whole) == (0, 0, 0, 0)  # a tuple
    assert type(plain.nvmlDeviceGetUtilizationRates(whole)) is pynvml.c_nvmlUtilization_t


def test_errors_are_the_real_pynvml_classes() -> None:
    fake = machine()
    error = raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetHandleByIndex(9))
    assert isinstance(error, pynvml.NVMLError_InvalidArgument)
    assert str(error) == "Invalid Argument"
    fake.lose_gpu(0)
    error = raises(pynvml.NVML_ERROR_GPU_IS_LOST, lambda: fake.nvmlDeviceGetHandleByIndex(0))
    assert isinstance(error, pynvml.NVMLError_GpuIsLost) and str(error) == "GPU is lost"
    # the pynvml names on the fake are the real module's classes and constants
    assert fake.NVMLError is pynvml.NVMLError
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert fake.c_nvmlMemory_t is pynvml.c_nvmlMemory_t
    assert fake.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    assert fake.nvmlEventTypeXidCriticalError == XID


def test_a_call_the_fake_does_not_simulate_fails_loudly() -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(NotImplementedError, match="nvmlDeviceGetPciInfo_v3"):
        fake.nvmlDeviceGetPciInfo(handle)


def test_each_fake_is_its_own_machine() -> None:
    one = machine(FakeGpu.a100())
    other = FakeNvml([FakeGpu.v100(), FakeGpu.v100()])
    raises(pynvml.NVML_ERROR_UNINITIALIZED, other.nvmlDeviceGetCount)
    other.nvmlInit()
    assert (one.nvmlDeviceGetCount(), other.nvmlDeviceGetCount()) == (1, 2)
    handle = one.nvmlDeviceGetHandleByIndex(0)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: other.nvmlDeviceGetName(handle))
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: one.nvmlDeviceGetName(None))


def test_install_routes_the_real_module_to_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([FakeGpu.h100(), FakeGpu.v100()])
    fake.install(monkeypatch)
    gpus = detect_gpus()  # imports pynvml itself
    assert [(g.model, g.memory_mb, g.archi) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", 81559, "hopper"),
        ("Tesla V100-SXM2-16GB", 16384, "volta"),
    ]
    assert fake.calls["nvmlInit"] == 1 and fake.calls["nvmlShutdown"] == 1


def test_the_fetcher_inventory_runs_on_the_fake_passed_in() -> None:
    fake = FakeNvml([FakeGpu.a100(), FakeGpu.rtx4090()])
    gpus = detect_gpus(fake)
    assert [g.uuid for g in gpus] == [g.uuid for g in fake.gpus]
    assert [g.archi for g in gpus] == ["ampere", "ada"]
    assert detect_gpus(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)) == []


# ---------------------------------------------------------------------------------------------
# Init and shutdown


def test_calls_before_init_and_after_the_last_shutdown_are_uninitialized() -> None:
    fake = FakeNvml([FakeGpu.a100()])
    raises(pynvml.NVML_ERROR_UNINITIALIZED, fake.nvmlDeviceGetCount)  # library not loaded yet
    raises(pynvml.NVML_ERROR_UNINITIALIZED, fake.nvmlShutdown)
    fake.nvmlInit()
    fake.nvmlInit()  # NVML counts inits
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetName(handle) == "NVIDIA A100-SXM4-40GB"
    fake.nvmlShutdown()
    raises(pynvml.NVML_ERROR_UNINITIALIZED, fake.nvmlDeviceGetCount)
    raises(pynvml.NVML_ERROR_UNINITIALIZED, lambda: fake.nvmlDeviceGetName(handle))
    fake.nvmlShutdown()  # nvml.h: more shutdowns than inits report no error
    fake.nvmlInit()
    assert fake.nvmlDeviceGetName(handle) == "NVIDIA A100-SXM4-40GB"


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    ],
)
def test_an_init_failure_raises_its_class_until_init_succeeds(code: int) -> None:
    fake = FakeNvml([FakeGpu.a100()], init_error=code)
    raises(code, fake.nvmlInit)
    raises(pynvml.NVML_ERROR_UNINITIALIZED, fake.nvmlDeviceGetCount)
    fake.fail_init(None)
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 1
    fake.fail_init(code)
    raises(code, fake.nvmlInit)
    assert fake.nvmlDeviceGetCount() == 1  # the first init still holds


def test_a_function_the_driver_lacks() -> None:
    fake = machine(missing_functions=["nvmlDeviceGetComputeRunningProcesses_v3"])
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.add_process(0, 31, 64 * MiB)
    # pynvml's unversioned call turns FunctionNotFound into its own mismatch error
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        fake.nvmlDeviceGetComputeRunningProcesses(handle)
    raises(
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        lambda: fake.nvmlDeviceGetComputeRunningProcesses_v3(handle),
    )
    (process,) = fake.nvmlDeviceGetComputeRunningProcesses_v2(handle)
    assert (process.pid, process.usedGpuMemory) == (31, 64 * MiB)


# ---------------------------------------------------------------------------------------------
# Inventory


def test_each_gpu_answers_its_uuid_name_memory_architecture_brand_and_index() -> None:
    fake = machine(FakeGpu.a100(), FakeGpu.v100(minor_number=5), FakeGpu.rtx4090())
    assert fake.nvmlDeviceGetCount() == 3
    a100, v100, rtx = (fake.nvmlDeviceGetHandleByIndex(i) for i in range(3))
    uuids = [fake.nvmlDeviceGetUUID(h) for h in (a100, v100, rtx)]
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uuids)
    assert len(set(uuids)) == 3 and uuids == [g.uuid for g in fake.gpus]
    assert FakeNvml([FakeGpu.a100()]).gpus[0].uuid == uuids[0]  # stable across fakes
    assert fake.nvmlDeviceGetName(v100) == "Tesla V100-SXM2-16GB"
    assert fake.nvmlDeviceGetMemoryInfo(rtx).total == 24564 * MiB
    assert [fake.nvmlDeviceGetArchitecture(h) for h in (a100, v100, rtx)] == [
        pynvml.NVML_DEVICE_ARCH_AMPERE,
        pynvml.NVML_DEVICE_ARCH_VOLTA,
        pynvml.NVML_DEVICE_ARCH_ADA,
    ]
    assert fake.nvmlDeviceGetCudaComputeCapability(rtx) == (8, 9)
    assert fake.nvmlDeviceGetBrand(rtx) == pynvml.NVML_BRAND_GEFORCE
    assert fake.nvmlDeviceGetBrand(v100) == pynvml.NVML_BRAND_TESLA
    assert [fake.nvmlDeviceGetIndex(h) for h in (a100, v100, rtx)] == [0, 1, 2]
    assert [fake.nvmlDeviceGetMinorNumber(h) for h in (a100, v100, rtx)] == [0, 5, 2]
    by_uuid = fake.nvmlDeviceGetHandleByUUID(uuids[1])
    assert fake.nvmlDeviceGetIndex(by_uuid) == 1
    assert fake.nvmlDeviceGetIndex(fake.nvmlDeviceGetHandleByUUID(uuids[2].encode())) == 2
    raises(pynvml.NVML_ERROR_NOT_FOUND, lambda: fake.nvmlDeviceGetHandleByUUID("GPU-0000"))
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetHandleByUUID(""))
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetHandleByIndex(3))
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetHandleByIndex(-1))


def test_driver_and_cuda_versions_follow_the_driver_and_v2_needs_libcuda() -> None:
    fake = machine(driver="535.104.05", cuda=12020)
    assert fake.nvmlSystemGetDriverVersion() == "535.104.05"
    assert (
        fake.nvmlSystemGetCudaDriverVersion() == fake.nvmlSystemGetCudaDriverVersion_v2() == 12020
    )
    fake.set_driver("550.54.15", cuda=12040)
    assert fake.nvmlSystemGetDriverVersion() == "550.54.15"
    assert fake.nvmlSystemGetCudaDriverVersion_v2() == 12040
    no_libcuda = machine(libcuda=False)
    assert no_libcuda.nvmlSystemGetCudaDriverVersion() == 12020
    raises(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, no_libcuda.nvmlSystemGetCudaDriverVersion_v2)


def test_memory_counts_the_processes_and_the_rest() -> None:
    fake = machine(FakeGpu.a100(memory_reserved=512 * MiB))
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    total = 40960 * MiB
    memory = fake.nvmlDeviceGetMemoryInfo(handle)
    assert (memory.total, memory.used, memory.free) == (total, 512 * MiB, total - 512 * MiB)
    fake.set_memory_used(0, 1024 * MiB)
    fake.add_process(0, 100, 2048 * MiB)
    fake.add_process(0, 101, None)  # memory not available: counts nothing
    memory = fake.nvmlDeviceGetMemoryInfo(handle)
    assert memory.used == (512 + 1024 + 2048) * MiB and memory.free == total - memory.used
    v2 = fake.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert (v2.total, v2.reserved, v2.used, v2.free) == (
        total,
        512 * MiB,
        memory.used,
        memory.free,
    )
    raises(
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
        lambda: fake.nvmlDeviceGetMemoryInfo(handle, version=0x01000018),
    )
    assert fake.remove_process(100) == 1
    assert fake.nvmlDeviceGetMemoryInfo(handle).used == (512 + 1024) * MiB


# ---------------------------------------------------------------------------------------------
# MIG


def test_mig_mode_and_device_lookup_on_gpus_with_and_without_mig() -> None:
    fake = machine(FakeGpu.a100(), FakeGpu.v100())
    a100, v100 = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceGetMigMode(v100))
    assert fake.nvmlDeviceGetMaxMigDeviceCount(v100) == 0
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        lambda: fake.nvmlDeviceGetMigDeviceHandleByIndex(v100, 0),
    )
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceIsMigDeviceHandle(v100))
    assert fake.nvmlDeviceGetMigMode(a100) == [0, 0]
    assert fake.nvmlDeviceGetMaxMigDeviceCount(a100) == 0  # "zero if MIG is not ... enabled"
    assert not fake.nvmlDeviceIsMigDeviceHandle(a100)
    raises(pynvml.NVML_ERROR_NOT_FOUND, lambda: fake.nvmlDeviceGetMigDeviceHandleByIndex(a100, 0))
    fake.set_mig_pending(0, True)
    assert fake.nvmlDeviceGetMigMode(a100) == [0, 1]
    fake.enable_mig(0, [FakeMig(3), FakeMig(4, profile="2g.10gb", memory_mib=9856)])
    assert fake.nvmlDeviceGetMigMode(a100) == [1, 1]
    assert fake.nvmlDeviceGetMaxMigDeviceCount(a100) == 7
    migs = [fake.nvmlDeviceGetMigDeviceHandleByIndex(a100, i) for i in range(2)]
    # an empty MIG device index, and one past the maximum
    raises(pynvml.NVML_ERROR_NOT_FOUND, lambda: fake.nvmlDeviceGetMigDeviceHandleByIndex(a100, 2))
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        lambda: fake.nvmlDeviceGetMigDeviceHandleByIndex(a100, 7),
    )
    assert [fake.nvmlDeviceGetIndex(m) for m in migs] == [0, 1]
    assert [fake.nvmlDeviceGetGpuInstanceId(m) for m in migs] == [3, 4]
    assert [fake.nvmlDeviceGetComputeInstanceId(m) for m in migs] == [0, 0]
    assert fake.nvmlDeviceGetCount() == 2  # MIG devices are not counted


def test_a_mig_device_is_a_device_of_its_own() -> None:
    fake = mig_machine()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    small, large = (fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in range(2))
    uuid = fake.nvmlDeviceGetUUID(large)
    assert re.fullmatch(r"MIG-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", uuid)
    assert uuid != fake.nvmlDeviceGetUUID(small) and uuid == fake.gpus[0].migs[1].uuid
    assert fake.nvmlDeviceGetName(large) == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    assert fake.nvmlDeviceGetMemoryInfo(large).total == 19968 * MiB
    assert fake.nvmlDeviceIsMigDeviceHandle(large)
    back = fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(large)
    assert fake.nvmlDeviceGetUUID(back) == fake.gpus[0].uuid
    by_uuid = fake.nvmlDeviceGetHandleByUUID(uuid)
    assert fake.nvmlDeviceGetGpuInstanceId(by_uuid) == 2
    # whole-GPU handles have no instance ids; a GPU handle is no MIG handle
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceGetGpuInstanceId(parent))
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceGetComputeInstanceId(parent))
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        lambda: fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent),
    )


def test_what_a_mig_handle_and_a_mig_parent_do_not_answer() -> None:
    fake = mig_machine()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    unsupported: list[Callable[[], Any]] = [
        lambda: fake.nvmlDeviceGetUtilizationRates(mig),
        lambda: fake.nvmlDeviceGetPowerUsage(mig),
        lambda: fake.nvmlDeviceGetTemperature(mig, pynvml.NVML_TEMPERATURE_GPU),
        lambda: fake.nvmlDeviceGetTotalEccErrors(
            mig, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
        lambda: fake.nvmlDeviceGetMinorNumber(mig),
        lambda: fake.nvmlDeviceGetMigMode(mig),
        lambda: fake.nvmlDeviceGetGraphicsRunningProcesses(mig),
        lambda: fake.nvmlDeviceRegisterEvents(mig, XID, fake.nvmlEventSetCreate()),
        # the MIG-enabled parent: utilization (nvml.h), remapped rows with MIG devices (nvml.h)
        lambda: fake.nvmlDeviceGetUtilizationRates(parent),
        lambda: fake.nvmlDeviceGetRemappedRows(parent),
    ]
    for call in unsupported:
        raises(pynvml.NVML_ERROR_NOT_SUPPORTED, call)
    assert fake.nvmlDeviceGetPowerUsage(parent) == 60_000
    assert fake.nvmlDeviceGetTemperature(parent, pynvml.NVML_TEMPERATURE_GPU) == 34


def test_mig_processes_and_memory_from_the_device_and_from_the_parent() -> None:
    fake = mig_machine()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    small, large = (fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in range(2))
    fake.add_process(0, 500, 1000 * MiB, mig=0)
    fake.add_process(0, 600, 3000 * MiB, mig=1)
    fake.set_memory_used(0, 10 * MiB, mig=1)
    (one,) = fake.nvmlDeviceGetComputeRunningProcesses(small)
    assert vars(one) == {
        "pid": 500,
        "usedGpuMemory": 1000 * MiB,
        "gpuInstanceId": 1,
        "computeInstanceId": 0,
    }
    assert fake.nvmlDeviceGetMemoryInfo(large).used == 3010 * MiB
    # the parent: all MIG devices' processes, memory per process not available
    rows = [vars(p) for p in fake.nvmlDeviceGetComputeRunningProcesses(parent)]
    assert rows == [
        {"pid": 500, "usedGpuMemory": None, "gpuInstanceId": 1, "computeInstanceId": 0},
        {"pid": 600, "usedGpuMemory": None, "gpuInstanceId": 2, "computeInstanceId": 0},
    ]
    assert fake.nvmlDeviceGetMemoryInfo(parent).used == 4010 * MiB
    with pytest.raises(ValueError, match="MIG device"):
        fake.add_process(0, 700)


def test_unprivileged_callers_get_no_aggregate_from_a_mig_parent() -> None:
    fake = mig_machine(privileged=False)
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    raises(pynvml.NVML_ERROR_NO_PERMISSION, lambda: fake.nvmlDeviceGetMemoryInfo(parent))
    raises(
        pynvml.NVML_ERROR_NO_PERMISSION, lambda: fake.nvmlDeviceGetComputeRunningProcesses(parent)
    )
    assert fake.nvmlDeviceGetMemoryInfo(mig).total == 4864 * MiB


def test_reconfigured_mig_devices_invalidate_old_handles() -> None:
    fake = mig_machine()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    old = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    old_uuid = fake.nvmlDeviceGetUUID(old)
    fake.enable_mig(0, [FakeMig(7, profile="7g.40gb", memory_mib=40192)])
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetUUID(old))
    raises(pynvml.NVML_ERROR_NOT_FOUND, lambda: fake.nvmlDeviceGetHandleByUUID(old_uuid))
    new = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    assert fake.nvmlDeviceGetName(new) == "NVIDIA A100-SXM4-40GB MIG 7g.40gb"
    fake.disable_mig(0)
    raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetUUID(new))
    assert fake.nvmlDeviceGetMigMode(parent) == [0, 0]
    assert fake.nvmlDeviceGetRemappedRows(parent) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="no MIG support"):
        FakeNvml([FakeGpu.v100()]).enable_mig(0, [])


# ---------------------------------------------------------------------------------------------
# Processes and use


def test_compute_and_graphics_processes_are_listed_per_gpu() -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetComputeRunningProcesses(handle) == []
    assert fake.nvmlDeviceGetGraphicsRunningProcesses(handle) == []
    fake.add_process(0, 11, 100 * MiB)
    fake.add_process(0, 12, None)
    fake.add_process(0, 13, 5 * MiB, graphics=True)
    fake.add_process(1, 14)
    rows = [vars(p) for p in fake.nvmlDeviceGetComputeRunningProcesses(handle)]
    assert rows == [
        {
            "pid": 11,
            "usedGpuMemory": 100 * MiB,
            "gpuInstanceId": UINT_MAX,
            "computeInstanceId": UINT_MAX,
        },
        {
            "pid": 12,
            "usedGpuMemory": None,
            "gpuInstanceId": UINT_MAX,
            "computeInstanceId": UINT_MAX,
        },
    ]
    assert [p.pid for p in fake.nvmlDeviceGetGraphicsRunningProcesses(handle)] == [13]
    assert fake.remove_process(11) == 1 and fake.remove_process(11) == 0
    assert [p.pid for p in fake.nvmlDeviceGetComputeRunningProcesses(handle)] == [12]


def test_utilization_power_and_temperature_answer_what_was_set_or_not_supported() -> None:
    fake = machine(FakeGpu.a100(), FakeGpu.a100(unsupported={"nvmlDeviceGetPowerUsage"}))
    handle, other = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    fake.set_utilization(0, 87, 40)
    fake.set_power(0, 245_000)
    fake.set_temperature(0, 71)
    utilization = fake.nvmlDeviceGetUtilizationRates(handle)
    assert (utilization.gpu, utilization.memory) == (87, 40)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 245_000
    assert fake.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU) == 71
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        lambda: fake.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU_MAX),
    )
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        lambda: fake.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_COUNT),
    )
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceGetPowerUsage(other))


# ---------------------------------------------------------------------------------------------
# Health


def test_retired_pages_ecc_and_remapped_rows() -> None:
    fake = machine(FakeGpu.a100(), FakeGpu.v100(), FakeGpu.rtx4090())
    a100, v100, rtx = (fake.nvmlDeviceGetHandleByIndex(i) for i in range(3))
    unc, vol = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
    assert fake.nvmlDeviceGetRetiredPagesPendingStatus(a100) == pynvml.NVML_FEATURE_DISABLED
    fake.set_retired_pages_pending(0)
    assert fake.nvmlDeviceGetRetiredPagesPendingStatus(a100) == pynvml.NVML_FEATURE_ENABLED
    assert fake.nvmlDeviceGetTotalEccErrors(a100, unc, vol) == 0
    fake.set_ecc_errors(0, uncorrected_volatile=3, uncorrected_aggregate=9)
    assert fake.nvmlDeviceGetTotalEccErrors(a100, unc, vol) == 3
    assert fake.nvmlDeviceGetTotalEccErrors(a100, unc, pynvml.NVML_AGGREGATE_ECC) == 9
    assert fake.nvmlDeviceGetTotalEccErrors(a100, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, vol) == 0
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT, lambda: fake.nvmlDeviceGetTotalEccErrors(a100, 2, vol)
    )
    fake.set_remapped_rows(0, uncorrected=2, pending=True)
    assert fake.nvmlDeviceGetRemappedRows(a100) == (0, 2, 1, 0)
    raises(pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceGetRemappedRows(v100))
    assert fake.nvmlDeviceGetRetiredPagesPendingStatus(v100) == 0
    # ECC off: the counters are NotSupported, the mode says off
    fake.set_ecc_mode(0, False)
    assert fake.nvmlDeviceGetEccMode(a100) == [0, 0]
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceGetTotalEccErrors(a100, unc, vol)
    )
    # a board without ECC
    for call in (
        lambda: fake.nvmlDeviceGetTotalEccErrors(rtx, unc, vol),
        lambda: fake.nvmlDeviceGetEccMode(rtx),
        lambda: fake.nvmlDeviceGetRetiredPagesPendingStatus(rtx),
        lambda: fake.nvmlDeviceGetRemappedRows(rtx),
    ):
        raises(pynvml.NVML_ERROR_NOT_SUPPORTED, call)


def test_a_lost_gpu_fails_every_call_on_it_and_uuid_searches_past_it() -> None:
    fake = mig_machine()
    fake2 = machine(FakeGpu.a100(), FakeGpu.a100(), FakeGpu.a100())
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    fake.lose_gpu(0)
    for call in (
        lambda: fake.nvmlDeviceGetUUID(parent),
        lambda: fake.nvmlDeviceGetMemoryInfo(parent),
        lambda: fake.nvmlDeviceGetPowerUsage(parent),
        lambda: fake.nvmlDeviceGetComputeRunningProcesses(parent),
        lambda: fake.nvmlDeviceGetRetiredPagesPendingStatus(parent),
        lambda: fake.nvmlDeviceGetUUID(mig),
        lambda: fake.nvmlDeviceGetMemoryInfo(mig),
        lambda: fake.nvmlDeviceGetHandleByIndex(0),
        lambda: fake.nvmlDeviceGetHandleByUUID(fake.gpus[0].uuid),
    ):
        raises(pynvml.NVML_ERROR_GPU_IS_LOST, call)
    assert fake.nvmlDeviceGetCount() == 1
    fake.restore_gpu(0)
    assert fake.nvmlDeviceGetUUID(mig) == fake.gpus[0].migs[0].uuid
    # NVML searches GPUs in order for a UUID: a lost GPU on the way fails the search
    fake2.lose_gpu(1)
    assert fake2.nvmlDeviceGetIndex(fake2.nvmlDeviceGetHandleByUUID(fake2.gpus[0].uuid)) == 0
    raises(
        pynvml.NVML_ERROR_GPU_IS_LOST,
        lambda: fake2.nvmlDeviceGetHandleByUUID(fake2.gpus[2].uuid),
    )
    assert fake2.nvmlDeviceGetName(fake2.nvmlDeviceGetHandleByIndex(2)).startswith("NVIDIA")


def test_a_gpu_falling_off_the_bus() -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    event_set = fake.nvmlEventSetCreate()
    fake.nvmlDeviceRegisterEvents(handle, XID, event_set)
    fake.fall_off_bus(0)
    event = fake.nvmlEventSetWait_v2(event_set, 1000)
    assert (event.eventType, event.eventData) == (XID, 79)
    raises(pynvml.NVML_ERROR_GPU_IS_LOST, lambda: fake.nvmlEventSetWait_v2(event_set, 1000))
    raises(pynvml.NVML_ERROR_UNKNOWN, lambda: fake.nvmlDeviceGetHandleByIndex(0))
    raises(pynvml.NVML_ERROR_GPU_IS_LOST, lambda: fake.nvmlDeviceGetName(handle))
    assert fake.nvmlDeviceGetName(fake.nvmlDeviceGetHandleByIndex(1)) == "NVIDIA A100-SXM4-40GB"


# ---------------------------------------------------------------------------------------------
# Events


@pytest.fixture
def waiter() -> Iterator[Callable[[FakeNvml, Any, int], dict[str, Any]]]:
    """Starts nvmlEventSetWait_v2 in a thread; the dict gets "event" or "error" and "seconds"."""
    threads: list[threading.Thread] = []

    def start(fake: FakeNvml, event_set: Any, timeout_ms: int) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def run() -> None:
            began = time.monotonic()
            try:
                result["event"] = fake.nvmlEventSetWait_v2(event_set, timeout_ms)
            except Exception as exc:
                result["error"] = exc
            result["seconds"] = time.monotonic() - began

        before = fake.waiting
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while fake.waiting == before and "seconds" not in result:  # until it blocks
            assert time.monotonic() < deadline
            time.sleep(0.005)
        return result

    yield start
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def join_result(result: dict[str, Any], timeout_s: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while "seconds" not in result and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "seconds" in result
    return result


def test_an_xid_wakes_a_waiting_thread_at_once(waiter: Any) -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(1)
    event_set = fake.nvmlEventSetCreate()
    supported = fake.nvmlDeviceGetSupportedEventTypes(handle)
    mask = (
        XID | pynvml.nvmlEventTypeDoubleBitEccError | pynvml.nvmlEventTypeSingleBitEccError
    ) & supported
    assert fake.registered_events(1) == 0
    fake.nvmlDeviceRegisterEvents(handle, mask, event_set)
    assert fake.registered_events(1) == mask and fake.registered_events(0) == 0
    result = waiter(fake, event_set, 10_000)
    assert fake.waiting == 1
    assert fake.inject_xid(1, 48) == 1
    event = join_result(result)["event"]
    assert result["seconds"] < 3  # of 10 s
    assert (event.eventType, event.eventData) == (XID, 48)
    assert (event.gpuInstanceId, event.computeInstanceId) == (UINT_MAX, UINT_MAX)
    assert fake.nvmlDeviceGetUUID(event.device) == fake.gpus[1].uuid
    fake.nvmlEventSetFree(event_set)
    assert fake.registered_events(1) == 0 and fake.waiting == 0


def test_event_waits_time_out_and_keep_order() -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    event_set = fake.nvmlEventSetCreate()
    assert fake.inject_xid(0, 31) == 0  # before registration: not recorded
    fake.nvmlDeviceRegisterEvents(handle, XID, event_set)
    began = time.monotonic()
    raises(pynvml.NVML_ERROR_TIMEOUT, lambda: fake.nvmlEventSetWait_v2(event_set, 100))
    assert 0.09 < time.monotonic() - began < 3
    assert fake.inject_xid(1, 48) == 0  # another GPU, not registered in this set
    fake.inject_event(0, pynvml.nvmlEventTypeDoubleBitEccError)  # registered for Xids only
    for xid in (13, 48, 79):
        fake.inject_xid(0, xid)
    assert [fake.nvmlEventSetWait(event_set, 100).eventData for _ in range(3)] == [13, 48, 79]
    raises(pynvml.NVML_ERROR_TIMEOUT, lambda: fake.nvmlEventSetWait_v2(event_set, 0))


def test_registering_an_unsupported_or_unknown_event_type_is_refused() -> None:
    fake = machine(FakeGpu.a100(), FakeGpu.rtx4090(), FakeGpu.v100(supported_events=0))
    a100, rtx, old = (fake.nvmlDeviceGetHandleByIndex(i) for i in range(3))
    event_set = fake.nvmlEventSetCreate()
    ecc = pynvml.nvmlEventTypeDoubleBitEccError
    assert fake.nvmlDeviceGetSupportedEventTypes(a100) & (XID | ecc) == XID | ecc
    assert fake.nvmlDeviceGetSupportedEventTypes(rtx) & ecc == 0
    # a type the GPU does not support: NotSupported, and nothing of the mask is registered
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        lambda: fake.nvmlDeviceRegisterEvents(rtx, XID | ecc, event_set),
    )
    assert fake.inject_xid(1, 48) == 0
    raises(
        pynvml.NVML_ERROR_NOT_SUPPORTED, lambda: fake.nvmlDeviceRegisterEvents(old, XID, event_set)
    )
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        lambda: fake.nvmlDeviceRegisterEvents(a100, 1 << 40, event_set),
    )
    fake.nvmlEventSetFree(event_set)
    raises(
        pynvml.NVML_ERROR_INVALID_ARGUMENT,
        lambda: fake.nvmlDeviceRegisterEvents(a100, XID, event_set),
    )


def test_an_xid_of_a_mig_device_reaches_its_parents_event_set(waiter: Any) -> None:
    fake = mig_machine()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    event_set = fake.nvmlEventSetCreate()
    fake.nvmlDeviceRegisterEvents(parent, XID | pynvml.nvmlEventMigConfigChange, event_set)
    fake.inject_xid(0, 94, mig=1)
    event = fake.nvmlEventSetWait_v2(event_set, 1000)
    assert (event.eventData, event.gpuInstanceId, event.computeInstanceId) == (94, 2, 0)
    assert fake.nvmlDeviceGetUUID(event.device) == fake.gpus[0].uuid  # the parent
    fake.disable_mig(0)
    assert fake.nvmlEventSetWait_v2(event_set, 1000).eventType == pynvml.nvmlEventMigConfigChange
    unprivileged = mig_machine(privileged=False)
    own = unprivileged.nvmlEventSetCreate()
    unprivileged.nvmlDeviceRegisterEvents(unprivileged.nvmlDeviceGetHandleByIndex(0), XID, own)
    assert unprivileged.inject_xid(0, 94, mig=0) == 0  # only whole-device events reach it
    assert unprivileged.inject_xid(0, 48) == 1


def test_interrupt_free_and_shutdown_end_waits(waiter: Any) -> None:
    fake = machine()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    sets = [fake.nvmlEventSetCreate() for _ in range(3)]
    for event_set in sets:
        fake.nvmlDeviceRegisterEvents(handle, XID, event_set)
    result = waiter(fake, sets[0], 60_000)
    fake.interrupt_waits()
    assert type(join_result(result)["error"]) is pynvml.NVMLError_Timeout
    result = waiter(fake, sets[1], 60_000)
    fake.nvmlEventSetFree(sets[1])
    assert type(join_result(result)["error"]) is pynvml.NVMLError_InvalidArgument
    result = waiter(fake, sets[2], 60_000)
    fake.nvmlShutdown()
    assert type(join_result(result)["error"]) is pynvml.NVMLError_Uninitialized
    assert result["seconds"] < 3  # of 60 s


def test_a_device_plugin_style_health_loop() -> None:
    """What k8s-device-plugin's checkHealth does: mask with the supported types, register, wait,
    skip non-Xid events and application Xids, find the device by the event's UUID."""
    fake = machine(FakeGpu.a100(), FakeGpu.a100(), FakeGpu.rtx4090())
    event_set = fake.nvmlEventSetCreate()
    mask = XID | pynvml.nvmlEventTypeDoubleBitEccError | pynvml.nvmlEventTypeSingleBitEccError
    for i in range(fake.nvmlDeviceGetCount()):
        handle = fake.nvmlDeviceGetHandleByUUID(fake.gpus[i].uuid)
        fake.nvmlDeviceRegisterEvents(
            handle, mask & fake.nvmlDeviceGetSupportedEventTypes(handle), event_set
        )
    fake.inject_xid(0, 13)  # application error: ignored
    fake.inject_event(1, pynvml.nvmlEventTypeSingleBitEccError)  # not an Xid: ignored
    fake.inject_xid(2, 48)  # double-bit ECC Xid: unhealthy
    unhealthy = []
    while True:
        try:
            event = fake.nvmlEventSetWait_v2(event_set, 50)
        except pynvml.NVMLError_Timeout:
            break
        if event.eventType != XID or event.eventData in APPLICATION_XIDS:
            continue
        unhealthy.append(fake.nvmlDeviceGetUUID(event.device))
    assert unhealthy == [fake.gpus[2].uuid]


# ---------------------------------------------------------------------------------------------
# Threads and counters


def test_a_sampling_thread_and_an_event_thread_side_by_side() -> None:
    fake = machine()
    handles = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    event_set = fake.nvmlEventSetCreate()
    for handle in handles:
        fake.nvmlDeviceRegisterEvents(handle, XID, event_set)
    received: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def events() -> None:
        while len(received) < 200:
            try:
                received.append(fake.nvmlEventSetWait_v2(event_set, 2000).eventData)
            except BaseException as exc:
                errors.append(exc)
                return

    def sample() -> None:
        try:
            while not stop.is_set():
                for handle in handles:
                    fake.nvmlDeviceGetMemoryInfo(handle)
                    fake.nvmlDeviceGetUtilizationRates(handle)
                    fake.nvmlDeviceGetComputeRunningProcesses(handle)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=events), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    for n in range(200):
        fake.inject_xid(n % 2, n)
        fake.add_process(n % 2, 1000 + n, MiB)
        fake.set_utilization(n % 2, n % 100)
        if n % 3 == 0:
            fake.remove_process(1000 + n)
    threads[0].join(10)
    stop.set()
    threads[1].join(10)
    assert not errors and received == list(range(200))
    assert fake.calls["nvmlDeviceGetMemoryInfo"] > 0


def test_call_counters_show_what_one_refresh_costs() -> None:
    fake = machine(FakeGpu.a100(), FakeGpu.a100(), FakeGpu.a100())
    fake.add_process(1, 77)

    def refresh() -> None:
        for i in range(fake.nvmlDeviceGetCount()):
            handle = fake.nvmlDeviceGetHandleByIndex(i)
            fake.nvmlDeviceGetMemoryInfo(handle)
            fake.nvmlDeviceGetUtilizationRates(handle)
            fake.nvmlDeviceGetComputeRunningProcesses(handle)

    fake.reset_calls()
    refresh()
    assert sum(fake.calls.values()) == 1 + 3 * 4
    # the driver sees one more call for the GPU with a process (size query, then fill)
    assert sum(fake.c_calls.values()) == 1 + 3 * 4 + 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 3
    fake.reset_calls()
    assert fake.calls == {} and fake.c_calls == {}
