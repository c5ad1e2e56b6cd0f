"""The one adapter to NVML: the real `pynvml` (nvidia-ml-py), or a fake with the same function
names, return shapes and exceptions (tests/fakes/nvml.py). Everything the fetcher reads of its GPUs
goes through `Nvml`: the devices (MIG instances as devices of their own), the driver's versions,
each device's use (memory, processes, utilisation, power) and its health signals, and the Xid
events. NVML is initialised once and kept open (an init per read would cost milliseconds).

No call here raises for a GPU's own trouble: a lost GPU, a call the device does not support, a
driver that answers nothing all come back as values (`health`, None), so that a broken GPU can
never stop the daemon.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from typing import Any

from fetcher.gpu.cuda import cuda_version_from_nvml

log = logging.getLogger(__name__)

# NVML's nvmlDeviceGetArchitecture values
ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
}
MIB = 1024 * 1024
ALL_INSTANCES = 0xFFFFFFFF  # an event's gpuInstanceId when it is about the whole GPU


@dataclass(frozen=True)
class Gpu:
    """A device a job can be given: a whole GPU, or a MIG instance (`parent` set: the UUID of
    the GPU it is carved from; `model` and `archi` are the parent's)."""

    index: int  # NVML's index of the (parent) GPU
    uuid: str
    model: str
    memory_mb: int
    archi: str | None
    parent: str | None = None
    gpu_instance: int | None = None  # a MIG instance's GPU instance id (events name it)
    brand: int | None = None  # nvmlDeviceGetBrand's value (CUDA requirements' `brand=`)
    compute: str | None = None  # compute capability, "8.0"


@dataclass(frozen=True)
class Process:
    pid: int
    memory_mb: int | None  # None: NVML cannot tell (then the whole device's use counts)


@dataclass(frozen=True)
class Reading:
    """One look at a device's use."""

    memory_used_mb: int
    processes: tuple[Process, ...] = ()
    utilization: int | None = None  # percent; None where NVML does not say (MIG instances)
    power_w: float | None = None

    @property
    def processes_mb(self) -> int:
        """The memory the processes on the device use: 0 with none, the whole device's use when
        NVML cannot tell a process's."""
        known = [p.memory_mb for p in self.processes]
        return self.memory_used_mb if None in known else sum(m or 0 for m in known)


@dataclass(frozen=True)
class Driver:
    version: str  # "535.104.05"
    cuda: tuple[int, int] | None  # the CUDA version the driver supports, (12, 2)

    def cuda_text(self) -> str:
        return "unknown" if self.cuda is None else f"{self.cuda[0]}.{self.cuda[1]}"


@dataclass
class XidEvent:
    """A critical event NVML reported: which devices it is about, and the Xid."""

    uuids: list[str] = field(default_factory=list)
    xid: int = 0
    kind: str = "xid"  # xid, or ecc (a double-bit ECC error)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _address(handle: Any) -> int:
    """The address a device handle (pynvml's `c_nvmlDevice_t`, a ctypes pointer) points to: two
    handles of one device are equal by it, not by `==` (ctypes compares the Python objects)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or 0
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def _mismatch(lib: Any, exc: Exception) -> bool:
    """`exc` says the driver lacks the C function the binding called (an unversioned pynvml
    function raises NVMLLibraryMismatchError, a versioned one NVMLError_FunctionNotFound)."""
    kinds = tuple(
        k
        for k in (
            getattr(lib, "NVMLLibraryMismatchError", None),
            getattr(lib, "NVMLError_FunctionNotFound", None),
        )
        if isinstance(k, type)
    )
    return bool(kinds) and isinstance(exc, kinds)


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class Nvml:
    def __init__(self, lib: Any = None) -> None:
        if lib is None:
            import pynvml

            lib = pynvml
        self.lib = lib
        self.ok = False
        self.why: str | None = None  # why NVML is not open
        self._handles: dict[str, Any] = {}
        self.left_out: list[tuple[int, str]] = []  # GPUs NVML counts but cannot read: index, why
        self._fallback: dict[str, str] = {}  # a function this driver lacks -> the older one used

    # --- lifetime --------------------------------------------------------------------------
    def open(self) -> bool:
        """Initialise NVML; False (and `why`) where there is no NVIDIA driver."""
        try:
            self.lib.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - any NVMLError (LibraryNotFound, DriverNotLoaded, ...)
            self.why = str(exc) or type(exc).__name__
            return False
        self.ok = True
        return True

    def close(self) -> None:
        if self.ok:
            self.ok = False
            try:
                self.lib.nvmlShutdown()
            except Exception:
                log.debug("gpu: nvmlShutdown failed", exc_info=True)

    def _call(self, name: str, *args: Any) -> Any:
        """NVML's function `name`; None when it fails (NotSupported, GpuIsLost, ...) or this
        binding lacks it (an older nvidia-ml-py)."""
        fn = getattr(self.lib, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - every NVMLError: the caller reads None
            return None

    def _versioned(self, name: str, *args: Any) -> Any:
        """`_call` of the unversioned function `name` (pynvml binds it to the newest version, the
        process lists to `_v3`, which drivers before R510 lack); on a driver without it, its
        `_v2` (then always, without asking again)."""
        fn = getattr(self.lib, self._fallback.get(name, name), None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - every NVMLError: the caller reads None
            if name in self._fallback or not _mismatch(self.lib, exc):
                return None
        self._fallback[name] = f"{name}_v2"
        log.info("gpu: this driver has no %s; using %s_v2", name, name)
        return self._call(f"{name}_v2", *args)

    # --- inventory ---------------------------------------------------------------------------
    def devices(self) -> list[Gpu]:
        """Every device a job can be given: each GPU, or, where MIG is on, each of its MIG
        instances instead (the parent is never offered whole, not even before any instance is
        made: CUDA in a container given it would see no device)."""
        lib = self.lib
        found: list[Gpu] = []
        self.left_out = []
        try:
            count = int(lib.nvmlDeviceGetCount())
        except Exception as exc:  # noqa: BLE001 - any NVMLError: the box then has no GPU to give
            log.warning("gpu: NVML cannot count the GPUs (%s); no GPU is offered", _why(exc))
            self.left_out.append((-1, _why(exc)))
            return found
        for i in range(count):
            try:  # a GPU that fell off the bus, or one a device cgroup hides (NoPermission)
                handle = lib.nvmlDeviceGetHandleByIndex(i)
                mig_on = self._mig_enabled(handle)
                gpu = self._describe(i, handle, mig_on)
            except Exception as exc:  # noqa: BLE001 - never let one GPU keep the others out
                log.warning(
                    "gpu %d: left out, NVML cannot read it (%s); the other GPUs are used",
                    i,
                    _why(exc),
                )
                self.left_out.append((i, _why(exc)))
                continue
            self._handles[gpu.uuid] = handle
            if not mig_on:
                found.append(gpu)
                continue
            migs = self._mig_instances(gpu, handle)
            if not migs:
                log.warning(
                    "gpu %d: MIG mode is on and no MIG instance is made; it is offered to no job"
                    " (make instances with nvidia-smi mig -cgi ... -C)",
                    i,
                )
            found.extend(migs)
        return found

    def _mig_enabled(self, handle: Any) -> bool:
        mode = self._call("nvmlDeviceGetMigMode", handle)
        return bool(mode) and int(mode[0]) == int(getattr(self.lib, "NVML_DEVICE_MIG_ENABLE", 1))

    def _describe(self, index: int, handle: Any, mig_on: bool = False) -> Gpu:
        """The GPU. In MIG mode NVML refuses its aggregate memory to a caller that is not root
        (NoPermission): its memory is then 0 (only its instances are offered, with theirs)."""
        lib = self.lib
        archi = self._call("nvmlDeviceGetArchitecture", handle)
        cc = self._call("nvmlDeviceGetCudaComputeCapability", handle)
        brand = self._call("nvmlDeviceGetBrand", handle)
        if mig_on:
            memory = self._call("nvmlDeviceGetMemoryInfo", handle)
        else:
            memory = lib.nvmlDeviceGetMemoryInfo(handle)
        return Gpu(
            index=index,
            uuid=_text(lib.nvmlDeviceGetUUID(handle)),
            model=_text(lib.nvmlDeviceGetName(handle)),
            memory_mb=0 if memory is None else int(memory.total) // MIB,
            archi=ARCHITECTURES.get(int(archi)) if archi is not None else None,
            brand=None if brand is None else int(brand),
            compute=None if cc is None else f"{cc[0]}.{cc[1]}",
        )

    def _mig_instances(self, parent: Gpu, handle: Any) -> list[Gpu]:
        lib = self.lib
        instances = []
        for i in range(int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle) or 0)):
            mig = self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle, i)
            if mig is None:  # NotFound: no instance at this index
                continue
            try:
                uuid = _text(lib.nvmlDeviceGetUUID(mig))
                memory_mb = int(lib.nvmlDeviceGetMemoryInfo(mig).total) // MIB
            except Exception as exc:  # noqa: BLE001 - an instance destroyed meanwhile, ...
                log.warning(
                    "gpu %d: MIG device %d left out, NVML cannot read it (%s)",
                    parent.index,
                    i,
                    _why(exc),
                )
                continue
            self._handles[uuid] = mig
            instances.append(
                Gpu(
                    index=parent.index,
                    uuid=uuid,
                    model=parent.model,
                    memory_mb=memory_mb,
                    archi=parent.archi,
                    parent=parent.uuid,
                    gpu_instance=self._call("nvmlDeviceGetGpuInstanceId", mig),
                    brand=parent.brand,
                    compute=parent.compute,
                )
            )
        return instances

    def driver(self) -> Driver:
        version = self._call("nvmlSystemGetDriverVersion")
        cuda = self._call("nvmlSystemGetCudaDriverVersion")
        return Driver(
            version="unknown" if version is None else _text(version),
            cuda=None if not cuda else cuda_version_from_nvml(int(cuda)),
        )

    # --- use and health --------------------------------------------------------------------
    def reading(self, gpu: Gpu) -> Reading | None:
        """The device's use now; None when NVML cannot read it (see `health`)."""
        handle = self._handles.get(gpu.uuid)
        if handle is None:
            return None
        mem = self._call("nvmlDeviceGetMemoryInfo", handle)
        if mem is None:
            return None
        procs: dict[int, Process] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in self._versioned(fn, handle) or []:
                used = getattr(p, "usedGpuMemory", None)
                procs[int(p.pid)] = Process(int(p.pid), None if used is None else int(used) // MIB)
        util = self._call("nvmlDeviceGetUtilizationRates", handle)
        power = self._call("nvmlDeviceGetPowerUsage", handle)
        return Reading(
            memory_used_mb=int(mem.used) // MIB,
            processes=tuple(procs.values()),
            utilization=None if util is None else int(util.gpu),
            power_w=None if power is None else int(power) / 1000,
        )

    def health(self, gpu: Gpu) -> str | None:
        """A health signal the device shows now, in words; None for a healthy device. Read on
        the GPU itself (a MIG instance's parent): retired pages pending (the GPU needs a reset),
        uncorrectable ECC errors since the driver loaded, remapped-row failures, or a GPU NVML
        has lost."""
        lib = self.lib
        handle = self._handles.get(gpu.parent or gpu.uuid)
        own = self._handles.get(gpu.uuid)
        if handle is None or own is None:
            return "NVML does not show it any more"
        try:  # on the device itself: a MIG parent's memory is refused to a caller not root
            lib.nvmlDeviceGetMemoryInfo(own)
        except Exception as exc:  # noqa: BLE001 - NVMLError_GpuIsLost and kin
            return f"NVML cannot read it: {exc}"
        if self._call("nvmlDeviceGetRetiredPagesPendingStatus", handle):
            return "retired memory pages are pending (the GPU needs a reset)"
        ecc = self._call(
            "nvmlDeviceGetTotalEccErrors",
            handle,
            getattr(lib, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(lib, "NVML_VOLATILE_ECC", 0),
        )
        if ecc:
            return f"{int(ecc)} uncorrectable ECC error(s) since the driver loaded"
        rows = self._call("nvmlDeviceGetRemappedRows", handle)
        if rows is not None and int(rows[3]):
            return "a memory row remapping failed"
        return None

    # --- events ----------------------------------------------------------------------------
    def event_set(self, gpus: list[Gpu]) -> Any:
        """An NVML event set with every (parent) GPU of `gpus` registered for critical Xid and
        double-bit ECC events; None where the driver supports none of it."""
        lib = self.lib
        try:
            events = lib.nvmlEventSetCreate()
        except Exception as exc:  # noqa: BLE001 - NotSupported, ...
            log.info("gpu: no NVML events (%s): health is read at each pass only", exc)
            return None
        kinds = int(lib.nvmlEventTypeXidCriticalError | lib.nvmlEventTypeDoubleBitEccError)
        registered = 0
        for uuid in sorted({g.parent or g.uuid for g in gpus}):
            handle = self._handles[uuid]
            # only the kinds the GPU supports: asked for one it does not (double-bit ECC on a GPU
            # without ECC), NVML registers none of them (nvml.h), Xids included
            supported = self._call("nvmlDeviceGetSupportedEventTypes", handle)
            mask = kinds if supported is None else kinds & int(supported)
            if not mask:
                log.info("gpu %s: no Xid events from it (it supports none)", uuid)
                continue
            try:
                lib.nvmlDeviceRegisterEvents(handle, mask, events)
                registered += 1
            except Exception as exc:  # noqa: BLE001 - NotSupported on this GPU
                log.info("gpu %s: no Xid events from it (%s)", uuid, exc)
        if not registered:
            self.free_events(events)
            return None
        return events

    def wait_event(self, events: Any, gpus: list[Gpu], timeout_ms: int) -> XidEvent | None:
        """The next critical event within `timeout_ms`, mapped to the devices it is about (a MIG
        instance by its GPU instance id); None on a timeout. Raises what NVML raises otherwise."""
        lib = self.lib
        try:
            data = lib.nvmlEventSetWait_v2(events, timeout_ms)
        except lib.NVMLError_Timeout:
            return None
        parent = self._uuid_of(data.device)
        instance = int(data.gpuInstanceId)
        uuids = [
            g.uuid
            for g in gpus
            if (g.parent or g.uuid) == parent
            and (instance == ALL_INSTANCES or g.gpu_instance in (None, instance))
        ]
        ecc = int(data.eventType) == int(lib.nvmlEventTypeDoubleBitEccError)
        if not uuids and not any(g.parent == parent for g in gpus):
            uuids = [parent]  # a GPU with no device of ours listed: the GPU itself
        # else: a MIG instance none of ours is (made after the start): no device of ours to name
        return XidEvent(uuids, int(data.eventData), "ecc" if ecc else "xid")

    def _uuid_of(self, handle: Any) -> str:
        """The UUID of the GPU an event names: from the handles known (a GPU that fell off the bus
        answers no call any more, and its Xid 79 must still name it), else from NVML."""
        address = _address(handle)
        for uuid, known in self._handles.items():
            if _address(known) == address:
                return uuid
        return _text(self.lib.nvmlDeviceGetUUID(handle))

    def readable(self, gpu: Gpu) -> bool:
        """NVML still answers for the device (not lost)."""
        handle = self._handles.get(gpu.uuid)
        return handle is not None and self._call("nvmlDeviceGetMemoryInfo", handle) is not None

    def free_events(self, events: Any) -> None:
        if events is not None:
            self._call("nvmlEventSetFree", events)
