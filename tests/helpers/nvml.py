"""A table-driven stand-in for pynvml (GPU-less boxes, four A100s); the faithful fake with MIG,
events and failures is `tests.fakes.nvml`."""

from __future__ import annotations

from typing import Any


class FakeNvml:
    """A table-driven stand-in for pynvml: `gpus` is a list of (uuid, name, memory_mb, arch int)."""

    class NVMLError(Exception):
        pass

    def __init__(
        self, gpus: list[tuple[str, str, int, int]] | None = None, fail_init: bool = False
    ) -> None:
        self.gpus = gpus or []
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.gpus[h][0]

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][1].encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        total = self.gpus[h][2] * 1024 * 1024  # pynvml's c_nvmlMemory_t: total, free, used
        return type("Mem", (), {"total": total, "free": total, "used": 0})()

    def nvmlDeviceGetArchitecture(self, h: int) -> int:
        return self.gpus[h][3]


def four_gpus() -> FakeNvml:
    """Four A100-SXM4-40GB (architecture 7: ampere) with distinct UUIDs."""
    return FakeNvml(
        [
            (f"GPU-{i}0000000-aaaa-bbbb-cccc-{i:012d}", "NVIDIA A100-SXM4-40GB", 40960, 7)
            for i in range(4)
        ]
    )
