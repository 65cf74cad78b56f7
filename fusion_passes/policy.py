# SPDX-License-Identifier: Apache-2.0
"""The native-form speed policy: where our fused kernel beats what Inductor generates.

Inductor already fuses a plain-torch RMSNorm + quant into one generated kernel, so with
``native="auto"`` a native site is rewritten only where this table says our kernel measured at
least as fast as Inductor's on that device (BENCHMARKS.md holds the measurements). ``"always"``
skips this check (tests, inspection); ``"never"`` leaves native code alone. Our custom-op form
is always rewritten: Inductor cannot fuse opaque ops.

Keys: (device kind, arch, scheme, residual) where scheme is ``QuantKey.scheme.value`` plus the
group size for group keys ("per_group128"). A missing key means "not measured": not rewritten.
"""

from __future__ import annotations

from fusion_kernels.platform import DeviceInfo
from fusion_passes.quant_key import QuantKey, Scheme

NATIVE_MODES = ("auto", "always", "never")

#: (kind, arch, scheme, residual) -> our kernel measured >= Inductor in every benchmarked
#: token count of that case (see BENCHMARKS.md). Filled from measurements only.
MEASURED_FASTER: dict[tuple[str, str, str, bool], bool] = {}


def scheme_label(key: QuantKey) -> str:
    if key.scheme is Scheme.PER_GROUP:
        return f"per_group{key.group_size}"
    return key.scheme.value


def native_rewrite_allowed(native: str, info: DeviceInfo, key: QuantKey, residual: bool) -> tuple[bool, str]:
    """Whether a native site may be rewritten, and the refusal reason if not."""
    if native == "never":
        return False, "native_policy_never"
    if native == "always":
        return True, ""
    entry = MEASURED_FASTER.get((info.kind, info.arch or "", scheme_label(key), residual))
    if entry:
        return True, ""
    return False, "native_policy_not_faster"
