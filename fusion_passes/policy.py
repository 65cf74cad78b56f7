# SPDX-License-Identifier: Apache-2.0
"""The native-form speed policy: where our fused kernel beats what Inductor generates.

Inductor already fuses a plain-torch RMSNorm + quant into one generated kernel, so with
``native="auto"`` a native site is rewritten only where this table says our kernel measured at
least as fast as Inductor's on that device. ``"always"`` skips this check (tests, inspection);
``"never"`` leaves native code alone. Our custom-op form is always rewritten: Inductor cannot
fuse opaque ops.

Keys: (device kind, arch, scheme, residual), scheme as in :func:`scheme_label`. Values: the
smallest token count from which our fused op measured at least as fast as the best of Inductor's
default and max-autotune modes at every benchmarked token count and hidden size (H 4096 and
8192, and 7168 for groups). A missing key means "not measured, or never faster": not rewritten.
A site whose token count is symbolic uses its size hint.

Source: benchmarks/results/h100-2026-11-22 (BENCHMARKS.md), H100 80GB HBM3, torch 2.11.0+cu130.
"""

from __future__ import annotations

from fusion_kernels.platform import DeviceInfo
from fusion_passes.quant_key import QuantKey, Scheme

NATIVE_MODES = ("auto", "always", "never")

MEASURED_FASTER: dict[tuple[str, str, str, bool], int] = {
    ("cuda", "sm_90", "fp8_static", False): 4096,
    ("cuda", "sm_90", "fp8_static", True): 4096,
    ("cuda", "sm_90", "fp8_per_token", False): 1024,
    ("cuda", "sm_90", "fp8_per_token", True): 1024,
    ("cuda", "sm_90", "fp8_group128", False): 128,
    ("cuda", "sm_90", "fp8_group128", True): 16,
    ("cuda", "sm_90", "fp8_group64", False): 128,
    ("cuda", "sm_90", "int8_per_token", False): 1024,
    # int8_static: Inductor's kernel was faster at 16384 tokens (0.86-0.93x): never rewritten.
}


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
    min_tokens = MEASURED_FASTER.get((info.kind, info.arch or "", scheme_label(key), residual))
    if min_tokens is None:
        return False, "native_policy_not_faster"
    if tokens is None or tokens < min_tokens:
        return False, "native_policy_not_faster_at_this_size"
    return True, ""
