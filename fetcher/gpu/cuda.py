"""A CUDA image's `NVIDIA_REQUIRE_*` constraints against this box's driver, before the container
starts: an image the driver cannot run is handed back with one clear line instead of the opaque
`nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update your
driver ...` at container start.

Pure: no NVML, no engine. The caller reads the driver (NVML) and the image (`docker inspect`'s
`Config.Env`) and passes them in:

    requirements = requirements_from_env(image.attrs["Config"]["Env"], spec.app.env)
    reason = unmet(requirements, facts, gpu_uuids)   # None: the box can run it

What this mirrors, and where it was read
----------------------------------------
Which variables (NVIDIA/nvidia-container-toolkit, internal/config/image/cuda_image.go,
`CUDA.GetRequirements`, `CUDA.HasDisableRequire`, `CUDA.IsLegacy`; builder.go `WithEnv`):
- every variable whose name starts with `NVIDIA_REQUIRE_` is one requirement, except those starting
  with `NVIDIA_REQUIRE_JETPACK` (Jetson mount options, not constraints);
- `NVIDIA_DISABLE_REQUIRE` switches all of them off when Go's `strconv.ParseBool` reads it as true
  (1, t, T, TRUE, true, True; anything else, "yes" included, leaves the checks on);
- a "legacy" image (`CUDA_VERSION` set, `NVIDIA_REQUIRE_CUDA` unset or empty) requires
  `cuda>=MAJOR.MINOR` of its `CUDA_VERSION` (parsed as Masterminds/semver's loose versions).
The hook (cmd/nvidia-container-runtime-hook) reads the container's final environment, so the
job's own variables override the image's (Docker merges them by name); it passes each requirement
to `nvidia-container-cli configure --require=...`.

How one requirement is evaluated (NVIDIA/libnvidia-container, src/cli/dsl.c `dsl_evaluate`,
`evaluate_rule`, `dsl_compare_version`, `dsl_compare_string`; src/cli/configure.c `rules`,
`check_cuda_version`, `check_driver_version`, `check_device_arch`, `check_device_brand`,
`configure_command`):
- space-separated parts are alternatives (OR), comma-separated parts within one are all needed
  (AND); empty parts are skipped. Evaluation is lazy: the first alternative that holds ends it. An
  alternative made only of commas ends it too, with the previous result (`and_expr == NULL`).
- a part is NAME OPERATOR VALUE: NAME is everything before the first of `<>=!` (cuda, driver, arch
  or brand, any case), OPERATOR the whole run of those characters, which must be the start of
  `=`, `!=`, `<`, `<=`, `>`, `>=` (tried in that order, so a lone `!` means `!=`), VALUE the rest
  (not empty). Anything else is "invalid expression" and fails the container.
- cuda: the driver's CUDA version, "%u.%u" of NVML's nvmlSystemGetCudaDriverVersion
  (src/driver.c: major = v / 1000, minor = v % 100 / 10); driver: nvmlSystemGetDriverVersion
  ("535.104.05"); arch: the GPU's compute capability "%u.%u"; brand: the GPU's NVML brand under
  libnvidia-container's own names (src/driver.c `driver_get_device_brand_1_svc`, see
  `brand_from_nvml`). brand compares case-insensitively with = and != only; the others compare
  as versions: digits and dots only, number by number, trailing zero parts ignored ("8" = "8.0").
- every requirement must hold for every GPU the container gets (MIG devices: their parent), and
  when it gets none, once with no GPU, where arch and brand hold by default.
"CUDA compat" (src/cli/compat_mode.c, `--cuda-compat-mode`) changes which forward-compatibility
libraries are mounted, never this check: the `brand=...,driver>=X,driver<Y` alternatives of
NVIDIA's images are how an image says "an older driver branch will do, through the cuda-compat
package I carry, on these (data-centre and workstation) brands".

Not mirrored: the toolkit's CDI and CSV (Jetson) modes check nothing or differently, and
`disable-require = true` in the host's config.toml turns the check off for every container; on
such a box `unmet` may name a job the runtime would have started (the job still needs a driver the
image can use).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from fetcher.errors import FetcherError

REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
REQUIRE_CUDA = "NVIDIA_REQUIRE_CUDA"
JETPACK_PREFIX = "NVIDIA_REQUIRE_JETPACK"  # excluded: Jetson mount options, not constraints
DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
CUDA_VERSION = "CUDA_VERSION"

# Go's strconv.ParseBool: these are true; every other value (its errors included) is false.
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})

# libnvidia-container src/driver.c, driver_get_device_brand_1_svc: NVML brand -> the name `brand=`
# is compared with (case-insensitively). Any other value (0, and newer NVML brands) is "Unknown".
_NVML_BRANDS = {
    1: "Quadro",  # NVML_BRAND_QUADRO
    2: "Tesla",  # NVML_BRAND_TESLA
    3: "NVS",  # NVML_BRAND_NVS
    4: "GRID",  # NVML_BRAND_GRID
    5: "GeForce",  # NVML_BRAND_GEFORCE
    6: "TITAN",  # NVML_BRAND_TITAN
    7: "VApps",  # NVML_BRAND_NVIDIA_VAPPS
    8: "VPC",  # NVML_BRAND_NVIDIA_VPC
    9: "VCS",  # NVML_BRAND_NVIDIA_VCS
    10: "VWS",  # NVML_BRAND_NVIDIA_VWS
    11: "CloudGaming",  # NVML_BRAND_NVIDIA_CLOUD_GAMING
    12: "QuadroRTX",  # NVML_BRAND_QUADRO_RTX
    13: "NvidiaRTX",  # NVML_BRAND_NVIDIA_RTX
    14: "Nvidia",  # NVML_BRAND_NVIDIA
    15: "GeForceRTX",  # NVML_BRAND_GEFORCE_RTX
    16: "TitanRTX",  # NVML_BRAND_TITAN_RTX
}
UNKNOWN_BRAND = "Unknown"

_OPERATOR_CHARS = "<>=!"
_UINTMAX = 2**64 - 1  # strtoumax's overflow answer: dsl_compare_version calls it invalid
_EXPR_MAX = 128  # dsl.c: a failing part whose "name op value" is this long is "invalid expression"

# Masterminds/semver v3 looseSemVerRegex (NewVersion with CoerceNewVersion), for CUDA_VERSION.
_LOOSE_SEMVER = re.compile(
    r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
_SEMVER_MAX_LEN = 256

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # as strcasecmp


class MalformedRequirement(FetcherError, ValueError):
    """A requirement libnvidia-container may reject as "invalid expression" (or the toolkit may
    refuse to read): an unknown name, a bad operator, a value that is not a version, a
    `CUDA_VERSION` that is not one.

    Then do not refuse the job: the runtime decides. libnvidia-container evaluates lazily (an
    alternative that holds ends the evaluation, so a broken part after it is never looked at and
    the image starts), the toolkit on the box may know names this module does not, and an image
    that is really broken fails at start with the runtime's own error, as it did before this check.
    Refusing here would hand back jobs the box can run.
    """

    def __init__(self, variable: str, value: str, part: str, why: str) -> None:
        super().__init__(f"{variable}: {part!r}: {why}")
        self.variable = variable
        self.value = value
        self.part = part
        self.why = why


class Op(Enum):
    """dsl.c's comparators, in the order `evaluate_rule` tries them."""

    EQUAL = "="
    NOT_EQUAL = "!="
    LESS = "<"
    LESS_EQUAL = "<="
    GREATER = ">"
    GREATER_EQUAL = ">="


_VERSION_RULES = frozenset({"cuda", "driver", "arch"})
_RULES = _VERSION_RULES | {"brand"}


@dataclass(frozen=True)
class Condition:
    """One comma-separated part: `rule` (lower case) `op` `value`."""

    rule: str
    op: Op
    value: str

    def __str__(self) -> str:
        return f"{self.rule}{self.op.value}{self.value}"


@dataclass(frozen=True)
class Requirement:
    """One requirement: `variable` (or CUDA_VERSION for a legacy image) and its value, parsed.

    `alternatives`: the space-separated parts that are not empty, each as its comma-separated
    conditions; an alternative of commas only is kept as () because it ends the evaluation.
    """

    variable: str
    expression: str
    alternatives: tuple[tuple[Condition, ...], ...]


@dataclass(frozen=True)
class GpuFacts:
    """One GPU as libnvidia-container sees it. None: not known (the check then holds, as it does
    in libnvidia-container when a GPU has no brand or arch)."""

    uuid: str
    brand: str | None = None  # brand_from_nvml(nvmlDeviceGetBrand(handle))
    arch: str | None = None  # arch_from_nvml(*nvmlDeviceGetCudaComputeCapability(handle))


@dataclass(frozen=True)
class DriverFacts:
    """This box's driver and GPUs. None: not known (checks on it hold, as in libnvidia-container)."""

    cuda_version: tuple[int, int] | None  # cuda_version_from_nvml(nvmlSystemGetCudaDriverVersion())
    driver_version: str | None  # nvmlSystemGetDriverVersion(), e.g. "535.104.05"
    gpus: tuple[GpuFacts, ...] = ()

    @property
    def cuda(self) -> str | None:
        """The CUDA version as libnvidia-container writes it ("12.2")."""
        if self.cuda_version is None:
            return None
        major, minor = self.cuda_version
        return f"{major}.{minor}"

    def gpu(self, uuid: str) -> GpuFacts:
        """The GPU with this UUID (case-insensitive); one with nothing known if NVML did not list it."""
        for gpu in self.gpus:
            if gpu.uuid.lower() == uuid.lower():
                return gpu
        return GpuFacts(uuid)


def cuda_version_from_nvml(version: int) -> tuple[int, int]:
    """NVML's CUDA driver version (12020) as libnvidia-container reads it: (12, 2).

    src/driver.c `driver_get_cuda_version_1_svc`: major = v / 1000, minor = v % 100 / 10.
    """
    return version // 1000, version % 100 // 10


def brand_from_nvml(brand: int) -> str:
    """NVML's brand enum (nvmlDeviceGetBrand) under libnvidia-container's name for it."""
    return _NVML_BRANDS.get(brand, UNKNOWN_BRAND)


def arch_from_nvml(major: int, minor: int) -> str:
    """nvmlDeviceGetCudaComputeCapability's (major, minor) as libnvidia-container writes it."""
    return f"{major}.{minor}"


# --- reading the environment ----------------------------------------------------------------


def environment(env: Iterable[str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """`Config.Env` ("KEY=VALUE") with the job's own variables laid over it, as Docker merges them.

    An entry without "=" is skipped: an image's `Config.Env` never holds one, and in a container's
    create call Docker reads it as "unset", so it never reaches the runtime's environment.
    """
    merged: dict[str, str] = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep:
            merged[key] = value
    merged.update(overrides or {})
    return merged


def requirements_from_env(
    env: Iterable[str], overrides: Mapping[str, str] | None = None
) -> tuple[Requirement, ...]:
    """The requirements the NVIDIA runtime will check for a container of this image, parsed.

    `env`: the image's `Config.Env`; `overrides`: the variables the job sets on its container.
    () when there is none, or NVIDIA_DISABLE_REQUIRE is true. NVIDIA_REQUIRE_CUDA comes first, the
    other NVIDIA_REQUIRE_* by name (the toolkit passes them in Go's random map order), the legacy
    CUDA_VERSION one last. Raises MalformedRequirement (see there: do not refuse the job then).
    """
    merged = environment(env, overrides)
    if merged.get(DISABLE_REQUIRE) in _GO_TRUE:
        return ()
    names = sorted(
        (n for n in merged if n.startswith(REQUIRE_PREFIX) and not n.startswith(JETPACK_PREFIX)),
        key=lambda n: (n != REQUIRE_CUDA, n),
    )
    requirements = [parse_requirement(n, merged[n]) for n in names]
    if merged.get(CUDA_VERSION) and not merged.get(REQUIRE_CUDA):
        version = _legacy_major_minor(merged[CUDA_VERSION])
        requirements.append(parse_requirement(CUDA_VERSION, f"cuda>={version}"))
    return tuple(requirements)


def _legacy_major_minor(version: str) -> str:
    """cuda_image.go `legacyVersion`: CUDA_VERSION as semver.NewVersion reads it, as "MAJOR.MINOR"."""

    def bad(why: str) -> MalformedRequirement:
        return MalformedRequirement(CUDA_VERSION, version, version, why)

    m = _LOOSE_SEMVER.fullmatch(version) if len(version) <= _SEMVER_MAX_LEN else None
    if m is None:
        raise bad("not a version (the legacy requirement is cuda>=MAJOR.MINOR of it)")
    if m.group(5) is not None:  # semver's validatePrerelease: numeric parts without leading 0
        for part in m.group(5).split("."):
            if part.isdigit() and len(part) > 1 and part.startswith("0"):
                raise bad("its pre-release part has a number with a leading zero")
    major = int(m.group(1))
    minor = int(m.group(2)[1:]) if m.group(2) else 0
    if major >= 2**32 or minor >= 2**32:  # parseMajorMinorVersion: ParseUint(..., 10, 32)
        raise bad("its major or minor version does not fit in 32 bits")
    return f"{major}.{minor}"


def parse_requirement(variable: str, expression: str) -> Requirement:
    """One requirement value, split as dsl_evaluate splits it and checked as evaluate_rule checks
    each part. Raises MalformedRequirement for a part libnvidia-container would call invalid."""
    alternatives: list[tuple[Condition, ...]] = []
    for alternative in expression.split(" "):
        if alternative == "":
            continue
        parts = [p for p in alternative.split(",") if p != ""]
        alternatives.append(tuple(_parse_condition(variable, expression, p) for p in parts))
    return Requirement(variable, expression, tuple(alternatives))


def _parse_condition(variable: str, expression: str, part: str) -> Condition:
    def bad(why: str) -> MalformedRequirement:
        return MalformedRequirement(variable, expression, part, why)

    start = next((i for i, c in enumerate(part) if c in _OPERATOR_CHARS), len(part))
    if start == 0:
        raise bad("no name before the operator")
    end = start
    while end < len(part) and part[end] in _OPERATOR_CHARS:
        end += 1
    if end == start:
        raise bad("no operator (=, !=, <, <=, >, >=)")
    run, value = part[start:end], part[end:]
    # strncmp(ptr, op, n): the run must be the start of an operator, tried in dsl.c's order.
    op = next((o for o in Op if o.value.startswith(run)), None)
    if op is None:
        raise bad(f"unknown operator {run!r}")
    if value == "":
        raise bad("no value after the operator")
    rule = _fold(part[:start])
    if rule not in _RULES:
        raise bad(f"unknown name {part[:start]!r} (cuda, driver, arch and brand are known)")
    if rule == "brand" and op not in (Op.EQUAL, Op.NOT_EQUAL):
        raise bad("a brand compares with = or != only")
    if rule in _VERSION_RULES:
        why = _version_problem(value)
        if why:
            raise bad(why)
    return Condition(rule, op, value)


def _version_problem(value: str) -> str | None:
    """Why dsl_compare_version would answer -1 for this required version, or None."""
    if any(c not in "0123456789." for c in value):
        return "a version must be digits and dots only"
    if value.startswith("."):
        return "a version must start with a number"
    if any(int(n) >= _UINTMAX for n in value.split(".") if n):
        return "a version number is too large"
    return None


# --- evaluating -----------------------------------------------------------------------------


def compare_version(have: str, op: Op, want: str) -> bool | None:
    """`have op want` as dsl_compare_version answers it: numbers compared one by one, dots as
    separators, trailing zero parts ignored; None where it answers -1 (invalid)."""
    for v in (have, want):
        if any(c not in "0123456789." for c in v):
            return None
    i = j = 0
    while i < len(have) and j < len(want):
        m1 = re.match(r"[0-9]+", have[i:])
        m2 = re.match(r"[0-9]+", want[j:])
        if m1 is None or m2 is None:
            return None
        n1, n2 = int(m1.group()), int(m2.group())
        if n1 >= _UINTMAX or n2 >= _UINTMAX:
            return None
        if n1 != n2:
            if op is Op.EQUAL:
                return False
            if op is Op.NOT_EQUAL:
                return True
            if op in (Op.LESS, Op.LESS_EQUAL):
                return n1 < n2
            return n1 > n2
        i += m1.end()
        j += m2.end()
        while i < len(have) and have[i] == ".":
            i += 1
        while j < len(want) and want[j] == ".":
            j += 1
    rest1 = have[i:].lstrip(".0")
    rest2 = want[j:].lstrip(".0")
    if op is Op.NOT_EQUAL:
        return rest1 != "" or rest2 != ""
    if op in (Op.EQUAL, Op.LESS_EQUAL, Op.GREATER_EQUAL):
        if rest1 == "" and rest2 == "":
            return True
        if op is Op.EQUAL:
            return False
    if op in (Op.LESS, Op.LESS_EQUAL):
        return rest1 == "" and rest2 != ""
    return rest1 != "" and rest2 == ""


def _holds(c: Condition, facts: DriverFacts, gpu: GpuFacts | None) -> bool | None:
    """configure.c's check_* for one condition: True, False, or None (invalid expression)."""
    if c.rule == "brand":
        if gpu is None or gpu.brand is None:
            return True
        same = _fold(gpu.brand) == _fold(c.value)
        return same if c.op is Op.EQUAL else not same
    have = {
        "cuda": facts.cuda,
        "driver": facts.driver_version,
        "arch": None if gpu is None else gpu.arch,
    }[c.rule]
    if have is None:
        return True
    return compare_version(have, c.op, c.value)


def _evaluate(req: Requirement, facts: DriverFacts, gpu: GpuFacts | None) -> bool | None:
    """dsl_evaluate for one GPU (None: the container gets none). None: invalid expression."""
    ret = True
    for alternative in req.alternatives:
        for c in alternative:
            result = _holds(c, facts, gpu)
            if result is None:
                return None
            if not result and len(f"{c.rule} {c.op.value} {c.value}") >= _EXPR_MAX:
                return None  # evaluate_rule's snprintf into its 128-byte buffer fails
            ret = result
            if not ret:
                break
        else:
            return ret
    return ret


def unmet(
    requirements: Sequence[Requirement], facts: DriverFacts, gpus_chosen: Sequence[str]
) -> str | None:
    """None when the NVIDIA runtime will let a container of the image start with these GPUs
    (`gpus_chosen`: the UUIDs it gets; empty: none); else one line naming what the image needs and
    what the box has, e.g. "needs CUDA >= 12.8; this box's driver supports CUDA 12.2 (driver
    535.104.05)". A requirement the evaluation calls invalid (a driver version that is not one) is
    left to the runtime."""
    gpus: list[GpuFacts | None] = [facts.gpu(uuid) for uuid in gpus_chosen] or [None]
    for gpu in gpus:
        for req in requirements:
            if _evaluate(req, facts, gpu) is False:
                return _explain(req, facts, gpu)
    return None


# --- the one line -----------------------------------------------------------------------------

_SHOWN = {"cuda": "CUDA", "driver": "driver", "arch": "arch", "brand": "brand"}


_ALTERNATIVES_SHOWN = 3  # a requirement with more alternatives is summed up after its first


def _show(c: Condition) -> str:
    return f"{_SHOWN[c.rule]} {c.op.value} {c.value}"


def _show_all(alternative: tuple[Condition, ...], parens: bool) -> str:
    text = " and ".join(_show(c) for c in alternative)
    return f"({text})" if parens and len(alternative) > 1 else text


def _considered(req: Requirement) -> list[tuple[Condition, ...]]:
    """The alternatives dsl_evaluate looks at: up to the first one made of commas only."""
    out: list[tuple[Condition, ...]] = []
    for alternative in req.alternatives:
        if not alternative:
            break
        out.append(alternative)
    return out


def _explain(req: Requirement, facts: DriverFacts, gpu: GpuFacts | None) -> str:
    considered = _considered(req)
    first, others = (considered[0], considered[1:]) if considered else ((), [])
    if len(first) == 1 and first[0].rule == "cuda" and first[0].op is Op.GREATER_EQUAL:
        line = f"needs CUDA >= {first[0].value}; this box's driver supports CUDA {facts.cuda}"
        if facts.driver_version:
            line += f" (driver {facts.driver_version})"
        if req.variable not in (REQUIRE_CUDA, CUDA_VERSION):
            line += f" ({req.variable})"
        return line + _why_no_other(others, facts, gpu)
    if not considered:
        needs = req.expression
    elif len(considered) <= _ALTERNATIVES_SHOWN:
        needs = " or ".join(_show_all(alt, parens=len(considered) > 1) for alt in considered)
    else:
        needs = f"{_show_all(first, parens=True)} or one of {len(others)} other alternatives"
    return f"needs {needs} ({req.variable}); {_what_box_has(req, facts, gpu)}"


def _why_no_other(
    others: list[tuple[Condition, ...]], facts: DriverFacts, gpu: GpuFacts | None
) -> str:
    """Why none of the other alternatives holds, worded for NVIDIA's `brand=B,driver>=X,driver<Y`
    ones (forward compatibility): this driver's branch is there but not for this GPU's brand, or
    the branch is not there at all."""
    if not others:
        return ""
    failing = [[c for c in alt if _holds(c, facts, gpu) is False] for alt in others]
    # The alternatives whose driver (and CUDA) conditions hold: only brand or arch stood in the way.
    driver_ok = [
        (alt, fails)
        for alt, fails in zip(others, failing, strict=True)
        if all(c.rule in ("brand", "arch") for c in fails)
    ]
    brand = None if gpu is None else gpu.brand
    if (
        gpu is not None
        and gpu.brand is not None
        and driver_ok
        and all(fails and all(c.rule == "brand" for c in fails) for _, fails in driver_ok)
    ):
        brands = _brands(alt for alt, _ in driver_ok)
        if brands:
            return (
                f"; the image's forward-compatibility alternatives for this driver cover "
                f"{', '.join(brands)} GPUs, not {gpu.brand} ({gpu.uuid})"
            )
    if not driver_ok:
        branches = _unique(
            c.value
            for alt in others
            for c in alt
            if c.rule == "driver" and c.op is Op.GREATER_EQUAL
        )
        if branches:
            listed = (
                branches[0]
                if len(branches) == 1
                else f"{', '.join(branches[:-1])} or {branches[-1]}"
            )
            line = f"; the image's forward-compatibility alternatives need driver branch {listed}"
            brands = _brands(others)
            if brand is not None and brands and _fold(brand) not in {_fold(b) for b in brands}:
                line += f", on {', '.join(brands)} GPUs, not {brand}"
            return line
    return f"; none of the image's {len(others)} other alternatives holds either"


def _brands(alternatives: Iterable[tuple[Condition, ...]]) -> list[str]:
    return _unique(
        c.value for alt in alternatives for c in alt if c.rule == "brand" and c.op is Op.EQUAL
    )


def _what_box_has(req: Requirement, facts: DriverFacts, gpu: GpuFacts | None) -> str:
    rules = {c.rule for alt in req.alternatives for c in alt}
    parts = []
    if rules & {"cuda", "driver"}:
        driver = f" {facts.driver_version}" if facts.driver_version else ""
        cuda = f" supports CUDA {facts.cuda}" if facts.cuda else ""
        parts.append(f"this box's driver{driver}{cuda}")
    if gpu is not None and rules & {"brand", "arch"}:
        about = []
        if "brand" in rules and gpu.brand:
            about.append(f"is {gpu.brand}")
        if "arch" in rules and gpu.arch:
            about.append(f"has compute capability {gpu.arch}")
        if about:
            parts.append(f"GPU {gpu.uuid} {' and '.join(about)}")
    return "; ".join(parts) or "this box does not meet it"


def _fold(s: str) -> str:
    return s.translate(_ASCII_LOWER)


def _unique(values: Iterable[str]) -> list[str]:
    """The values in first-seen order, each once (brand names compared as strcasecmp does)."""
    seen: dict[str, str] = {}
    for v in values:
        seen.setdefault(_fold(v), v)
    return list(seen.values())
