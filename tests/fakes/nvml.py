"""A faithful fake of NVML (through pynvml) for tests on machines without an NVIDIA GPU.

How: the fake replaces only the C library, libnvidia-ml.so.1. Each FakeNvml carries a private copy
of the real pynvml module's functions (the same code objects, bound to a fresh module namespace
whose `CDLL` "loads" the fake library). So everything pynvml does in Python is the real thing:
names and signatures, which versioned C symbol it calls (nvmlDeviceGetCount ->
nvmlDeviceGetCount_v2, nvmlDeviceGetComputeRunningProcesses -> ..._v3), the two-call
INSUFFICIENT_SIZE dance for process lists, str decoding, the returned structs (c_nvmlMemory_t,
c_nvmlUtilization_t, c_nvmlEventData_t, c_nvmlDevice_t handles, nvmlFriendlyObject processes,
the bare c_uint of nvmlDeviceIsMigDeviceHandle) and the exceptions (NVMLError(code) ->
NVMLError_GpuIsLost, ...; NVMLLibraryMismatchError). Classes and constants are the real module's,
so `except pynvml.NVMLError_GpuIsLost` catches what the fake raises. The fake library answers
from a table of FakeGpu / FakeMig / FakeProcess dataclasses, changed by the scenario controls of
FakeNvml (thread-safe). Each FakeNvml is its own machine: two in one process see different GPUs.

Use: pass the FakeNvml where code takes `nvml` (it answers every pynvml name), or
`fake.install(monkeypatch)` for code that imports pynvml itself.

Simulated (C_SYMBOLS: the C functions; SIMULATED: the pynvml functions built on them):
- Init: nvmlInit/nvmlInitWithFlags/nvmlShutdown with NVML's reference count; every call before
  init or after the last shutdown raises Uninitialized; extra shutdowns are no error (nvml.h).
  init_error LIBRARY_NOT_FOUND: the library does not load (then all calls are Uninitialized);
  other codes (DRIVER_NOT_LOADED, NO_PERMISSION, LIB_RM_VERSION_MISMATCH): it loads, init fails.
  missing_functions: C symbols an older driver lacks -> FunctionNotFound (pynvml's unversioned
  process calls turn that into NVMLLibraryMismatchError).
- Inventory: count, handle by index (out of range: InvalidArgument) and by UUID (GPU- or MIG-;
  unknown: NotFound; "": InvalidArgument; the search, in index order, meets a lost GPU first:
  GpuIsLost), UUID, name, memory (v1 and v2 structs; used = memory_used + the processes' memory +
  memory_reserved, free = total - used; v2 also shows reserved; another struct version:
  ArgumentVersionMismatch), architecture, CUDA compute capability, brand, index, minor number,
  driver version, CUDA driver version v1/v2 (v2 without libcuda: LibraryNotFound).
- MIG: mode [current, pending] (no MIG support: NotSupported); max MIG device count (0 unless MIG
  is on); MIG device handle by index (no MIG support: NotSupported; index >= max:
  InvalidArgument; an empty index or MIG off: NotFound); is-MIG-handle; parent of a MIG handle;
  GPU and compute instance ids. MIG devices have their own MIG- UUIDs, names
  ("<GPU name> MIG 1g.5gb"), memory and processes; a MIG handle answers only MIG_HANDLE_CALLS
  (NotSupported otherwise); the MIG-enabled parent refuses utilization (nvml.h) and remapped rows
  (nvml.h); handles of MIG devices that are gone: InvalidArgument.
- Processes: compute and graphics lists (pid, usedGpuMemory or None, gpuInstanceId and
  computeInstanceId = 0xFFFFFFFF outside MIG). A MIG handle lists its processes with memory; the
  MIG-enabled parent lists all MIG devices' processes with usedGpuMemory None, and refuses
  (NoPermission) when not `privileged`, as it does its aggregate memory.
- Use: utilization (gpu/memory %), power (mW), temperature (sensor NVML_TEMPERATURE_GPU; another
  valid sensor: NotSupported; out of range: InvalidArgument).
- Health: retired pages pending; total ECC errors by type and counter (ECC off or no ECC:
  NotSupported); ECC mode; remapped rows (before Ampere or no ECC: NotSupported). A lost GPU: every
  call on its handles and its MIG devices' raises GpuIsLost, looking it up raises `lookup_error`
  (GpuIsLost; Unknown for one that fell off the bus); it stays counted.
- Events: set create/free; supported types (Xid, PState, Clock; ECC events with ECC on; MIG config
  change on MIG-capable GPUs; or FakeGpu.supported_events); register (an unsupported type:
  NotSupported and nothing registered, per nvml.h; a MIG handle: NotSupported); wait_v2 and wait
  (queued events in order; device = the GPU's handle, gpuInstanceId/computeInstanceId = the MIG
  device's or 0xFFFFFFFF; nothing within the timeout: Timeout; a registered GPU lost with nothing
  queued: GpuIsLost). Events before registration are lost; MIG device events reach a set only when
  `privileged` (otherwise NVML reports whole-device events only).
- FakeGpu.unsupported: C functions that GPU answers NotSupported (e.g. no power sensor).
- Counters: `calls` (pynvml functions the code under test called) and `c_calls` (the C calls the
  driver saw; a non-empty process list costs two).

Not simulated (a pynvml function reaching another C function raises NotImplementedError): PCI
info, clocks, fans, encoder/decoder, NVLink, vGPU, accounting, field values, samples, GPM, MIG
instance management (use enable_mig), nvmlEventSetWait_v3 and system events, process utilization,
every setter/reset, the legacy MIG-GPU-<uuid>/<gi>/<ci> UUID lookup, Windows/WDDM.

Where NVML's documentation leaves the answer open, the fake picks the stricter one, so code that
copes with the fake copes with the driver: GPU/compute instance id of a full GPU -> NotSupported;
nvmlDeviceIsMigDeviceHandle on a GPU without MIG support -> NotSupported; anything outside
MIG_HANDLE_CALLS on a MIG handle (architecture, CUDA capability, brand, minor number, ECC, power,
temperature, events) -> NotSupported (ask the parent, as k8s-device-plugin does); a wait on a set
freed meanwhile -> InvalidArgument; a wait during the last nvmlShutdown -> Uninitialized;
interrupt_waits() ends waits in progress with Timeout (nvml.h: a wait may return early on an
interrupt).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import re
import threading
import time
import types
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import pynvml

if TYPE_CHECKING:
    import pytest

MiB = 1024 * 1024
SUCCESS: int = pynvml.NVML_SUCCESS
UINT_MAX = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId of anything that is not a MIG device
ULONGLONG_MAX = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE for usedGpuMemory

# Xids the Kubernetes NVIDIA device plugin ignores as application errors (GPU still healthy):
# internal/rm/health.go, ignoredXids: 13 Graphics Engine Exception, 31 GPU memory page fault,
# 43 GPU stopped processing, 45 Preemptive cleanup, 68 Video processor exception,
# 109 Context Switch Timeout Error. Xid 79 is "GPU has fallen off the bus".
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
XID_FALLEN_OFF_BUS = 79

# C functions a MIG device handle answers; every other one is NotSupported on a MIG handle.
MIG_HANDLE_CALLS = frozenset(
    {
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetIndex",
        "nvmlDeviceIsMigDeviceHandle",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses_v3",
    }
)

# pynvml functions the fake answers completely (the conformance test checks that every C symbol
# they reach in the installed pynvml is one the fake implements).
SIMULATED = (
    "nvmlInit",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetArchitecture",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetBrand",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetMinorNumber",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetEccMode",
    "nvmlDeviceGetRemappedRows",
    "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents",
    "nvmlDeviceGetSupportedEventTypes",
    "nvmlEventSetWait_v2",
    "nvmlEventSetWait",
    "nvmlEventSetFree",
)

_UUID_NAMESPACE = uuidlib.UUID("6f1c2a52-3d0e-4c55-9a8e-2f1d0b7c9e41")

# ---------------------------------------------------------------------------------------------
# The table: GPUs, MIG devices, processes


@dataclass(eq=False)
class FakeProcess:
    """A process with a CUDA (or graphics) context. used_memory in bytes; None: NVML reports
    NVML_VALUE_NOT_AVAILABLE, which pynvml turns into usedGpuMemory=None."""

    pid: int
    used_memory: int | None = 256 * MiB
    graphics: bool = False


@dataclass(eq=False)
class FakeMig:
    """A MIG device (one compute instance in one GPU instance). uuid "" -> a stable MIG- UUID."""

    gpu_instance_id: int
    compute_instance_id: int = 0
    profile: str = "1g.5gb"
    memory_mib: int = 4864
    uuid: str = ""
    memory_used: int = 0  # bytes used besides the processes' memory
    processes: list[FakeProcess] = field(default_factory=list)


@dataclass(eq=False)
class FakeGpu:
    """One physical GPU: what NVML reports about it, and its state. uuid "" -> a stable GPU- UUID
    derived from the index; minor_number None -> the index. Memory figures in bytes except
    memory_mib (the board's total)."""

    name: str = "NVIDIA A100-SXM4-40GB"
    memory_mib: int = 40960
    uuid: str = ""
    architecture: int = pynvml.NVML_DEVICE_ARCH_AMPERE
    compute_capability: tuple[int, int] = (8, 0)
    brand: int = pynvml.NVML_BRAND_NVIDIA
    minor_number: int | None = None
    memory_used: int = 0  # bytes used besides the processes' memory (contexts, other users)
    memory_reserved: int = 0  # bytes the driver reserves (shown apart only by the v2 struct)
    utilization_gpu: int = 0
    utilization_memory: int = 0
    power_mw: int = 60_000
    temperature_c: int = 34
    ecc_capable: bool = True  # False: GeForce-like, every ECC/retirement call NotSupported
    ecc_enabled: bool = True
    # (NVML_MEMORY_ERROR_TYPE_*, NVML_VOLATILE_ECC/NVML_AGGREGATE_ECC) -> count
    ecc_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    retired_pages_pending: bool = False
    remapped_rows: tuple[int, int, bool, bool] = (0, 0, False, False)  # corr, unc, pending, failed
    max_mig_devices: int = 0  # 0: no MIG support
    mig_enabled: bool = False
    mig_pending: bool | None = None  # None: the pending mode is the current one
    migs: list[FakeMig] = field(default_factory=list)
    processes: list[FakeProcess] = field(default_factory=list)
    supported_events: int | None = None  # None: derived (Xid, PState, Clock, ECC if on, MIG)
    unsupported: set[str] = field(default_factory=set)  # C functions answering NotSupported
    lost: bool = False
    lookup_error: int = pynvml.NVML_ERROR_GPU_IS_LOST  # what handle lookups raise once lost

    @property
    def memory_total(self) -> int:
        return self.memory_mib * MiB

    @classmethod
    def a100(cls, **overrides: Any) -> FakeGpu:
        """NVIDIA A100-SXM4-40GB: Ampere, CC 8.0, MIG-capable (7 MIG devices), ECC."""
        values: dict[str, Any] = {
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_mib": 40960,
            "architecture": pynvml.NVML_DEVICE_ARCH_AMPERE,
            "compute_capability": (8, 0),
            "brand": pynvml.NVML_BRAND_NVIDIA,
            "max_mig_devices": 7,
        }
        return cls(**{**values, **overrides})

    @classmethod
    def h100(cls, **overrides: Any) -> FakeGpu:
        """NVIDIA H100 80GB HBM3: Hopper, CC 9.0, MIG-capable, ECC."""
        values: dict[str, Any] = {
            "name": "NVIDIA H100 80GB HBM3",
            "memory_mib": 81559,
            "architecture": pynvml.NVML_DEVICE_ARCH_HOPPER,
            "compute_capability": (9, 0),
            "brand": pynvml.NVML_BRAND_NVIDIA,
            "max_mig_devices": 7,
            "power_mw": 70_000,
        }
        return cls(**{**values, **overrides})

    @classmethod
    def v100(cls, **overrides: Any) -> FakeGpu:
        """Tesla V100-SXM2-16GB: Volta, CC 7.0, no MIG, page retirement but no row remapping."""
        values: dict[str, Any] = {
            "name": "Tesla V100-SXM2-16GB",
            "memory_mib": 16384,
            "architecture": pynvml.NVML_DEVICE_ARCH_VOLTA,
            "compute_capability": (7, 0),
            "brand": pynvml.NVML_BRAND_TESLA,
        }
        return cls(**{**values, **overrides})

    @classmethod
    def rtx4090(cls, **overrides: Any) -> FakeGpu:
        """NVIDIA GeForce RTX 4090: Ada, CC 8.9, no MIG, no ECC."""
        values: dict[str, Any] = {
            "name": "NVIDIA GeForce RTX 4090",
            "memory_mib": 24564,
            "architecture": pynvml.NVML_DEVICE_ARCH_ADA,
            "compute_capability": (8, 9),
            "brand": pynvml.NVML_BRAND_GEFORCE,
            "ecc_capable": False,
            "ecc_enabled": False,
            "power_mw": 30_000,
        }
        return cls(**{**values, **overrides})


# ---------------------------------------------------------------------------------------------
# Internals: handles, event sets, the fake C library, the private pynvml copy


class _Fail(Exception):
    """An NVML return code from a fake C function (never leaves the fake library)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _fail(code: int) -> NoReturn:
    raise _Fail(code)


@dataclass(eq=False)
class _Node:
    """What a handle address stands for: a GPU, or one of its MIG devices."""

    gpu: FakeGpu
    mig: FakeMig | None
    struct: Any  # pynvml.struct_c_nvmlDevice_t: the handle points here


@dataclass(eq=False)
class _EventSet:
    struct: Any  # pynvml.struct_c_nvmlEventSet_t
    registered: dict[int, tuple[FakeGpu, int]] = field(default_factory=dict)  # id(gpu) -> mask
    queue: collections.deque[tuple[FakeGpu, int, int, int, int]] = field(
        default_factory=collections.deque
    )
    freed: bool = False


def _out(arg: Any) -> Any:
    """The object behind a `byref(x)` argument (NULL: InvalidArgument)."""
    if arg is None:
        _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return getattr(arg, "_obj", arg)


def _int(arg: Any) -> int:
    return int(arg.value) if hasattr(arg, "value") else int(arg)


def _address(pointer: Any, kind: Any) -> int | None:
    if not isinstance(pointer, kind):
        return None
    value: int | None = ctypes.cast(pointer, ctypes.c_void_p).value
    return value


def _unversioned(symbol: str) -> str:
    return re.sub(r"_v\d+$", "", symbol)


class _CFunction:
    """One C function of the fake library: counts the call, checks init, maps _Fail to its code.
    An object (not a bound method) because pynvml sets `restype` on some function pointers."""

    def __init__(self, fake: FakeNvml, name: str, impl: Callable[..., int | bytes]) -> None:
        self.fake = fake
        self.name = name
        self.impl = impl
        self.restype: Any = None
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> int | bytes:
        fake = self.fake
        with fake._lock:
            fake._c_calls[self.name] += 1
            try:
                if self.name not in _NO_INIT_NEEDED and fake._refcount == 0:
                    _fail(pynvml.NVML_ERROR_UNINITIALIZED)
                return self.impl(*args)
            except _Fail as failure:
                return failure.code


_NO_INIT_NEEDED = frozenset({"nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString"})


class _Library:
    """What `CDLL("libnvidia-ml.so.1")` returns inside the fake: attributes are C functions."""

    def __init__(self, fake: FakeNvml) -> None:
        self._fake = fake
        self._functions: dict[str, _CFunction] = {}

    def __getattr__(self, name: str) -> _CFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        fake = self._fake
        if name in fake._missing:
            raise AttributeError(f"undefined symbol: {name}")  # pynvml: FunctionNotFound
        function = self._functions.get(name)
        if function is None:
            impl = getattr(fake, "_c_" + name, None)
            if impl is None:
                raise NotImplementedError(
                    f"FakeNvml does not simulate the NVML C function {name}; "
                    "see tests/fakes/nvml.py for what it simulates"
                )
            function = self._functions[name] = _CFunction(fake, name, impl)
        return function


# pynvml's module-level state; each private copy gets its own (the conformance test checks that
# pynvml's functions change no other global).
PYNVML_STATE = frozenset(
    {"nvmlLib", "libLoadLock", "_nvmlLib_refcount", "_nvmlGetFunctionPointer_cache"}
)
_PYNVML_GLOBALS: dict[str, Any] = vars(pynvml)
_PRISTINE: dict[str, Any] = dict(_PYNVML_GLOBALS)  # before any install() patches the module


def _private_pynvml(loader: Callable[..., Any]) -> dict[str, Any]:
    """A namespace with pynvml's functions re-bound to fresh module state (library, lock, refcount,
    function pointer cache) and `CDLL` = `loader`; classes and constants stay the real ones."""
    namespace = dict(_PRISTINE)
    namespace.update(
        nvmlLib=None,
        libLoadLock=threading.Lock(),
        _nvmlLib_refcount=0,
        _nvmlGetFunctionPointer_cache={},
    )
    assert set(namespace) >= PYNVML_STATE
    namespace["CDLL"] = loader
    clones: dict[int, types.FunctionType] = {}

    def clone(value: Any) -> Any:
        if not isinstance(value, types.FunctionType) or value.__globals__ is not _PYNVML_GLOBALS:
            return value
        done = clones.get(id(value))
        if done is not None:
            return done
        closure = None
        if value.__closure__ is not None:
            cells = []
            for cell in value.__closure__:
                try:
                    cells.append(types.CellType(clone(cell.cell_contents)))
                except ValueError:  # an empty cell
                    cells.append(types.CellType())
            closure = tuple(cells)
        copy = types.FunctionType(
            value.__code__, namespace, value.__name__, value.__defaults__, closure
        )
        clones[id(value)] = copy
        copy.__kwdefaults__ = value.__kwdefaults__
        copy.__qualname__ = value.__qualname__
        copy.__doc__ = value.__doc__
        copy.__module__ = value.__module__
        copy.__dict__.update({key: clone(item) for key, item in value.__dict__.items()})
        return copy

    for key, value in list(namespace.items()):
        namespace[key] = clone(value)
    return namespace


# ---------------------------------------------------------------------------------------------
# The fake


class FakeNvml:
    """A machine with NVIDIA GPUs as NVML (through pynvml) shows them; see the module docstring.

    FakeNvml(gpus=[FakeGpu.a100(), ...], driver="535.104.05", cuda=12020): answers every pynvml
    name (`fake.nvmlInit()`, `fake.NVML_TEMPERATURE_GPU`, `fake.NVMLError_GpuIsLost`). Scenario
    controls below change the machine while code runs (thread-safe); `device` is a GPU index or
    UUID, `mig` the MIG device index on that GPU.
    """

    def __init__(
        self,
        gpus: Iterable[FakeGpu] = (),
        *,
        driver: str = "535.104.05",
        cuda: int = 12020,
        init_error: int | None = None,
        missing_functions: Iterable[str] = (),
        privileged: bool = True,
        libcuda: bool = True,
    ) -> None:
        """`init_error`: the NVML_ERROR_* nvmlInit raises (LIBRARY_NOT_FOUND: no library at all).
        `missing_functions`: C symbols this "driver" lacks (looked up once, like a real library),
        e.g. "nvmlDeviceGetComputeRunningProcesses_v3" for a driver older than R510.
        `privileged`: root-like: in MIG mode the parent's aggregate memory/processes and MIG
        device events are visible (otherwise NoPermission / not delivered).
        `libcuda`: False: nvmlSystemGetCudaDriverVersion_v2 raises LibraryNotFound."""
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.gpus: list[FakeGpu] = list(gpus)
        self.driver_version = driver
        self.cuda_version = cuda
        self.init_error = init_error
        self.privileged = privileged
        self.libcuda = libcuda
        self._missing = frozenset(missing_functions)
        self._refcount = 0
        self._ever_initialized = False
        self._interrupts = 0
        self._waiting = 0
        self._calls: collections.Counter[str] = collections.Counter()
        self._c_calls: collections.Counter[str] = collections.Counter()
        self._nodes: dict[int, _Node] = {}  # handle address -> node (never shrinks: no reuse)
        self._struct_of: dict[int, Any] = {}  # id(FakeGpu or FakeMig) -> its handle struct
        self._sets: dict[int, _EventSet] = {}
        self._library = _Library(self)
        self._pynvml = _private_pynvml(self._load)
        self._api: dict[str, Callable[..., Any]] = {}
        for index, gpu in enumerate(self.gpus):
            if not gpu.uuid:
                gpu.uuid = "GPU-" + str(uuidlib.uuid5(_UUID_NAMESPACE, f"gpu-{index}"))
            self._handle_struct(gpu, None)
            if gpu.mig_enabled:
                self._check_migs(gpu, gpu.migs)
                for mig in gpu.migs:
                    self._adopt_mig(gpu, mig)

    @classmethod
    def r470(cls, gpus: Iterable[FakeGpu]) -> FakeNvml:
        """A box on an R470 driver (CUDA 11.4): its NVML has no ..._v3 process lists, which came
        with R510, so pynvml's unversioned process-list functions fail to find their symbol."""
        return cls(
            gpus,
            driver="470.182.03",
            cuda=11040,
            missing_functions={
                "nvmlDeviceGetComputeRunningProcesses_v3",
                "nvmlDeviceGetGraphicsRunningProcesses_v3",
            },
        )

    # -- the pynvml face ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """pynvml's names: functions of this fake's private pynvml (counted in `calls`),
        constants and classes of the real module."""
        if name.startswith("_"):
            raise AttributeError(name)
        api = self._api.get(name)
        if api is not None:
            return api
        try:
            value = self._pynvml[name]
        except KeyError:
            raise AttributeError(f"pynvml has no attribute {name!r}") from None
        if isinstance(value, types.FunctionType) and name.startswith("nvml"):
            api = self._api[name] = self._counted(name, value)
            return api
        return value

    def _counted(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def api(*args: Any, **kwargs: Any) -> Any:
            if name != "nvmlErrorString":  # NVMLError.__str__ calls it; not the code's own call
                with self._lock:
                    self._calls[name] += 1
            return function(*args, **kwargs)

        return api

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Route the real `pynvml` module's nvml* functions to this fake for the test (for code
        that does `import pynvml` itself). Constants and classes stay as they are (real)."""
        for name, value in _PRISTINE.items():
            if name.startswith("nvml") and isinstance(value, types.FunctionType):
                monkeypatch.setattr(pynvml, name, getattr(self, name))

    def _load(self, name: str, *args: Any, **kwargs: Any) -> _Library:
        """The private pynvml's CDLL."""
        with self._lock:
            if self.init_error == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                raise OSError(f"{name}: cannot open shared object file: No such file or directory")
            return self._library

    # -- counters -----------------------------------------------------------------------------

    @property
    def calls(self) -> collections.Counter[str]:
        """pynvml function -> how often the code under test called it (a copy)."""
        with self._lock:
            return collections.Counter(self._calls)

    @property
    def c_calls(self) -> collections.Counter[str]:
        """NVML C function -> how often pynvml called it (a copy): the driver's view."""
        with self._lock:
            return collections.Counter(self._c_calls)

    @property
    def waiting(self) -> int:
        """How many threads are blocked in nvmlEventSetWait now."""
        with self._lock:
            return self._waiting

    def registered_events(self, device: int | str) -> int:
        """The event types registered for the GPU in live event sets (OR of their masks): lets a
        test wait until the code under test listens before injecting (earlier events are lost)."""
        with self._lock:
            gpu = self.gpu(device)
            mask = 0
            for event_set in self._sets.values():
                if not event_set.freed:
                    mask |= event_set.registered.get(id(gpu), (gpu, 0))[1]
            return mask

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._c_calls.clear()

    # -- scenario controls --------------------------------------------------------------------

    def gpu(self, device: int | str) -> FakeGpu:
        """The FakeGpu by index or UUID (read it under no lock only when nothing else runs)."""
        with self._lock:
            if isinstance(device, int):
                return self.gpus[device]
            for gpu in self.gpus:
                if gpu.uuid == device:
                    return gpu
            raise KeyError(device)

    def _mig(self, device: int | str, mig: int) -> FakeMig:
        gpu = self.gpu(device)
        if not gpu.mig_enabled:
            raise ValueError(f"MIG is off on GPU {device}")
        return gpu.migs[mig]

    def add_process(
        self,
        device: int | str,
        pid: int,
        used_memory: int | None = 256 * MiB,
        *,
        mig: int | None = None,
        graphics: bool = False,
    ) -> FakeProcess:
        """A process (another user's, or a job's) starts using the GPU or one of its MIG devices.
        Its memory counts into the device's used memory."""
        with self._lock:
            process = FakeProcess(pid, used_memory, graphics)
            gpu = self.gpu(device)
            if mig is None:
                if gpu.mig_enabled:
                    raise ValueError("with MIG on, processes run in a MIG device: pass mig=")
                gpu.processes.append(process)
            else:
                if graphics:
                    raise ValueError("MIG devices run no graphics contexts")
                self._mig(device, mig).processes.append(process)
            return process

    def remove_process(self, pid: int) -> int:
        """The process ends: removed wherever it runs; returns how many entries went."""
        with self._lock:
            removed = 0
            for gpu in self.gpus:
                holders: list[FakeGpu | FakeMig] = [gpu, *gpu.migs]
                for holder in holders:
                    before = len(holder.processes)
                    holder.processes[:] = [p for p in holder.processes if p.pid != pid]
                    removed += before - len(holder.processes)
            return removed

    def set_memory_used(self, device: int | str, used: int, *, mig: int | None = None) -> None:
        """Bytes used on the GPU (or MIG device) besides the listed processes' memory."""
        with self._lock:
            if mig is None:
                self.gpu(device).memory_used = used
            else:
                self._mig(device, mig).memory_used = used

    def set_utilization(self, device: int | str, gpu: int, memory: int = 0) -> None:
        with self._lock:
            target = self.gpu(device)
            target.utilization_gpu, target.utilization_memory = gpu, memory

    def set_power(self, device: int | str, milliwatts: int) -> None:
        with self._lock:
            self.gpu(device).power_mw = milliwatts

    def set_temperature(self, device: int | str, celsius: int) -> None:
        with self._lock:
            self.gpu(device).temperature_c = celsius

    def set_retired_pages_pending(self, device: int | str, pending: bool = True) -> None:
        with self._lock:
            self.gpu(device).retired_pages_pending = pending

    def set_ecc_errors(
        self,
        device: int | str,
        *,
        uncorrected_volatile: int | None = None,
        uncorrected_aggregate: int | None = None,
        corrected_volatile: int | None = None,
        corrected_aggregate: int | None = None,
    ) -> None:
        """Set ECC error counters (those not given stay)."""
        with self._lock:
            counts = self.gpu(device).ecc_errors
            unc, corr = (
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            )
            vol, agg = pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC
            for error_type, counter_type, value in (
                (unc, vol, uncorrected_volatile),
                (unc, agg, uncorrected_aggregate),
                (corr, vol, corrected_volatile),
                (corr, agg, corrected_aggregate),
            ):
                if value is not None:
                    counts[(error_type, counter_type)] = value

    def set_ecc_mode(self, device: int | str, enabled: bool) -> None:
        with self._lock:
            self.gpu(device).ecc_enabled = enabled

    def set_remapped_rows(
        self,
        device: int | str,
        *,
        corrected: int = 0,
        uncorrected: int = 0,
        pending: bool = False,
        failure: bool = False,
    ) -> None:
        with self._lock:
            self.gpu(device).remapped_rows = (corrected, uncorrected, pending, failure)

    def inject_event(
        self, device: int | str, event_type: int, data: int = 0, *, mig: int | None = None
    ) -> int:
        """An NVML event on the GPU (or one of its MIG devices): queued in every live event set
        that registered this GPU for the type, and waiting nvmlEventSetWait calls wake at once.
        Returns the number of sets it reached."""
        with self._lock:
            gpu = self.gpu(device)
            gi = ci = UINT_MAX
            if mig is not None:
                instance = self._mig(device, mig)
                gi, ci = instance.gpu_instance_id, instance.compute_instance_id
                if not self.privileged:
                    return 0
            reached = 0
            for event_set in self._sets.values():
                entry = event_set.registered.get(id(gpu))
                if not event_set.freed and entry is not None and entry[1] & event_type:
                    event_set.queue.append((gpu, event_type, data, gi, ci))
                    reached += 1
            self._cond.notify_all()
            return reached

    def inject_xid(self, device: int | str, xid: int, *, mig: int | None = None) -> int:
        """An Xid (nvmlEventTypeXidCriticalError with eventData = xid); see inject_event."""
        return self.inject_event(device, pynvml.nvmlEventTypeXidCriticalError, xid, mig=mig)

    def interrupt_waits(self) -> None:
        """Waiting nvmlEventSetWait calls return Timeout now (NVML: "can return before the
        timeout, e.g. when an interrupt arrives"); lets a test stop an event thread fast."""
        with self._lock:
            self._interrupts += 1
            self._cond.notify_all()

    def lose_gpu(
        self,
        device: int | str,
        *,
        xid: int | None = None,
        lookup_error: int = pynvml.NVML_ERROR_GPU_IS_LOST,
    ) -> None:
        """The GPU is lost: every call on its handles (and its MIG devices') raises GpuIsLost,
        looking it up raises `lookup_error`, waits on sets with it registered raise GpuIsLost once
        their queue is empty. `xid`: an Xid delivered just before."""
        if xid is not None:
            self.inject_xid(device, xid)
        with self._lock:
            gpu = self.gpu(device)
            gpu.lost = True
            gpu.lookup_error = lookup_error
            self._cond.notify_all()

    def fall_off_bus(
        self, device: int | str, *, lookup_error: int = pynvml.NVML_ERROR_UNKNOWN
    ) -> None:
        """Xid 79 ("GPU has fallen off the bus"), then the GPU is lost; looking it up fails with
        Unknown Error (nvidia-smi: "Unable to determine the device handle for GPU ...: Unknown
        Error"); pass lookup_error=NVML_ERROR_GPU_IS_LOST for the other variant seen."""
        self.lose_gpu(device, xid=XID_FALLEN_OFF_BUS, lookup_error=lookup_error)

    def restore_gpu(self, device: int | str) -> None:
        """The GPU is back (after a reset): its old handles work again."""
        with self._lock:
            self.gpu(device).lost = False

    def enable_mig(self, device: int | str, instances: Sequence[FakeMig]) -> None:
        """MIG on (current and pending) with these MIG devices (their indices: list order).
        Sends nvmlEventMigConfigChange to sets that registered it."""
        with self._lock:
            gpu = self.gpu(device)
            if gpu.max_mig_devices == 0:
                raise ValueError(f"{gpu.name} has no MIG support")
            if gpu.processes:
                raise ValueError("MIG mode changes only on an idle GPU")
            self._check_migs(gpu, instances)
            gpu.mig_enabled, gpu.mig_pending = True, None
            gpu.migs = list(instances)
            for mig in gpu.migs:
                self._adopt_mig(gpu, mig)
        self.inject_event(device, pynvml.nvmlEventMigConfigChange)

    def disable_mig(self, device: int | str) -> None:
        """MIG off: the MIG devices are gone, their handles InvalidArgument."""
        with self._lock:
            gpu = self.gpu(device)
            gpu.mig_enabled, gpu.mig_pending = False, None
            gpu.migs = []
        self.inject_event(device, pynvml.nvmlEventMigConfigChange)

    def set_mig_pending(self, device: int | str, enabled: bool) -> None:
        """The pending MIG mode (effective after a GPU reset, which the fake does not do)."""
        with self._lock:
            self.gpu(device).mig_pending = enabled

    def set_driver(self, version: str | None = None, cuda: int | None = None) -> None:
        """Another driver / CUDA version (e.g. cuda=12040 for CUDA 12.4)."""
        with self._lock:
            if version is not None:
                self.driver_version = version
            if cuda is not None:
                self.cuda_version = cuda

    def fail_init(self, code: int | None) -> None:
        """nvmlInit raises NVMLError(code) from now on (None: it works again)."""
        with self._lock:
            self.init_error = code

    # -- helpers ------------------------------------------------------------------------------

    def _handle_struct(self, gpu: FakeGpu, mig: FakeMig | None) -> Any:
        key = id(mig if mig is not None else gpu)
        struct = self._struct_of.get(key)
        if struct is None:
            struct = pynvml.struct_c_nvmlDevice_t()
            self._struct_of[key] = struct
            self._nodes[ctypes.addressof(struct)] = _Node(gpu, mig, struct)
        return struct

    def _check_migs(self, gpu: FakeGpu, instances: Sequence[FakeMig]) -> None:
        if len(instances) > gpu.max_mig_devices:
            raise ValueError(f"{gpu.name} has at most {gpu.max_mig_devices} MIG devices")
        ids = [(m.gpu_instance_id, m.compute_instance_id) for m in instances]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate (GPU instance, compute instance) ids: {ids}")

    def _adopt_mig(self, gpu: FakeGpu, mig: FakeMig) -> None:
        if not mig.uuid:
            name = f"{gpu.uuid}/{mig.gpu_instance_id}/{mig.compute_instance_id}"
            mig.uuid = "MIG-" + str(uuidlib.uuid5(_UUID_NAMESPACE, name))
        self._handle_struct(gpu, mig)

    def _set_handle(self, out: Any, gpu: FakeGpu, mig: FakeMig | None = None) -> int:
        _out(out).contents = self._handle_struct(gpu, mig)
        return SUCCESS

    def _node(self, handle: Any, symbol: str) -> _Node:
        """The device a handle stands for, with NVML's refusals (unknown/stale: InvalidArgument,
        lost: GpuIsLost, a MIG handle outside MIG_HANDLE_CALLS or an `unsupported` call:
        NotSupported)."""
        node = self._nodes.get(_address(handle, pynvml.c_nvmlDevice_t) or 0)
        if node is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu, mig = node.gpu, node.mig
        if gpu.lost:
            _fail(pynvml.NVML_ERROR_GPU_IS_LOST)
        if mig is not None:
            if not gpu.mig_enabled or not any(m is mig for m in gpu.migs):
                _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if symbol not in MIG_HANDLE_CALLS:
                _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if symbol in gpu.unsupported or _unversioned(symbol) in gpu.unsupported:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return node

    def _gpu_node(self, handle: Any, symbol: str) -> FakeGpu:
        return self._node(handle, symbol).gpu

    def _event_set(self, handle: Any) -> _EventSet:
        event_set = self._sets.get(_address(handle, pynvml.c_nvmlEventSet_t) or 0)
        if event_set is None or event_set.freed:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return event_set

    @staticmethod
    def _write_text(buffer: Any, length: Any, text: str) -> int:
        data = text.encode()
        if buffer is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if len(data) + 1 > _int(length):
            _fail(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        buffer.value = data
        return SUCCESS

    def _supported_events(self, gpu: FakeGpu) -> int:
        if gpu.supported_events is not None:
            return gpu.supported_events
        mask: int = (
            pynvml.nvmlEventTypeXidCriticalError
            | pynvml.nvmlEventTypePState
            | pynvml.nvmlEventTypeClock
        )
        if gpu.ecc_capable and gpu.ecc_enabled:
            mask |= pynvml.nvmlEventTypeSingleBitEccError | pynvml.nvmlEventTypeDoubleBitEccError
        if gpu.max_mig_devices:
            mask |= pynvml.nvmlEventMigConfigChange
        return mask

    @staticmethod
    def _process_memory(processes: Iterable[FakeProcess]) -> int:
        return sum(p.used_memory or 0 for p in processes)

    def _memory(self, node: _Node) -> tuple[int, int, int]:
        """(total, reserved, used) in bytes; used includes reserved."""
        gpu, mig = node.gpu, node.mig
        if mig is not None:
            return mig.memory_mib * MiB, 0, mig.memory_used + self._process_memory(mig.processes)
        used = gpu.memory_reserved + gpu.memory_used + self._process_memory(gpu.processes)
        if gpu.mig_enabled:
            if not self.privileged:
                _fail(pynvml.NVML_ERROR_NO_PERMISSION)
            used += sum(m.memory_used + self._process_memory(m.processes) for m in gpu.migs)
        return gpu.memory_total, gpu.memory_reserved, used

    # -- the fake C library: one _c_<symbol> per NVML C function (argument order as in nvml.h) -

    def _c_nvmlInitWithFlags(self, flags: Any) -> int:
        if self.init_error is not None:
            return self.init_error
        self._refcount += 1
        self._ever_initialized = True
        return SUCCESS

    def _c_nvmlShutdown(self) -> int:
        if not self._ever_initialized:
            return int(pynvml.NVML_ERROR_UNINITIALIZED)
        # nvml.h: "no error is reported if nvmlShutdown() is called more times than nvmlInit()"
        if self._refcount > 0:
            self._refcount -= 1
            if self._refcount == 0:
                self._cond.notify_all()
        return SUCCESS

    def _c_nvmlErrorString(self, result: Any) -> bytes:
        text = pynvml.NVMLError._errcode_to_string.get(_int(result), "Unknown Error")
        return str(text).encode()

    def _c_nvmlSystemGetDriverVersion(self, version: Any, length: Any) -> int:
        return self._write_text(version, length, self.driver_version)

    def _c_nvmlSystemGetCudaDriverVersion(self, version: Any) -> int:
        _out(version).value = self.cuda_version
        return SUCCESS

    def _c_nvmlSystemGetCudaDriverVersion_v2(self, version: Any) -> int:
        if not self.libcuda:
            _fail(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        _out(version).value = self.cuda_version
        return SUCCESS

    def _c_nvmlDeviceGetCount_v2(self, count: Any) -> int:
        _out(count).value = len(self.gpus)
        return SUCCESS

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, device: Any) -> int:
        i = _int(index)
        if not 0 <= i < len(self.gpus):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[i]
        if gpu.lost:
            _fail(gpu.lookup_error)
        return self._set_handle(device, gpu)

    def _c_nvmlDeviceGetHandleByUUID(self, uuid: Any, device: Any) -> int:
        raw = uuid.value if uuid is not None else None
        if not raw:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        wanted = raw.decode(errors="replace")
        # nvml.h: NVML may initialize other GPUs while it searches; GPU_IS_LOST "if any GPU has
        # fallen off the bus": the search meets the GPUs in index order.
        for gpu in self.gpus:
            if gpu.lost:
                _fail(pynvml.NVML_ERROR_GPU_IS_LOST)
            if gpu.uuid == wanted:
                return self._set_handle(device, gpu)
            if gpu.mig_enabled:
                for mig in gpu.migs:
                    if mig.uuid == wanted:
                        return self._set_handle(device, gpu, mig)
        _fail(pynvml.NVML_ERROR_NOT_FOUND)

    def _c_nvmlDeviceGetUUID(self, device: Any, uuid: Any, length: Any) -> int:
        node = self._node(device, "nvmlDeviceGetUUID")
        text = node.mig.uuid if node.mig is not None else node.gpu.uuid
        return self._write_text(uuid, length, text)

    def _c_nvmlDeviceGetName(self, device: Any, name: Any, length: Any) -> int:
        node = self._node(device, "nvmlDeviceGetName")
        text = node.gpu.name if node.mig is None else f"{node.gpu.name} MIG {node.mig.profile}"
        return self._write_text(name, length, text)

    def _c_nvmlDeviceGetMemoryInfo(self, device: Any, memory: Any) -> int:
        total, _, used = self._memory(self._node(device, "nvmlDeviceGetMemoryInfo"))
        out = _out(memory)
        out.total, out.used, out.free = total, used, max(0, total - used)
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo_v2(self, device: Any, memory: Any) -> int:
        node = self._node(device, "nvmlDeviceGetMemoryInfo_v2")
        out = _out(memory)
        if out.version != pynvml.nvmlMemory_v2:
            _fail(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        total, reserved, used = self._memory(node)
        out.total, out.reserved, out.used, out.free = total, reserved, used, max(0, total - used)
        return SUCCESS

    def _c_nvmlDeviceGetArchitecture(self, device: Any, arch: Any) -> int:
        _out(arch).value = self._gpu_node(device, "nvmlDeviceGetArchitecture").architecture
        return SUCCESS

    def _c_nvmlDeviceGetCudaComputeCapability(self, device: Any, major: Any, minor: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetCudaComputeCapability")
        _out(major).value, _out(minor).value = gpu.compute_capability
        return SUCCESS

    def _c_nvmlDeviceGetBrand(self, device: Any, brand: Any) -> int:
        _out(brand).value = self._gpu_node(device, "nvmlDeviceGetBrand").brand
        return SUCCESS

    def _c_nvmlDeviceGetIndex(self, device: Any, index: Any) -> int:
        node = self._node(device, "nvmlDeviceGetIndex")
        if node.mig is not None:  # nvml.h: a MIG handle's index is its MIG device index
            value = next(i for i, m in enumerate(node.gpu.migs) if m is node.mig)
        else:
            value = next(i for i, g in enumerate(self.gpus) if g is node.gpu)
        _out(index).value = value
        return SUCCESS

    def _c_nvmlDeviceGetMinorNumber(self, device: Any, minor: Any) -> int:
        node = self._node(device, "nvmlDeviceGetMinorNumber")
        gpu = node.gpu
        number = gpu.minor_number
        if number is None:
            number = next(i for i, g in enumerate(self.gpus) if g is gpu)
        _out(minor).value = number
        return SUCCESS

    def _c_nvmlDeviceGetMigMode(self, device: Any, current: Any, pending: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetMigMode")
        if gpu.max_mig_devices == 0:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        pending_mode = gpu.mig_enabled if gpu.mig_pending is None else gpu.mig_pending
        _out(current).value = int(gpu.mig_enabled)
        _out(pending).value = int(pending_mode)
        return SUCCESS

    def _c_nvmlDeviceGetMaxMigDeviceCount(self, device: Any, count: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetMaxMigDeviceCount")
        # nvml.h: "Returns zero if MIG is not supported or enabled"
        _out(count).value = gpu.max_mig_devices if gpu.mig_enabled else 0
        return SUCCESS

    def _c_nvmlDeviceGetMigDeviceHandleByIndex(
        self, device: Any, index: Any, mig_device: Any
    ) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        i = _int(index)
        if gpu.max_mig_devices == 0:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if i >= gpu.max_mig_devices:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not gpu.mig_enabled or i >= len(gpu.migs):
            _fail(pynvml.NVML_ERROR_NOT_FOUND)  # nvml.h: "no valid MIG device was found at index"
        return self._set_handle(mig_device, gpu, gpu.migs[i])

    def _c_nvmlDeviceIsMigDeviceHandle(self, device: Any, is_mig: Any) -> int:
        node = self._node(device, "nvmlDeviceIsMigDeviceHandle")
        if node.mig is None and node.gpu.max_mig_devices == 0:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(is_mig).value = int(node.mig is not None)
        return SUCCESS

    def _c_nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, mig_device: Any, device: Any) -> int:
        node = self._node(mig_device, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if node.mig is None:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._set_handle(device, node.gpu)

    def _c_nvmlDeviceGetGpuInstanceId(self, device: Any, instance_id: Any) -> int:
        node = self._node(device, "nvmlDeviceGetGpuInstanceId")
        if node.mig is None:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(instance_id).value = node.mig.gpu_instance_id
        return SUCCESS

    def _c_nvmlDeviceGetComputeInstanceId(self, device: Any, instance_id: Any) -> int:
        node = self._node(device, "nvmlDeviceGetComputeInstanceId")
        if node.mig is None:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(instance_id).value = node.mig.compute_instance_id
        return SUCCESS

    def _processes(self, symbol: str, device: Any, count: Any, infos: Any, graphics: bool) -> int:
        node = self._node(device, symbol)
        gpu, mig = node.gpu, node.mig
        rows: list[tuple[FakeProcess, int, int, bool]] = []  # process, gi, ci, memory known
        if mig is not None:
            rows = [
                (p, mig.gpu_instance_id, mig.compute_instance_id, True)
                for p in mig.processes
                if p.graphics == graphics
            ]
        else:
            rows = [(p, UINT_MAX, UINT_MAX, True) for p in gpu.processes if p.graphics == graphics]
            if gpu.mig_enabled:
                if not self.privileged:
                    _fail(pynvml.NVML_ERROR_NO_PERMISSION)
                rows += [
                    (p, m.gpu_instance_id, m.compute_instance_id, False)
                    for m in gpu.migs
                    for p in m.processes
                    if p.graphics == graphics
                ]
        counter = _out(count)
        if not rows:
            counter.value = 0
            return SUCCESS
        if infos is None or counter.value < len(rows):
            counter.value = len(rows)
            return int(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, (process, gi, ci, known) in enumerate(rows):
            infos[i].pid = process.pid
            memory = process.used_memory if known else None
            infos[i].usedGpuMemory = ULONGLONG_MAX if memory is None else memory
            infos[i].gpuInstanceId = gi
            infos[i].computeInstanceId = ci
        counter.value = len(rows)
        return SUCCESS

    def _c_nvmlDeviceGetComputeRunningProcesses_v3(
        self, device: Any, count: Any, infos: Any
    ) -> int:
        symbol = "nvmlDeviceGetComputeRunningProcesses_v3"
        return self._processes(symbol, device, count, infos, graphics=False)

    def _c_nvmlDeviceGetComputeRunningProcesses_v2(
        self, device: Any, count: Any, infos: Any
    ) -> int:
        symbol = "nvmlDeviceGetComputeRunningProcesses_v2"
        return self._processes(symbol, device, count, infos, graphics=False)

    def _c_nvmlDeviceGetGraphicsRunningProcesses_v3(
        self, device: Any, count: Any, infos: Any
    ) -> int:
        symbol = "nvmlDeviceGetGraphicsRunningProcesses_v3"
        return self._processes(symbol, device, count, infos, graphics=True)

    def _c_nvmlDeviceGetGraphicsRunningProcesses_v2(
        self, device: Any, count: Any, infos: Any
    ) -> int:
        symbol = "nvmlDeviceGetGraphicsRunningProcesses_v2"
        return self._processes(symbol, device, count, infos, graphics=True)

    def _c_nvmlDeviceGetUtilizationRates(self, device: Any, utilization: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetUtilizationRates")
        if gpu.mig_enabled:  # nvml.h: "On MIG-enabled GPUs ... not currently supported"
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        out = _out(utilization)
        out.gpu, out.memory = gpu.utilization_gpu, gpu.utilization_memory
        return SUCCESS

    def _c_nvmlDeviceGetPowerUsage(self, device: Any, power: Any) -> int:
        _out(power).value = self._gpu_node(device, "nvmlDeviceGetPowerUsage").power_mw
        return SUCCESS

    def _c_nvmlDeviceGetTemperature(self, device: Any, sensor: Any, temperature: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetTemperature")
        kind = _int(sensor)
        if kind >= pynvml.NVML_TEMPERATURE_COUNT:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if kind != pynvml.NVML_TEMPERATURE_GPU:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(temperature).value = gpu.temperature_c
        return SUCCESS

    def _c_nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any, pending: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetRetiredPagesPendingStatus")
        if not gpu.ecc_capable:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(pending).value = int(gpu.retired_pages_pending)
        return SUCCESS

    def _c_nvmlDeviceGetTotalEccErrors(
        self, device: Any, error_type: Any, counter_type: Any, count: Any
    ) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetTotalEccErrors")
        kind, counter = _int(error_type), _int(counter_type)
        if kind >= pynvml.NVML_MEMORY_ERROR_TYPE_COUNT or counter > pynvml.NVML_AGGREGATE_ECC:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not (gpu.ecc_capable and gpu.ecc_enabled):  # nvml.h: "Requires ECC Mode to be enabled"
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(count).value = gpu.ecc_errors.get((kind, counter), 0)
        return SUCCESS

    def _c_nvmlDeviceGetEccMode(self, device: Any, current: Any, pending: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetEccMode")
        if not gpu.ecc_capable:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _out(current).value = _out(pending).value = int(gpu.ecc_enabled)
        return SUCCESS

    def _c_nvmlDeviceGetRemappedRows(
        self, device: Any, corrected: Any, uncorrected: Any, pending: Any, failure: Any
    ) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetRemappedRows")
        # nvml.h: Ampere or newer; "If MIG is enabled ... not supported"
        if not gpu.ecc_capable or gpu.architecture < pynvml.NVML_DEVICE_ARCH_AMPERE:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if gpu.mig_enabled and gpu.migs:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        corr, unc, is_pending, failed = gpu.remapped_rows
        _out(corrected).value, _out(uncorrected).value = corr, unc
        _out(pending).value, _out(failure).value = int(is_pending), int(failed)
        return SUCCESS

    def _c_nvmlEventSetCreate(self, event_set: Any) -> int:
        struct = pynvml.struct_c_nvmlEventSet_t()
        self._sets[ctypes.addressof(struct)] = _EventSet(struct)
        _out(event_set).contents = struct
        return SUCCESS

    def _c_nvmlDeviceGetSupportedEventTypes(self, device: Any, event_types: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceGetSupportedEventTypes")
        _out(event_types).value = self._supported_events(gpu)
        return SUCCESS

    def _c_nvmlDeviceRegisterEvents(self, device: Any, event_types: Any, event_set: Any) -> int:
        gpu = self._gpu_node(device, "nvmlDeviceRegisterEvents")
        target = self._event_set(event_set)
        mask = _int(event_types)
        if mask & ~pynvml.nvmlEventTypeAll:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if mask & ~self._supported_events(gpu):
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)  # nvml.h: then none of the types is registered
        _, before = target.registered.get(id(gpu), (gpu, 0))
        target.registered[id(gpu)] = (gpu, before | mask)
        return SUCCESS

    def _c_nvmlEventSetWait_v2(self, event_set: Any, data: Any, timeout_ms: Any) -> int:
        target = self._event_set(event_set)
        out = _out(data)
        deadline = time.monotonic() + _int(timeout_ms) / 1000
        interrupts = self._interrupts
        while True:
            if self._refcount == 0:
                _fail(pynvml.NVML_ERROR_UNINITIALIZED)
            if target.freed:
                _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if target.queue:
                gpu, event_type, event_data, gi, ci = target.queue.popleft()
                out.device = pynvml.c_nvmlDevice_t(self._handle_struct(gpu, None))
                out.eventType, out.eventData = event_type, event_data
                out.gpuInstanceId, out.computeInstanceId = gi, ci
                return SUCCESS
            if any(gpu.lost for gpu, _ in target.registered.values()):
                _fail(pynvml.NVML_ERROR_GPU_IS_LOST)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupts != interrupts:
                _fail(pynvml.NVML_ERROR_TIMEOUT)
            self._waiting += 1
            try:
                self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def _c_nvmlEventSetFree(self, event_set: Any) -> int:
        target = self._event_set(event_set)
        target.freed = True
        target.queue.clear()
        self._cond.notify_all()
        return SUCCESS


C_SYMBOLS = frozenset(name[3:] for name in vars(FakeNvml) if name.startswith("_c_nvml"))
