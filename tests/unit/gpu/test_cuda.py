"""fetcher.gpu.cuda against the real NVIDIA_REQUIRE_CUDA values of NVIDIA's CUDA images (see
cuda_images.py for where each comes from) and against libnvidia-container's grammar (src/cli/dsl.c,
src/cli/configure.c) and the toolkit's choice of variables (internal/config/image/cuda_image.go)."""

from __future__ import annotations

import pynvml
import pytest

from fetcher.gpu.cuda import (
    CUDA_VERSION,
    DriverFacts,
    GpuFacts,
    MalformedRequirement,
    Op,
    arch_from_nvml,
    brand_from_nvml,
    compare_version,
    cuda_version_from_nvml,
    environment,
    parse_requirement,
    requirements_from_env,
    unmet,
)
from tests.unit.gpu import cuda_images as images

GPU = "GPU-0b6e54a8-2f4c-7a1d-9c3e-5d8f0a1b2c3d"
GPU2 = "GPU-9f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8"


def box(
    cuda: tuple[int, int], driver: str, brand: str | None, arch: str | None = "8.0"
) -> DriverFacts:
    return DriverFacts(cuda, driver, (GpuFacts(GPU, brand, arch),))


def check(value: str, facts: DriverFacts, gpus: tuple[str, ...] = (GPU,)) -> str | None:
    return unmet(requirements_from_env([f"NVIDIA_REQUIRE_CUDA={value}"]), facts, gpus)


# --- the real strings parse into the shape NVIDIA builds them in --------------------------------

BRANDS_12_8 = "unknown grid tesla nvidia quadro quadrortx nvidiartx vapps vpc vcs vws cloudgaming"
BRANDS_12_2 = "tesla unknown nvidia nvidiartx geforce geforcertx quadro quadrortx titan titanrtx"


@pytest.mark.parametrize(
    ("value", "cuda", "branches", "brands"),
    [
        (images.CUDA_10_2, "10.2", ["418"], "tesla"),
        (images.CUDA_11_8, "11.8", ["470"], BRANDS_12_2),
        (images.CUDA_11_8_ARM64, "11.8", [], ""),
        (images.CUDA_12_2, "12.2", ["470", "525"], BRANDS_12_2),
        (images.CUDA_12_4, "12.4", ["470", "525", "535"], BRANDS_12_2),
        (images.CUDA_12_8, "12.8", ["470", "535", "550", "560", "565"], BRANDS_12_8),
        (images.CUDA_12_9, "12.9", ["535", "550", "560", "565", "570"], BRANDS_12_8),
        (images.CUDA_13_0, "13.0", ["535", "550", "565", "570", "575"], BRANDS_12_8),
    ],
)
def test_real_strings_are_cuda_or_one_brand_on_one_driver_branch(
    value: str, cuda: str, branches: list[str], brands: str
) -> None:
    req = parse_requirement("NVIDIA_REQUIRE_CUDA", value)
    first, *others = req.alternatives
    assert [str(c) for c in first] == [f"cuda>={cuda}"]
    assert len(others) == len(branches) * len(brands.split())
    seen: dict[str, list[str]] = {}
    for alt in others:
        brand, low, high = alt
        assert (brand.rule, brand.op, low.rule, low.op, high.rule, high.op) == (
            "brand",
            Op.EQUAL,
            "driver",
            Op.GREATER_EQUAL,
            "driver",
            Op.LESS,
        )
        assert int(high.value) == int(low.value) + 1  # one driver branch
        seen.setdefault(low.value, []).append(brand.value)
    assert list(seen) == branches
    assert all(sorted(b) == sorted(brands.split()) for b in seen.values())


# --- verdicts over the real strings -----------------------------------------------------------

VERDICTS = [
    # A new enough driver runs anything, whatever the brand.
    (images.CUDA_12_8, box((12, 8), "570.86.10", "GeForce"), None),
    (images.CUDA_13_0, box((13, 0), "580.65.06", "GeForceRTX"), None),
    (images.CUDA_12_2, box((12, 2), "535.104.05", "GeForce"), None),
    # Forward compatibility: an older branch the image lists, on a brand it lists.
    (images.CUDA_12_8, box((12, 2), "535.104.05", "Tesla"), None),
    (images.CUDA_12_8, box((12, 2), "535.104.05", "Nvidia"), None),  # H100s report "NVIDIA"
    (images.CUDA_12_8, box((12, 4), "550.54.15", "NvidiaRTX"), None),
    (images.CUDA_12_8, box((11, 4), "470.256.02", "GRID"), None),
    (images.CUDA_12_8, box((12, 2), "535.104.05", "Unknown"), None),
    (images.CUDA_12_4, box((12, 2), "535.104.05", "QuadroRTX"), None),
    (images.CUDA_12_2, box((12, 0), "525.60.13", "GeForce"), None),  # 12.2 still lists geforce
    (images.CUDA_12_2, box((11, 4), "470.82.01", "TITAN"), None),  # brand=titan, any case
    (images.CUDA_12_9, box((12, 8), "570.124.06", "Tesla"), None),
    (images.CUDA_13_0, box((12, 9), "575.57.08", "CloudGaming"), None),
    (images.CUDA_11_8, box((11, 4), "470.57.02", "Tesla"), None),
    (images.CUDA_10_2, box((10, 1), "418.87.01", "Tesla"), None),
    # The branch is listed, the brand is not: 12.8 and later dropped GeForce/TITAN from the list.
    (
        images.CUDA_12_8,
        box((12, 2), "535.104.05", "GeForce"),
        "needs CUDA >= 12.8; this box's driver supports CUDA 12.2 (driver 535.104.05); the image's "
        "forward-compatibility alternatives for this driver cover unknown, grid, tesla, nvidia, "
        f"quadro, quadrortx, nvidiartx, vapps, vpc, vcs, vws, cloudgaming GPUs, not GeForce ({GPU})",
    ),
    (
        images.CUDA_13_0,
        box((12, 8), "570.86.10", "TitanRTX"),
        "needs CUDA >= 13.0; this box's driver supports CUDA 12.8 (driver 570.86.10); the image's "
        "forward-compatibility alternatives for this driver cover unknown, grid, tesla, nvidia, "
        f"quadro, quadrortx, nvidiartx, vapps, vpc, vcs, vws, cloudgaming GPUs, not TitanRTX ({GPU})",
    ),
    (
        images.CUDA_12_2,
        box((11, 4), "470.82.01", "VWS"),
        "needs CUDA >= 12.2; this box's driver supports CUDA 11.4 (driver 470.82.01); the image's "
        "forward-compatibility alternatives for this driver cover tesla, unknown, nvidia, nvidiartx, "
        f"geforce, geforcertx, quadro, quadrortx, titan, titanrtx GPUs, not VWS ({GPU})",
    ),
    (
        images.CUDA_10_2,
        box((10, 1), "418.87.01", "GeForce"),
        "needs CUDA >= 10.2; this box's driver supports CUDA 10.1 (driver 418.87.01); the image's "
        f"forward-compatibility alternatives for this driver cover tesla GPUs, not GeForce ({GPU})",
    ),
    # The branch is not listed (a new-feature branch, or one the image dropped).
    (
        images.CUDA_12_8,
        box((12, 3), "545.23.08", "Tesla"),
        "needs CUDA >= 12.8; this box's driver supports CUDA 12.3 (driver 545.23.08); the image's "
        "forward-compatibility alternatives need driver branch 470, 535, 550, 560 or 565",
    ),
    (
        images.CUDA_12_8,
        box((12, 3), "545.23.08", "GeForce"),
        "needs CUDA >= 12.8; this box's driver supports CUDA 12.3 (driver 545.23.08); the image's "
        "forward-compatibility alternatives need driver branch 470, 535, 550, 560 or 565, on "
        "unknown, grid, tesla, nvidia, quadro, quadrortx, nvidiartx, vapps, vpc, vcs, vws, "
        "cloudgaming GPUs, not GeForce",
    ),
    (
        images.CUDA_12_4,
        box((12, 3), "545.23.08", "GeForce"),  # 12.4 lists geforce: only the branch is wrong
        "needs CUDA >= 12.4; this box's driver supports CUDA 12.3 (driver 545.23.08); the image's "
        "forward-compatibility alternatives need driver branch 470, 525 or 535",
    ),
    (
        images.CUDA_13_0,
        box((12, 6), "560.35.03", "Tesla"),  # 13.0 dropped 560 (12.8 and 12.9 list it)
        "needs CUDA >= 13.0; this box's driver supports CUDA 12.6 (driver 560.35.03); the image's "
        "forward-compatibility alternatives need driver branch 535, 550, 565, 570 or 575",
    ),
    (
        images.CUDA_12_9,
        box((11, 4), "470.256.02", "Tesla"),  # 12.9 dropped 470
        "needs CUDA >= 12.9; this box's driver supports CUDA 11.4 (driver 470.256.02); the image's "
        "forward-compatibility alternatives need driver branch 535, 550, 560, 565 or 570",
    ),
    (
        images.CUDA_11_8,
        box((11, 7), "515.65.01", "Tesla"),
        "needs CUDA >= 11.8; this box's driver supports CUDA 11.7 (driver 515.65.01); the image's "
        "forward-compatibility alternatives need driver branch 470",
    ),
    # No alternatives at all (the arm64 images).
    (
        images.CUDA_11_8_ARM64,
        box((11, 4), "470.57.02", "Tesla"),
        "needs CUDA >= 11.8; this box's driver supports CUDA 11.4 (driver 470.57.02)",
    ),
]


@pytest.mark.parametrize(("value", "facts", "expected"), VERDICTS)
def test_real_images_on_real_drivers_get_the_toolkits_verdict(
    value: str, facts: DriverFacts, expected: str | None
) -> None:
    assert check(value, facts) == expected


def test_the_whole_environment_of_a_real_image() -> None:
    requirements = requirements_from_env(images.ENV_12_8_BASE)
    assert [r.variable for r in requirements] == [
        "NVIDIA_REQUIRE_CUDA"
    ]  # not legacy: no CUDA_VERSION one
    assert unmet(requirements, box((12, 8), "570.86.10", "GeForce"), [GPU]) is None
    assert unmet(requirements, box((12, 2), "535.104.05", "GeForce"), [GPU]) is not None


def test_the_reason_is_one_line() -> None:
    for value, facts, expected in VERDICTS:
        reason = check(value, facts)
        assert (reason is None) == (expected is None)
        assert reason is None or ("\n" not in reason and reason.startswith("needs "))


# --- every GPU the container gets must meet it; no GPU means brand and arch hold --------------


def test_every_chosen_gpu_must_meet_it() -> None:
    facts = DriverFacts(
        (12, 2), "535.104.05", (GpuFacts(GPU, "Tesla", "8.0"), GpuFacts(GPU2, "GeForce", "8.6"))
    )
    assert check(images.CUDA_12_8, facts, (GPU,)) is None
    reason = check(images.CUDA_12_8, facts, (GPU, GPU2))
    assert reason is not None and reason.endswith(f"not GeForce ({GPU2})")
    assert check(images.CUDA_12_8, facts, (GPU2.upper().replace("GPU-", "gpu-"),)) is not None


def test_without_a_gpu_brand_and_arch_hold_as_in_libnvidia_container() -> None:
    facts = box((12, 2), "535.104.05", "GeForce")
    assert check(images.CUDA_12_8, facts, ()) is None  # brand=tesla,driver 535 holds: no device
    assert check("arch>=9.0", facts, ()) is None
    assert check("cuda>=12.8", facts, ()) == (
        "needs CUDA >= 12.8; this box's driver supports CUDA 12.2 (driver 535.104.05)"
    )


def test_what_nvml_does_not_know_holds() -> None:
    assert check(images.CUDA_12_8, box((12, 2), "535.104.05", None), (GPU,)) is None
    assert (
        check(images.CUDA_12_8, box((12, 2), "535.104.05", "GeForce"), (GPU2,)) is None
    )  # unlisted GPU
    assert check("arch>=9.0", box((12, 2), "535.104.05", "Tesla", None)) is None
    assert check("cuda>=99", DriverFacts(None, "535.104.05")) is None
    assert check("driver>=999", DriverFacts((12, 2), None)) is None


# --- arch and brand constraints, several variables together -----------------------------------


@pytest.mark.parametrize(
    ("env", "facts", "expected"),
    [
        (["NVIDIA_REQUIRE_ARCH=arch>=8.0"], box((12, 2), "535.104.05", "Tesla", "8.0"), None),
        (["NVIDIA_REQUIRE_ARCH=arch>=8.0"], box((12, 2), "535.104.05", "Tesla", "8.9"), None),
        (
            ["NVIDIA_REQUIRE_ARCH=arch>=8.0"],
            box((12, 2), "535.104.05", "Tesla", "7.5"),
            f"needs arch >= 8.0 (NVIDIA_REQUIRE_ARCH); GPU {GPU} has compute capability 7.5",
        ),
        (
            ["NVIDIA_REQUIRE_ARCH=arch=8.0 arch=9.0"],
            box((12, 2), "535.104.05", "Tesla", "9.0"),
            None,
        ),
        (["NVIDIA_REQUIRE_ARCH=arch=8.0 arch=9.0"], box((12, 2), "535.104.05", "Tesla", "9"), None),
        (
            ["NVIDIA_REQUIRE_ARCH=arch=8.0 arch=9.0"],
            box((12, 2), "535.104.05", "Tesla", "8.6"),
            f"needs arch = 8.0 or arch = 9.0 (NVIDIA_REQUIRE_ARCH); GPU {GPU} has compute "
            "capability 8.6",
        ),
        (["NVIDIA_REQUIRE_BRAND=brand!=geforce"], box((12, 2), "535.104.05", "Tesla"), None),
        (
            ["NVIDIA_REQUIRE_BRAND=brand!=geforce"],
            box((12, 2), "535.104.05", "GeForce"),
            f"needs brand != geforce (NVIDIA_REQUIRE_BRAND); GPU {GPU} is GeForce",
        ),
        (
            ["NVIDIA_REQUIRE_BRAND=brand!geforce"],  # a lone "!" is "!=" (strncmp on the run)
            box((12, 2), "535.104.05", "GeForce"),
            f"needs brand != geforce (NVIDIA_REQUIRE_BRAND); GPU {GPU} is GeForce",
        ),
        # Several variables: each must hold; NVIDIA_REQUIRE_CUDA is reported first.
        (
            [f"NVIDIA_REQUIRE_CUDA={images.CUDA_12_8}", "NVIDIA_REQUIRE_ARCH=arch>=8.0"],
            box((12, 8), "570.86.10", "GeForce", "8.6"),
            None,
        ),
        (
            [f"NVIDIA_REQUIRE_CUDA={images.CUDA_12_8}", "NVIDIA_REQUIRE_ARCH=arch>=9.0"],
            box((12, 8), "570.86.10", "GeForce", "8.6"),
            f"needs arch >= 9.0 (NVIDIA_REQUIRE_ARCH); GPU {GPU} has compute capability 8.6",
        ),
        (
            ["NVIDIA_REQUIRE_ARCH=arch>=9.0", f"NVIDIA_REQUIRE_CUDA={images.CUDA_12_8}"],
            box((12, 2), "535.104.05", "GeForce", "8.6"),
            "needs CUDA >= 12.8; this box's driver supports CUDA 12.2 (driver 535.104.05); the "
            "image's forward-compatibility alternatives for this driver cover unknown, grid, tesla, "
            "nvidia, quadro, quadrortx, nvidiartx, vapps, vpc, vcs, vws, cloudgaming GPUs, not "
            f"GeForce ({GPU})",
        ),
        (
            ["NVIDIA_REQUIRE_DRIVER=driver>=550,driver<551 driver>=570"],
            box((12, 4), "560.35.03", "Tesla"),
            "needs (driver >= 550 and driver < 551) or driver >= 570 (NVIDIA_REQUIRE_DRIVER); "
            "this box's driver 560.35.03 supports CUDA 12.4",
        ),
        (
            ["NVIDIA_REQUIRE_TOOLKIT=cuda>=12.9"],
            box((12, 4), "550.54.15", "Tesla"),
            "needs CUDA >= 12.9; this box's driver supports CUDA 12.4 (driver 550.54.15) "
            "(NVIDIA_REQUIRE_TOOLKIT)",
        ),
    ],
)
def test_arch_brand_and_several_variables_together_get_the_toolkits_verdict(
    env: list[str], facts: DriverFacts, expected: str | None
) -> None:
    assert unmet(requirements_from_env(env), facts, [GPU]) == expected


def test_cuda_comes_first_then_the_others_by_name() -> None:
    env = ["NVIDIA_REQUIRE_Z=cuda>=1", "NVIDIA_REQUIRE_A=cuda>=1", "NVIDIA_REQUIRE_CUDA=cuda>=1"]
    names = [r.variable for r in requirements_from_env(env)]
    assert names == ["NVIDIA_REQUIRE_CUDA", "NVIDIA_REQUIRE_A", "NVIDIA_REQUIRE_Z"]


# --- which variables count --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_nvidia_disable_require_true_as_go_parses_it_turns_every_check_off(value: str) -> None:
    env = [*images.ENV_12_8_BASE, "NVIDIA_REQUIRE_ARCH=arch>=99", f"NVIDIA_DISABLE_REQUIRE={value}"]
    assert requirements_from_env(env) == ()
    assert len(requirements_from_env(env[:-1])) == 2


@pytest.mark.parametrize("value", ["", "0", "false", "False", "yes", "on", "enabled", " true"])
def test_other_nvidia_disable_require_values_leave_the_checks_on(value: str) -> None:
    env = [*images.ENV_12_8_BASE, f"NVIDIA_DISABLE_REQUIRE={value}"]
    assert [r.variable for r in requirements_from_env(env)] == ["NVIDIA_REQUIRE_CUDA"]


def test_the_jobs_own_variables_override_the_images() -> None:
    assert requirements_from_env(images.ENV_12_8_BASE, {"NVIDIA_DISABLE_REQUIRE": "1"}) == ()
    (req,) = requirements_from_env(images.ENV_12_8_BASE, {"NVIDIA_REQUIRE_CUDA": "cuda>=11.0"})
    assert req.expression == "cuda>=11.0"
    assert environment(["A=1", "B=2", "C", "D=x=y"], {"B": "3"}) == {"A": "1", "B": "3", "D": "x=y"}


def test_jetpack_variables_are_not_constraints() -> None:
    # The real value "base-only" would be an invalid expression if it were evaluated.
    assert (
        requirements_from_env([images.JETPACK_HOST_MOUNTS, "NVIDIA_REQUIRE_JETPACK=csv-mounts=all"])
        == ()
    )
    with pytest.raises(MalformedRequirement):
        requirements_from_env(["NVIDIA_REQUIRE_HOST_MOUNTS=base-only"])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # dist/end-of-life/10.0/ubuntu18/base/Dockerfile:28
        (["CUDA_VERSION=10.0.130"], "cuda>=10.0"),
        (["CUDA_VERSION=11.6"], "cuda>=11.6"),
        (["CUDA_VERSION=12"], "cuda>=12.0"),
        (["CUDA_VERSION=v12.01.3-rc.1+build5"], "cuda>=12.1"),
        (["CUDA_VERSION=11.6", "NVIDIA_REQUIRE_CUDA="], "cuda>=11.6"),  # empty counts as unset
    ],
)
def test_a_legacy_image_requires_its_cuda_version(env: list[str], expected: str) -> None:
    *others, req = requirements_from_env(env)
    assert (req.variable, req.expression) == (CUDA_VERSION, expected)
    # An empty NVIDIA_REQUIRE_CUDA is still passed on (and holds): cuda_image.go GetRequirements.
    assert [(r.variable, r.alternatives) for r in others] == [
        ("NVIDIA_REQUIRE_CUDA", ()) for e in env if e == "NVIDIA_REQUIRE_CUDA="
    ]
    assert unmet([req], box((9, 2), "396.44", "Tesla"), [GPU]) == (
        f"needs CUDA >= {expected.removeprefix('cuda>=')}; this box's driver supports CUDA 9.2 "
        "(driver 396.44)"
    )
    assert unmet([req], box((12, 2), "535.104.05", "Tesla"), [GPU]) is None


def test_cuda_version_is_no_requirement_when_nvidia_require_cuda_is_set() -> None:
    reqs = requirements_from_env(["CUDA_VERSION=12.8.1", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"])
    assert [(r.variable, r.expression) for r in reqs] == [("NVIDIA_REQUIRE_CUDA", "cuda>=12.0")]
    assert requirements_from_env(["CUDA_VERSION="]) == ()


@pytest.mark.parametrize("version", ["twelve", "12.8.1.4", "12.x", "1.2.3-01", "99999999999.1", ""])
def test_a_legacy_cuda_version_that_is_not_one_is_malformed(version: str) -> None:
    env = [f"CUDA_VERSION={version}"]
    if version == "":
        assert requirements_from_env(env) == ()
        return
    with pytest.raises(MalformedRequirement) as info:
        requirements_from_env(env)
    assert info.value.variable == CUDA_VERSION


# --- the grammar --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "facts", "holds"),
    [
        ("", box((12, 2), "535.104.05", "Tesla"), True),
        ("   ", box((12, 2), "535.104.05", "Tesla"), True),
        (",,", box((12, 2), "535.104.05", "Tesla"), True),
        # Spaces are alternatives, commas are all needed; empty parts are skipped.
        ("cuda>=12.8 brand=tesla,driver>=535,driver<536", box((12, 2), "535.54.03", "Tesla"), True),
        (
            "cuda>=12.8 brand=tesla,driver>=535,driver<536",
            box((12, 2), "535.54.03", "Quadro"),
            False,
        ),
        (
            "cuda>=12.8  ,brand=tesla,,driver>=535,driver<536, ",
            box((12, 2), "535.54.03", "Tesla"),
            True,
        ),
        ("cuda>=12.8 brand=tesla,driver>=536", box((12, 2), "535.54.03", "Tesla"), False),
        ("brand=tesla,arch>=9.0 brand=nvidia", box((12, 2), "535.54.03", "Nvidia", "8.0"), True),
        ("brand=tesla,arch>=9.0 brand=nvidia", box((12, 2), "535.54.03", "Tesla", "8.0"), False),
        ("brand=tesla,arch>=9.0 brand=nvidia", box((12, 2), "535.54.03", "Tesla", "9.0"), True),
        # Names and brands compare case-insensitively; only " " separates alternatives.
        ("CUDA>=12.2 BRAND=TESLA,DRIVER>=1", box((12, 2), "535.54.03", "GeForce"), True),
        ("brand=NVIDIARTX", box((12, 2), "535.54.03", "NvidiaRTX"), True),
        # An alternative of commas only ends the evaluation with the result so far (dsl.c).
        ("cuda>=99 , cuda>=1", box((12, 2), "535.54.03", "Tesla"), False),
        ("cuda>=99 cuda>=1", box((12, 2), "535.54.03", "Tesla"), True),
        (", cuda>=99", box((12, 2), "535.54.03", "Tesla"), True),
        # An alternative that holds ends it before a later one is looked at.
        ("cuda>=12.0 cuda>=99", box((12, 2), "535.54.03", "Tesla"), True),
        # Versions: numbers one by one, not text.
        ("cuda>=12.10", box((12, 9), "575.57.08", "Tesla"), False),
        ("driver>=535.104.05", box((12, 2), "535.104.5", "Tesla"), True),
        ("driver<535.104", box((12, 2), "535.104.05", "Tesla"), False),
        ("cuda>=12.8.", box((12, 8), "570.86.10", "Tesla"), True),  # a trailing dot is skipped
    ],
)
def test_the_grammar_is_read_as_libnvidia_container_reads_it(
    value: str, facts: DriverFacts, holds: bool
) -> None:
    assert (check(value, facts) is None) is holds


def test_alternatives_after_one_of_commas_only_are_never_looked_at() -> None:
    # dsl.c stops at the "," alternative with "unsatisfied": the Tesla alternative after it does
    # not count, so the reason must not talk about it.
    value = "cuda>=99 , brand=tesla,driver>=535,driver<536"
    assert check(value, box((12, 2), "535.104.05", "Tesla")) == (
        "needs CUDA >= 99; this box's driver supports CUDA 12.2 (driver 535.104.05)"
    )


@pytest.mark.parametrize(
    ("have", "op", "want", "expected"),
    [
        ("12.2", Op.GREATER_EQUAL, "12.2", True),
        ("12.2", Op.GREATER, "12.2", False),
        ("12.2", Op.LESS_EQUAL, "12.2", True),
        ("12.2", Op.LESS, "12.8", True),
        ("12.10", Op.GREATER, "12.9", True),
        ("13.0", Op.GREATER_EQUAL, "12.9", True),
        ("8", Op.EQUAL, "8.0", True),
        ("8.0.0", Op.EQUAL, "8", True),
        ("535.0", Op.NOT_EQUAL, "535", False),
        ("12.01", Op.EQUAL, "12.1", True),
        ("12..2", Op.EQUAL, "12.2", True),
        ("12", Op.LESS, "12.0.1", True),
        ("12.0.1", Op.GREATER, "12", True),
        ("535.104.05", Op.GREATER_EQUAL, "535", True),
        ("535.104.05", Op.LESS, "536", True),
        ("535.104.05", Op.LESS, "535", False),
        ("535", Op.LESS, "535.104", True),
        ("535.104.05", Op.NOT_EQUAL, "535.104.05", False),
        ("470.57.02", Op.EQUAL, "470", False),
        ("535.104.05-grid", Op.GREATER_EQUAL, "535", None),
        ("12.2", Op.GREATER_EQUAL, ".5", None),
        ("12.2", Op.GREATER_EQUAL, str(2**64 - 1), None),
    ],
)
def test_versions_compare_as_dsl_compare_version(
    have: str, op: Op, want: str, expected: bool | None
) -> None:
    assert compare_version(have, op, want) is expected


@pytest.mark.parametrize(
    ("part", "why"),
    [
        ("cuda", "no operator"),
        (">=12.8", "no name"),
        ("cuda==12.8", "unknown operator '=='"),
        ("cuda=>12.8", "unknown operator '=>'"),
        ("cuda<>12.8", "unknown operator '<>'"),
        ("cuda>=", "no value"),
        ("toolkit>=12.8", "unknown name 'toolkit'"),
        ("brand<tesla", "= or != only"),
        ("cuda>=12.x", "digits and dots"),
        ("driver>=-1", "digits and dots"),
        ("cuda>=.5", "start with a number"),
        ("cuda>= 12.8", "no value"),  # the space splits first: "12.8" is its own part
        ("arch>=8.0\tbrand=tesla", "digits and dots"),  # a tab is not a separator
        (f"driver>={2**64}", "too large"),
    ],
)
def test_malformed_parts_raise_a_clear_error(part: str, why: str) -> None:
    value = f"cuda>=12.8 brand=tesla,{part}"
    with pytest.raises(MalformedRequirement) as info:
        requirements_from_env([f"NVIDIA_REQUIRE_CUDA={value}"])
    err = info.value
    assert why in err.why and err.variable == "NVIDIA_REQUIRE_CUDA" and err.value == value
    assert str(err).startswith("NVIDIA_REQUIRE_CUDA: ") and "\n" not in str(err)


def test_what_libnvidia_container_calls_invalid_at_evaluation_is_left_to_the_runtime() -> None:
    # A driver version that is not digits and dots, and a failing part too long for dsl.c's buffer.
    assert check("driver>=535", box((12, 2), "535.104.05-custom", "Tesla")) is None
    assert check("brand=" + "x" * 120, box((12, 2), "535.104.05", "Tesla")) is None  # 128 bytes
    assert check("brand=" + "x" * 119, box((12, 2), "535.104.05", "Tesla")) is not None


# --- NVML readings as libnvidia-container turns them into text ---------------------------------


def test_nvml_readings_become_libnvidia_containers_text() -> None:
    assert cuda_version_from_nvml(12020) == (12, 2)
    assert cuda_version_from_nvml(11080) == (11, 8)
    assert cuda_version_from_nvml(13000) == (13, 0)
    assert DriverFacts(cuda_version_from_nvml(12090), "575.57.08").cuda == "12.9"
    assert arch_from_nvml(8, 6) == "8.6"


@pytest.mark.parametrize(
    ("nvml", "name", "image_spelling"),
    [
        (pynvml.NVML_BRAND_UNKNOWN, "Unknown", "unknown"),
        (pynvml.NVML_BRAND_QUADRO, "Quadro", "quadro"),
        (pynvml.NVML_BRAND_TESLA, "Tesla", "tesla"),
        (pynvml.NVML_BRAND_NVS, "NVS", "nvs"),
        (pynvml.NVML_BRAND_GRID, "GRID", "grid"),
        (pynvml.NVML_BRAND_GEFORCE, "GeForce", "geforce"),
        (pynvml.NVML_BRAND_TITAN, "TITAN", "titan"),
        (pynvml.NVML_BRAND_NVIDIA_VAPPS, "VApps", "vapps"),
        (pynvml.NVML_BRAND_NVIDIA_VPC, "VPC", "vpc"),
        (pynvml.NVML_BRAND_NVIDIA_VCS, "VCS", "vcs"),
        (pynvml.NVML_BRAND_NVIDIA_VWS, "VWS", "vws"),
        (pynvml.NVML_BRAND_NVIDIA_CLOUD_GAMING, "CloudGaming", "cloudgaming"),
        (pynvml.NVML_BRAND_QUADRO_RTX, "QuadroRTX", "quadrortx"),
        (pynvml.NVML_BRAND_NVIDIA_RTX, "NvidiaRTX", "nvidiartx"),
        (pynvml.NVML_BRAND_NVIDIA, "Nvidia", "nvidia"),
        (pynvml.NVML_BRAND_GEFORCE_RTX, "GeForceRTX", "geforcertx"),
        (pynvml.NVML_BRAND_TITAN_RTX, "TitanRTX", "titanrtx"),
        (17, "Unknown", "unknown"),  # NVML brands newer than libnvidia-container's table
        (19, "Unknown", "unknown"),
    ],
)
def test_nvml_brands_under_libnvidia_containers_names_match_the_images_spelling(
    nvml: int, name: str, image_spelling: str
) -> None:
    assert brand_from_nvml(nvml) == name
    facts = box((12, 2), "535.104.05", brand_from_nvml(nvml))
    assert check(f"brand={image_spelling}", facts) is None
    assert check(f"brand={image_spelling}x", facts) is not None
