# SPDX-License-Identifier: Apache-2.0
"""The native-form speed policy: where our fused kernel beats what Inductor generates.

Inductor already fuses a plain-torch RMSNorm + quant into one generated kernel, so with
``native="auto"`` a native site is rewritten only where this table says our kernel measured at
least as fast as Inductor's on that device. ``"always"`` skips this check (tests, inspection);
``"never"`` leaves native code alone. Our custom-op form is always rewritten: Inductor cannot
fuse opaque ops.

Keys: (device kind, arch, scheme, residual), scheme as in :func:`scheme_label`. Values: the
token ranges ``(lo, hi)`` (inclusive; ``hi`` None: no upper bound) over which our fused op
measured at least as fast as the best of Inductor's default and max-autotune modes at every
benchmarked token count inside the range and every hidden size (H 4096 and 8192, and 7168 for
groups). A token count between two benchmarked ones inside a range takes their verdict; a range
reaching the largest benchmarked count (16384) stays open above. A missing key means "never
faster": not rewritten. A site whose token count is symbolic uses its size hint.
``benchmarks/bench_kernels.py --policy`` derives this table from runs' ``bench.json`` files.

Source: benchmarks/results/h100-2026-11-23-lane8-scatter (BENCHMARKS.md), H100 80GB HBM3, torch 2.11.0+cu130:
the worst of two runs, one with our default launches (programmatic dependent launch, which in the
benchmark's back-to-back replays overlaps consecutive calls of our op) and one with plain launches
(FUSION_KERNELS_PDL=0), since in a model the kernels around a site rarely let that overlap happen.
"""

from __future__ import annotations

from fusion_kernels.platform import DeviceInfo
from fusion_passes.quant_key import QuantKey, Scheme

NATIVE_MODES = ("auto", "always", "never")

TokenRanges = tuple[tuple[int, int | None], ...]

MEASURED_FASTER: dict[tuple[str, str, str, bool], TokenRanges] = {
    ("cuda", "sm_90", "fp8_static", False): ((1024, None),),
    ("cuda", "sm_90", "fp8_static", True): ((16, 16), (1024, None)),
    ("cuda", "sm_90", "fp8_per_token", False): ((1, None),),
    ("cuda", "sm_90", "fp8_per_token", True): ((1, 1), (1024, None)),
    ("cuda", "sm_90", "fp8_group128", False): ((1, None),),
    ("cuda", "sm_90", "fp8_group128", True): ((1, None),),
    ("cuda", "sm_90", "fp8_group64", False): ((1, None),),
    ("cuda", "sm_90", "int8_static", False): ((1024, None),),
    ("cuda", "sm_90", "int8_per_token", False): ((1, None),),
}


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
    native: str, info: DeviceInfo, key: QuantKey, residual: bool, tokens: int | None = None
) -> tuple[bool, str]:
    """Whether a native site may be rewritten, and the refusal reason if not."""
    if native == "never":
        return False, "native_policy_never"
    if native == "always":
        return True, ""
    ranges = MEASURED_FASTER.get((info.kind, info.arch or "", scheme_label(key), residual))
    if not ranges:
        return False, "native_policy_not_faster"
    if tokens is None or not _in_ranges(tokens, ranges):
        return False, "native_policy_not_faster_at_this_size"
    return True, ""
