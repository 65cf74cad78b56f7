# SPDX-License-Identifier: Apache-2.0
"""Which fused op reproduces a recognised quantizer, with which arguments.

A quantizer whose scale rule is one of the fixed conventions of the catalogue's ops (vLLM's
per-token floor ``1 / (qmax * 512)``; the per-token-group absmax floor ``1e-10``) maps onto that
op. Any other rule, and every per-tensor scale (one absmax for the whole tensor: the rule ops'
``group_size = -1``), maps onto the rule ops (``rms_norm_dynamic_quant`` and its residual form),
which take the rule's parameters: the floor (on the absmax or on the scale, or none), the
divisor, the dtype the scale is rounded to, UE8M0 and a replacement for zero scales. Without
them, such a site is refused with the rule in the reason.
"""

from __future__ import annotations

import dataclasses

import torch

from fusion_kernels.reference import GROUP_ABSMAX_FLOOR, per_token_min_scale
from fusion_passes import registry as reg
from fusion_passes.patterns import Refusal
from fusion_passes.patterns.native.quant import QuantMatch, ScaleRule
from fusion_passes.quant_key import GROUP_SIZES, QuantKey, Scheme

RULE_OPS = reg.RULE_FUSED_OP_NAMES


def _legacy(form_key: QuantKey):
    return lambda residual: [reg.fused_op_name(form_key, residual)]


def _rule(residual: bool) -> list[str]:
    return [RULE_OPS[residual]]


#: Quantizer forms (the patterns and reports use these names) -> the ops that can serve them.
FORMS = {
    "fp8_static": _legacy(QuantKey(torch.float8_e4m3fn, Scheme.STATIC)),
    "fp8_per_token": lambda r: _legacy(QuantKey(torch.float8_e4m3fn, Scheme.PER_TOKEN))(r) + _rule(r),
    "fp8_per_group": lambda r: _legacy(QuantKey(torch.float8_e4m3fn, Scheme.PER_GROUP, 128))(r) + _rule(r),
    "int8_static": _legacy(QuantKey(torch.int8, Scheme.STATIC)),
    "int8_per_token": lambda r: _legacy(QuantKey(torch.int8, Scheme.PER_TOKEN))(r) + _rule(r),
    "int8_per_group": _rule,
    "fp8_per_tensor": _rule,
    "int8_per_tensor": _rule,
    # torchao's MXFP8 (to_mx, FLOOR and CEIL): the fused MXFP8 op
    "mxfp8": lambda r: [reg.mx_op_names("mxfp8")[1][r]],
}


@dataclasses.dataclass
class FusedCall:
    op: torch._ops.OpOverload
    tail: tuple  # the arguments after (input, [residual,] weight, epsilon)
    key: QuantKey | None  # for the speed policy (None: a microscaling format, not measured)
    norm_out: bool = False  # the op also returns the normalised output (its last output)

    @property
    def op_name(self) -> str:
        return self.op._schema.name.split("::")[-1]


def form_of(m: QuantMatch) -> str:
    if m.mx is not None:
        return m.mx.fmt
    family = "int8" if m.dtype == torch.int8 else "fp8"
    if m.rule is None:
        return f"{family}_static"
    if m.rule.group_size < 0:
        return f"{family}_per_tensor"
    return f"{family}_per_group" if m.rule.group_size else f"{family}_per_token"


def key_of(m: QuantMatch) -> QuantKey:
    if m.rule is None:
        return QuantKey(m.dtype, Scheme.STATIC)
    if m.rule.group_size < 0:
        return QuantKey(m.dtype, Scheme.PER_TENSOR)
    if m.rule.group_size:
        return QuantKey(m.dtype, Scheme.PER_GROUP, m.rule.group_size)
    return QuantKey(m.dtype, Scheme.PER_TOKEN)


def legacy_rule(key: QuantKey) -> ScaleRule | None:
    """The fixed scale rule of the catalogue's op for ``key`` (None for static keys)."""
    if key.scheme is Scheme.PER_TOKEN:
        return ScaleRule(0, key.qmax, scale_floor=per_token_min_scale(key.dtype))
    if key.scheme is Scheme.PER_GROUP and key.is_fp8:
        return ScaleRule(key.group_size, key.qmax, absmax_floor=GROUP_ABSMAX_FLOOR)
    return None


def same_rule(a: ScaleRule, b: ScaleRule) -> bool:
    """Equal up to the rounding of the constants (a Python double vs the fp32 the kernels use)."""

    def close(x: float, y: float) -> bool:
        return x == y or abs(x - y) <= 1e-6 * max(abs(x), abs(y))

    return (
        a.group_size == b.group_size and a.scale_dtype == b.scale_dtype and a.ue8m0 == b.ue8m0
        and a.round_quotient == b.round_quotient
        and close(a.divisor, b.divisor) and close(a.absmax_floor, b.absmax_floor)
        and close(a.scale_floor, b.scale_floor) and close(a.zero_scale, b.zero_scale)
    )  # fmt: skip


def choose_op(registry: reg.Registry, m: QuantMatch, residual: bool, eps: float) -> FusedCall:
    if m.mx is not None:
        name = reg.mx_op_names(m.mx.fmt)[1][residual]
        op = registry.mx_ops.get(name)
        if op is None:
            raise Refusal("fused_op_missing", name)
        return FusedCall(op, (eps, m.mx.elem_dtype, m.mx.scale_mode, False), None)
    key = key_of(m)
    if m.rule is None:
        op = registry.fused_ops.get((key, residual))
        if op is None:
            raise Refusal("fused_op_missing", reg.fused_op_name(key, residual))
        tail = (m.static_scale, eps, key.dtype) if key.is_fp8 else (m.static_scale, eps)
        return FusedCall(op, tail, key)
    rule = m.rule
    if rule.group_size > 0 and rule.group_size not in GROUP_SIZES:
        raise Refusal("unsupported_group_size", f"{rule.group_size}; supported: {', '.join(map(str, GROUP_SIZES))}")
    legacy = legacy_rule(key) if not (key.scheme is Scheme.PER_GROUP and key.dtype == torch.int8) else None
    if legacy is not None and same_rule(rule, _with_ue8m0(legacy, rule)):
        op = registry.fused_ops.get((key, residual))
        if op is not None:
            if key.scheme is Scheme.PER_TOKEN:
                return FusedCall(op, (eps, key.dtype, None), key)
            return FusedCall(op, (eps, rule.group_size, False, rule.ue8m0, key.dtype), key)
    op = registry.rule_op(residual)
    if op is None:
        supported = f"the library's op computes {legacy.describe()}" if legacy is not None else "no fixed-rule op"
        raise Refusal(
            "scale_rule_unsupported",
            f"{rule.describe()}; {supported}; {RULE_OPS[residual]} is not available",
        )
    return FusedCall(op, _rule_tail(op, rule, key, eps), key)


def with_norm_out(registry: reg.Registry, m: QuantMatch, residual: bool, eps: float, user: str) -> FusedCall:
    """The norm-output variant of the rule op for a site whose normalised output ``y`` also has
    another reader (``user``): one op returns q, the scales and ``y``. A fixed-rule quantizer is
    expressed as its rule (the rule op computes the fixed-rule ops' arithmetic bit for bit)."""
    name = reg.RULE_NORM_OUT_OP_NAMES[residual]
    if m.rule is None:
        raise Refusal("norm_output_has_other_users",
                      f"{user}; a static scale has no norm-output variant (dynamic scales only)")  # fmt: skip
    op = registry.rule_norm_out_ops.get(residual)
    if op is None:
        raise Refusal("norm_output_has_other_users", f"{user}; {name} is not available")
    if m.rule.group_size > 0 and m.rule.group_size not in GROUP_SIZES:
        raise Refusal("unsupported_group_size", f"{m.rule.group_size}; supported: {', '.join(map(str, GROUP_SIZES))}")
    key, rule = key_of(m), m.rule
    return FusedCall(op, _rule_tail(op, rule, key, eps), key, norm_out=True)


def _rule_tail(op, rule: ScaleRule, key: QuantKey, eps: float) -> tuple:
    """A rule op's arguments after (input, [residual,] weight): round_quotient only where set (a
    library built before it was added takes every other rule)."""
    tail = (eps, key.dtype, rule.group_size, rule.divisor, rule.absmax_floor, rule.scale_floor, rule.zero_scale,
            rule.scale_dtype, rule.ue8m0)  # fmt: skip
    if not rule.round_quotient:
        return tail
    if "round_quotient" not in [a.name for a in op._schema.arguments]:
        raise Refusal("scale_rule_unsupported", f"{rule.describe()}; this library's {op._schema.name} has no round_quotient")
    return (*tail, True)


def _with_ue8m0(legacy: ScaleRule, rule: ScaleRule) -> ScaleRule:
    """The group op takes UE8M0 as an argument: compare the rest."""
    if legacy.group_size:
        return dataclasses.replace(legacy, ue8m0=rule.ue8m0)
    return legacy
