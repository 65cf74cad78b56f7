# SPDX-License-Identifier: Apache-2.0
"""The native-form speed policy: where our fused kernel beats what Inductor generates.

Inductor already fuses a plain-torch RMSNorm + quant into one generated kernel, so with
``native="auto"`` a native site is rewritten only where this table says our kernel measured at
least as fast as Inductor's on that device. ``"always"`` skips this check (tests, inspection);
``"never"`` leaves native code alone. Our custom-op form is always rewritten: Inductor cannot
fuse opaque ops.

Keys: (device kind, arch, device, scheme, residual), scheme as in :func:`scheme_label`. A GPU is
keyed by its arch and its name as torch reports it (an H100 and an H200 are both sm_90 but not
the same device); a CPU by the vector instruction set torch and Inductor use on it (``"AVX512"``,
``"AVX2"``: :func:`fusion_kernels.platform.cpu_isa`), device ``""``: the rows hold for every CPU
with that instruction set. Values: the token ranges ``(lo, hi)`` (inclusive; ``hi`` None: no
upper bound) over which our fused op measured at least as fast as Inductor at every benchmarked
token count inside the range and every hidden size benchmarked. A token count between two
benchmarked ones inside a range takes their verdict; a range reaching the largest benchmarked
count stays open above. A measured device without a row for a scheme: "never faster", not
rewritten. A site whose token count is symbolic uses its size hint. A site fused into the rule
op (``rms_norm_dynamic_quant``: the same row kernels, the scale rule given as parameters, e.g.
torchao's PerRow) takes the rows of its scheme (per-token or group): it is not benchmarked apart.

Devices that were not measured (:func:`basis`):

* a device of a measured arch (another sm_90 GPU, e.g. an H200 before it is measured) takes the
  worst of the measured devices of that arch: a token count is rewritten only where every one of
  them measured ours at least as fast;
* an arch that was not measured, of a kind that was (a CUDA GPU other than sm_90, a CPU with
  another instruction set), takes the worst of all measured devices of that kind, and only from
  ``UNMEASURED_ARCH_MIN_TOKENS`` tokens on: there both kernels are bound by memory bandwidth and
  ours measured at 99.6-104% of the copy bandwidth on the H100, a ratio that carries over between
  GPUs, while below it the times are launch and latency costs that differ between GPUs and
  drivers;
* a kind with no measurement (ROCm, never run on AMD hardware; XPU; ...) is never rewritten.

:func:`describe` says which of these applies to a device, in one line (for the report's
``native:`` line).

Source: benchmarks/results/h100-2026-11-23-lane8-scatter (BENCHMARKS.md), H100 80GB HBM3, torch 2.11.0+cu130:
the worst of two runs, one with our default launches (programmatic dependent launch, which in the
benchmark's back-to-back replays overlaps consecutive calls of our op) and one with plain launches
(FUSION_KERNELS_PDL=0), since in a model the kernels around a site rarely let that overlap happen.
``benchmarks/bench_kernels.py --policy`` derives the GPU rows from runs' ``bench.json`` files.
CPU: benchmarks/results/cpu-2026-12-06-avx512 and cpu-2026-12-06-avx2 (BENCHMARKS.md "CPU"), an
AMD EPYC (Zen 4), torch 2.13.0: our CPU kernels against Inductor's C++ code at H = 4096, T = 1 to
1024; ``benchmarks/bench_cpu_policy.py --policy`` derives the CPU rows.
"""

from __future__ import annotations

import dataclasses

from fusion_kernels import platform
from fusion_kernels.platform import DeviceInfo
from fusion_passes.quant_key import QuantKey, Scheme

NATIVE_MODES = ("auto", "always", "never")

TokenRanges = tuple[tuple[int, int | None], ...]
Platform = tuple[str, str, str]  # (kind, arch, device)

#: The devices measured, with the record each one's rows come from.
MEASURED_DEVICES: dict[Platform, str] = {
    ("cuda", "sm_90", "NVIDIA H100 80GB HBM3"): "benchmarks/results/h100-2026-11-23-lane8-scatter",
    ("cpu", "AVX512", ""): "benchmarks/results/cpu-2026-12-06-avx512",
    ("cpu", "AVX2", ""): "benchmarks/results/cpu-2026-12-06-avx2",
}

_H100 = ("cuda", "sm_90", "NVIDIA H100 80GB HBM3")

MEASURED_FASTER: dict[tuple[str, str, str, str, bool], TokenRanges] = {
    (*_H100, "fp8_static", False): ((1024, None),),
    (*_H100, "fp8_static", True): ((16, 16), (1024, None)),
    (*_H100, "fp8_per_token", False): ((1, None),),
    (*_H100, "fp8_per_token", True): ((1, 1), (1024, None)),
    (*_H100, "fp8_group128", False): ((1, None),),
    (*_H100, "fp8_group128", True): ((1, None),),
    (*_H100, "fp8_group64", False): ((1, None),),
    (*_H100, "int8_static", False): ((1024, None),),
    (*_H100, "int8_per_token", False): ((1, None),),
    # Per-tensor FP8 and the microscaling formats (label "mxfp8", ...): no rows. Their cells
    # (BENCHMARKS.md "New schemes") were measured once, with default launches only; a row comes
    # from a record's default and plain-launch runs (tests/passes/test_native.py derives the table
    # from the records), so "auto" leaves these sites to Inductor until such a record exists.
    # CPU (AVX512 and AVX2): ours was never at least as fast as Inductor's C++ (BENCHMARKS.md
    # "CPU"): no rows, so "auto" leaves native code to Inductor there.
}

#: The unmeasured-arch rule's lower bound (see the module docstring).
UNMEASURED_ARCH_MIN_TOKENS = 1024


@dataclasses.dataclass(frozen=True)
class Basis:
    """What decides for one device: the measured devices whose worst verdict counts, from which
    token count on, and the line the report shows."""

    platform: Platform
    devices: tuple[Platform, ...]  # empty: nothing is rewritten
    min_tokens: int
    why: str


def platform_key(info: DeviceInfo) -> Platform:
    """(kind, arch, device) of a device as the table keys it."""
    if info.kind == "cpu":
        return ("cpu", info.isa or platform.cpu_isa(), "")
    return (info.kind, info.arch or "", info.name or "")


def basis(info: DeviceInfo) -> Basis:
    """Which measurements decide for ``info`` (the rules in the module docstring)."""
    key = platform_key(info)
    kind, arch, _ = key
    what = "CPU" if kind == "cpu" else kind
    if key in MEASURED_DEVICES:
        return Basis(key, (key,), 1, f"measured ({MEASURED_DEVICES[key]})")
    same_arch = tuple(p for p in MEASURED_DEVICES if p[:2] == (kind, arch))
    if same_arch:
        names = ", ".join(p[2] for p in same_arch)
        return Basis(
            key, same_arch, 1, f"this device was not measured: the worst of the measured {arch} devices ({names})"
        )
    same_kind = tuple(p for p in MEASURED_DEVICES if p[0] == kind)
    if same_kind:
        names = ", ".join(" ".join(x for x in p[1:] if x) for p in same_kind)
        return Basis(
            key, same_kind, UNMEASURED_ARCH_MIN_TOKENS,
            f"{arch or 'this arch'} was not measured: the worst of the measured {what} devices ({names}), "
            f"from {UNMEASURED_ARCH_MIN_TOKENS} tokens on",
        )  # fmt: skip
    return Basis(key, (), 1, f"no {what} device was measured: native sites are left to Inductor")


def ranges_for(b: Basis, scheme: str, residual: bool) -> TokenRanges:
    """The token ranges where every device of ``b`` measured ours at least as fast, from
    ``b.min_tokens`` on."""
    if not b.devices:
        return ()
    ranges: TokenRanges = ((b.min_tokens, None),)
    for dev in b.devices:
        ranges = _intersect(ranges, MEASURED_FASTER.get((*dev, scheme, residual), ()))
    return ranges


def _intersect(a: TokenRanges, b: TokenRanges) -> TokenRanges:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo = max(lo1, lo2)
            hi = hi1 if hi2 is None else hi2 if hi1 is None else min(hi1, hi2)
            if hi is None or lo <= hi:
                out.append((lo, hi))
    return tuple(sorted(out))


def ranges_from_speedups(speedups: dict[int, float], at_least: float = 1.0) -> TokenRanges:
    """Token ranges from {benchmarked token count: worst speedup over hidden sizes}."""
    counts = sorted(speedups)
    ranges: list[tuple[int, int | None]] = []
    start = None
    for i, t in enumerate(counts):
        if speedups[t] >= at_least:
            start = t if start is None else start
            if i == len(counts) - 1:
                ranges.append((start, None))
        elif start is not None:
            ranges.append((start, counts[i - 1]))
            start = None
    return tuple(ranges)


def _in_ranges(tokens: int, ranges: TokenRanges) -> bool:
    return any(lo <= tokens and (hi is None or tokens <= hi) for lo, hi in ranges)


def scheme_label(key: QuantKey) -> str:
    family = "fp8" if key.is_fp8 else "int8"
    if key.scheme is Scheme.PER_GROUP:
        return f"{family}_group{key.group_size}"
    return f"{family}_{key.scheme.value}"


def native_rewrite_allowed(
    native: str, info: DeviceInfo, key: QuantKey | str, residual: bool, tokens: int | None = None
) -> tuple[bool, str]:
    """Whether a native site may be rewritten, and the refusal reason if not. ``key``: the site's
    quantizer, or a scheme label (the microscaling formats: ``"mxfp8"``, ``"nvfp4"``, ...)."""
    if native == "never":
        return False, "native_policy_never"
    if native == "always":
        return True, ""
    ranges = ranges_for(basis(info), key if isinstance(key, str) else scheme_label(key), residual)
    if not ranges:
        return False, "native_policy_not_faster"
    if tokens is None or not _in_ranges(tokens, ranges):
        return False, "native_policy_not_faster_at_this_size"
    return True, ""


def describe(native: str, device: str | None = None) -> str:
    """The report's ``native:`` line: the mode and, for "auto", what decides on ``device``
    (default: the current accelerator, else the CPU)."""
    if native == "always":
        return "always (every supported native site is rewritten; no speed check)"
    if native == "never":
        return "never (plain-torch code is left to Inductor)"
    b = basis(platform.device_info(device))
    kind, arch, name = b.platform
    where = " ".join(x for x in (kind, arch, name) if x)
    why = b.why
    if b.devices and not any(k[:3] in b.devices for k in MEASURED_FASTER):
        why += "; ours was never at least as fast there: native sites are left to Inductor"
    return f"{native}: {where}: {why}"
