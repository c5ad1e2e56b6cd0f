"""A job's GPU figures: mean utilisation and peak memory in one line, MIG without utilisation,
and a job that never touched its GPU said to be so."""

from __future__ import annotations

from fetcher.gpu.nvml import Gpu, Process, Reading
from fetcher.gpu.usage import UsageTracker

A100 = Gpu(0, "GPU-a", "NVIDIA A100-SXM4-80GB", 81920, "ampere")
MIG = Gpu(0, "MIG-a", "NVIDIA A100-SXM4-80GB", 9856, "ampere", parent="GPU-a", gpu_instance=1)


def test_mean_utilisation_and_peak_memory_in_one_line() -> None:
    usage = UsageTracker()
    usage.start("42", [A100])
    for util, mem in ((80, 4096), (94, 10444), (87, 8000)):
        usage.add("GPU-a", Reading(mem, (Process(7, mem),), util, 250.0))
    use = usage.finish("42")
    assert use is not None
    assert use.summary() == "gpu: mean 87 % util, peak 10.2 GiB of 80 GiB"
    assert not use.never_used and use.mean_util_ratio == 0.87
    assert usage.finish("42") is None


def test_a_job_that_never_touched_its_gpu_is_said_to_be_so() -> None:
    usage = UsageTracker()
    usage.start("7", [A100])
    usage.add("GPU-a", Reading(0, (), 0, 60.0))
    usage.add("GPU-a", Reading(0, (), 0, 60.0))
    use = usage.finish("7")
    assert use is not None and use.never_used
    assert use.summary() == "gpu: never used (no process on it, 0 % util, of 80 GiB)"


def test_a_mig_instance_has_peak_memory_but_no_utilisation() -> None:
    usage = UsageTracker()
    usage.start("9", [MIG])
    usage.add("MIG-a", Reading(4200, (Process(8, 4096),), None, None))
    use = usage.finish("9")
    assert use is not None
    assert use.summary() == "gpu: util unknown (MIG), peak 4.0 GiB of 10 GiB"


def test_a_job_too_short_to_sample_has_no_figures() -> None:
    usage = UsageTracker()
    usage.start("3", [A100])
    use = usage.finish("3")
    assert use is not None and not use.sampled and not use.never_used
    assert use.summary() == "gpu: no figures (the job ended before its GPU was sampled)"


def test_a_process_of_unknown_memory_counts_the_devices_use() -> None:
    usage = UsageTracker()
    usage.start("4", [A100])
    usage.add("GPU-a", Reading(12288, (Process(7, None),), 50, None))
    use = usage.finish("4")
    assert use is not None and use.peak_mb == 12288
