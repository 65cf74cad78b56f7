# SPDX-License-Identifier: Apache-2.0
"""Quantizers in plain torch, recognised by meaning and described by their scale rule.

A quantizer of the norm output ``y`` is a cast to an FP8/INT8 dtype of
``[round] [clamp] (y / S)`` (any spelling of the division: see graph.py), where ``S`` is either
a one-element scale tensor (static) or a dynamic scale built from the absolute max of ``y`` over
its last dim (one scale per row), over groups of ``g`` elements of each row (``y`` viewed as
``[..., H/g, g]`` or ``[numel/g, g]``) or over all of ``y`` (one scale for the tensor)::

    a = absmax                                      (in the model dtype or fp32: exact either way)
    a = max(a, absmax_floor)                        optional
    s = a / divisor                                 rounded to the dtype it is computed in
    s = 2 ** ceil(log2(s))                          optional (UE8M0)
    s = max(s, scale_floor)                         optional
    s = where(s == 0, zero_scale, s)                optional

Inverse scales (``q = y * (c / a)``, returning ``1 / inv``) read as ``s = a / c``. The rule's
parameters are read from the graph, never matched per value; whether our kernels reproduce a
rule is the matcher's decision (``ops.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx

from fusion_kernels import platform
from fusion_passes.patterns import Refusal
from fusion_passes.patterns.native import graph as G
from fusion_passes.patterns.native.reductions import absmax
from fusion_passes.quant_key import FP8_DTYPES, QUANT_DTYPES

aten = G.aten


@dataclasses.dataclass(frozen=True)
class ScaleRule:
    group_size: int  # 0: one scale per row; -1: one scale for the whole tensor
    divisor: float
    absmax_floor: float = 0.0  # 0: none
    scale_floor: float = 0.0  # 0: none
    zero_scale: float = 0.0  # 0: none
    scale_dtype: torch.dtype = torch.float32  # the dtype the scale is rounded to
    ue8m0: bool = False
    round_quotient: bool = False  # y / scale rounded to the model dtype before the cast (INT8)

    def describe(self) -> str:
        parts = [f"amax / {self.divisor:g}"]
        if self.absmax_floor:
            parts.insert(0, f"amax floored at {self.absmax_floor:g}")
        if self.scale_dtype != torch.float32:
            parts.append(f"rounded to {self.scale_dtype}")
        if self.ue8m0:
            parts.append("UE8M0")
        if self.scale_floor:
            parts.append(f"scale floored at {self.scale_floor:g}")
        if self.zero_scale:
            parts.append(f"zero scale -> {self.zero_scale:g}")
        if not (self.absmax_floor or self.scale_floor or self.zero_scale):
            parts.append("no floor")
        if self.round_quotient:
            parts.append("quotient rounded to the model dtype")
        where = {0: "per row", -1: "per tensor"}.get(self.group_size, f"groups of {self.group_size}")
        return f"{where}: " + ", ".join(parts)


@dataclasses.dataclass
class QuantMatch:
    dtype: torch.dtype  # the quantized dtype
    q: fx.Node  # the quantized output (the final cast)
    static_scale: fx.Node | None  # static: the scale tensor (any float dtype, one element)
    rule: ScaleRule | None  # dynamic: how the scale is computed
    scale_nodes: list[fx.Node]  # dynamic: nodes whose value is the scale (rewired to ours)
    seen: list[fx.Node]  # every node of the quantizer (replaced)
    inverse: fx.Node | None = None  # an inverse-scale node (readers of 1 / inverse get our scale)
    mx: Any = None  # a microscaling quantizer: its mx.MXSpec (then rule and static_scale are None)

    def signature(self) -> tuple:
        return (self.dtype, self.static_scale, self.rule, self.mx)


def quant_casts(y: fx.Node, depth: int = 14) -> list[fx.Node]:
    """Casts to a quantized dtype reachable from y through element-wise arithmetic."""
    found, frontier, visited = [], [y], {y}
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u in visited or u.op != "call_function" or not _arith(u):
                    continue
                visited.add(u)
                if G.cast_target(u) in QUANT_DTYPES:
                    found.append(u)
                nxt.append(u)
        frontier = nxt
    return found


_HEAVY = {
    "mm",
    "addmm",
    "bmm",
    "_scaled_mm",
    "convolution",
    "embedding",
    "linear",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
}


def _arith(node: fx.Node) -> bool:
    """Whether the search for quantizers may walk through ``node`` (not into a matmul or an op
    of ours: a quantizer is element-wise arithmetic and reductions)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return True
    ns, _, name = schema.name.partition("::")
    return ns not in ("fusion_kernels",) and name not in _HEAVY


def match_quantizer(q: fx.Node, y: fx.Node) -> QuantMatch | None:
    """The quantizer ending in ``q`` if it reads ``y``; None if it is not a quantizer of ``y``.

    Raises Refusal for a quantizer of ``y`` that computes something our kernels do not.
    """
    dtype = G.cast_target(q)
    seen: list[fx.Node] = [q]
    v = q.args[0]
    # A lossless round trip through a wider float dtype: cast(D, cast(W, cast(D, t))).
    if G.cast_target(v) in G.FLOAT_DTYPES and G.cast_target(v.args[0]) == dtype:
        seen += [v, v.args[0]]
        v = v.args[0].args[0]
    rounded, bounds = False, None
    scaled_dtype = G.dtype_of(v)
    while True:
        v, low = G.through_float_casts(v, seen)
        if low is not None and G._bits(low) < G._bits(scaled_dtype):
            scaled_dtype = low  # the scaled value is rounded to a 16-bit dtype before the cast
        if G.is_call(v, (aten.round.default,)) and not rounded:
            rounded = True
            seen.append(v)
            v = v.args[0]
            continue
        c = G.clamp(v, seen) if bounds is None else None
        if c is not None:
            v, lo, hi = c
            bounds = (lo, hi)
            continue
        if G.is_call(v, (aten.add.Tensor,)) and G.const(v.args[1], seen) == 0.0:  # a zero point of 0
            seen.append(v)
            v = v.args[0]
            continue
        break
    if G._bits(G.dtype_of(v)) < G._bits(scaled_dtype):
        scaled_dtype = G.dtype_of(v)
    parts = G.quotient(v, seen)
    if parts is None:
        return None
    num, den, cdiv = parts
    num_shape = G.shape_of(num)
    if G.through_value_preserving(num, []) is not y or num_shape is None:
        return None
    G.through_value_preserving(num, seen)
    hidden = G.shape_of(y)[-1]
    group = int(num_shape[-1]) if num_shape[-1] != hidden else 0
    if group and (not isinstance(num_shape[-1], int) or hidden % group):
        return None
    if den is None:
        raise Refusal("static_scale_is_a_number", f"y / {cdiv:g}: pass the scale as a tensor")
    m = _static(den, dtype, q, seen) if not isinstance(den, tuple) else None
    if m is None:
        m = _dynamic(den, y, group, num_shape, dtype, q, seen)
    _check_tail(m, rounded, bounds, scaled_dtype, G.dtype_of(y))
    return m


def _static(den: fx.Node, dtype, q, seen) -> QuantMatch | None:
    local: list = []
    base = G.through_value_preserving(den, local)
    v = G.fx_utils.val(base)
    if base.op not in ("placeholder", "get_attr") or not isinstance(v, torch.Tensor) or v.numel() != 1:
        return None
    if G.const(base) is not None:
        raise Refusal("static_scale_is_a_number", "a constant scale tensor: pass the scale as an input")
    if v.dtype not in G.FLOAT_DTYPES:
        raise Refusal("scale_not_float", str(v.dtype))
    seen += local
    return QuantMatch(dtype, q, base, None, [], seen)


def _dynamic(den, y, group, num_shape, dtype, q, seen) -> QuantMatch:
    local: list = []
    inverse = None
    if isinstance(den, tuple):  # ("inv", c, b, node): q = y * (c / b), the scale is b / c
        _, extra_divisor, s, inverse, guard = den
        # Readers of 1 / inverse (the scale the spelling returns) get our scale.
        scale_nodes = []
        for u in inverse.users:
            if G.reciprocal_of(u, []) is inverse:
                while (
                    len(u.users) == 1
                    and G.is_call(nxt := next(iter(u.users)), (aten.mul.Tensor,))
                    and 1.0 in (G.const(nxt.args[0]), G.const(nxt.args[1]))
                ):
                    local.append(u)
                    u = nxt
                scale_nodes.append(u)
        local += scale_nodes
    else:
        extra_divisor, s = None, den
        scale_nodes = [s]
    zero, scale_floor, ue8m0 = 0.0, 0.0, False
    if extra_divisor is not None:
        # The inverse spelling divides a (floored) absmax: the scale-side steps do not exist.
        a, divisor, scale_dtype = s, extra_divisor, torch.float32
        if guard is not None:  # an infinite inverse (a zero absmax) replaced by `guard`: scale 1 / guard
            zero = 1.0 / guard
    else:
        a, divisor, scale_dtype, zero, scale_floor, ue8m0 = _scale_side(s, q, local)
    a, low_a = G.through_float_casts(G.through_views(a, local), local)
    absmax_floor = 0.0
    c = G.clamp(a, local)
    if c is not None:
        if c[2] is not None:
            raise Refusal("absmax_clamped_above", f"absmax clamped to at most {c[2]:g}")
        floor_dtype = G.dtype_of(c[0]) or torch.float32
        if low_a is not None and G._bits(low_a) < G._bits(floor_dtype):
            floor_dtype = low_a  # the floored absmax is rounded before the division
        a, absmax_floor = c[0], G.round_to(c[1], floor_dtype)
    a, _ = G.through_float_casts(a, local)
    red = absmax(a, local)
    if red is None:
        raise Refusal("scale_not_recognised", f"the scale of {q.name} is not built from an absmax")
    src, dims, _ = red
    src_shape = G.shape_of(src)
    if G.through_value_preserving(src, local) is not y:
        raise Refusal("scale_reads_another_tensor", f"the scale of {q.name} does not read the norm output")
    rank = len(src_shape) if src_shape is not None else None
    if dims is None or (rank is not None and rank > 1 and sorted(d % rank for d in dims) == list(range(rank))):
        # One absmax of every element of y: one scale for the whole tensor, whatever view of y
        # it divides (a number that broadcasts over all of it).
        group = -1
    elif len(dims) != 1 or dims[0] not in (-1, rank - 1) or src_shape[-1] != num_shape[-1]:
        raise Refusal("absmax_not_over_last_dim", f"absmax over {dims} of a {list(src_shape)} view")
    if scale_dtype not in G.FLOAT_DTYPES:
        raise Refusal("scale_not_float", str(scale_dtype))
    seen += local
    rule = ScaleRule(group, float(divisor), absmax_floor, float(scale_floor), float(zero), scale_dtype, ue8m0)
    return QuantMatch(dtype, q, None, rule, scale_nodes, seen, inverse)


def _scale_side(s, q: fx.Node, local: list):
    """From the scale back to ``absmax / divisor``: [zero replacement] <- [scale floor] <-
    [UE8M0] <- the division, with casts anywhere in between (a downcast rounds the scale)."""
    lows: list[torch.dtype] = []

    def peel(node):
        node = G.through_views(node, local)
        node, low = G.through_float_casts(node, local)
        if low is not None:
            lows.append(low)
        return G.through_views(node, local)

    s = peel(s)
    zero = scale_floor = 0.0
    z = G.zero_replaced(s, local)
    if z is not None:
        s, zero = z
    s = peel(s)
    c = G.clamp(s, local)
    if c is not None:
        if c[2] is not None:
            raise Refusal("scale_clamped_above", f"scale clamped to at most {c[2]:g}")
        s, scale_floor = c[0], c[1]
    s = peel(s)
    u = G.is_ue8m0(s, local)
    if u is not None:
        s = u
    s = peel(s)
    parts = G.quotient(s, local)
    if parts is None or parts[2] is None:
        raise Refusal("scale_not_recognised", f"the scale of {q.name} is not absmax / constant")
    scale_dtype = G.dtype_of(s)
    for low in lows:
        if G._bits(low) < G._bits(scale_dtype):
            scale_dtype = low
    return parts[0], parts[2], scale_dtype, zero, scale_floor, u is not None


def _check_tail(m: QuantMatch, rounded: bool, bounds, scaled_dtype, model_dtype) -> None:
    lo, hi = bounds if bounds is not None else (None, None)
    if m.dtype == torch.int8:
        if not rounded:
            raise Refusal("int8_without_rounding")
        if bounds is None and m.rule is None:
            raise Refusal("static_without_clamp", "out-of-range values wrap in the spelling")
        if bounds is not None and not (_close(lo, -128.0) and _close(hi, 127.0)):
            raise Refusal("clamp_bound_mismatch", f"int8 clamp [{lo}, {hi}]")
        if scaled_dtype != torch.float32:
            # The rule ops round the quotient to the input's dtype (round_quotient): a dynamic
            # scale per row or group of a quotient rounded to the model dtype is theirs.
            if m.rule is None or m.rule.group_size < 0 or scaled_dtype != model_dtype:
                what = "a static scale" if m.rule is None else ("one scale per tensor" if m.rule.group_size < 0 else
                                                                 f"the model dtype is {model_dtype}")  # fmt: skip
                raise Refusal(
                    "int8_scaled_in_model_dtype",
                    f"y / scale is rounded to {scaled_dtype} before rounding to int8 ({what}; supported: the "
                    "quotient rounded to the model dtype, with a dynamic scale per row or per group)",
                )
            m.rule = dataclasses.replace(m.rule, round_quotient=True)
        return
    if m.dtype not in FP8_DTYPES:
        raise Refusal("unsupported_quant_dtype", str(m.dtype))
    if rounded:
        raise Refusal("fp8_with_rounding")
    if scaled_dtype != torch.float32 and scaled_dtype == model_dtype and m.rule is not None and m.rule.group_size >= 0:
        # The FP8 cast of a 16-bit quotient rounds twice (to the model dtype, then to FP8); the
        # rule op does the same. (A static or per-tensor scale keeps the fp32 quotient: one FP8
        # step apart on the few values whose 16-bit rounding lands on an FP8 midpoint.)
        m.rule = dataclasses.replace(m.rule, round_quotient=True)
    fmax = platform.FP8_MAX[m.dtype]
    if bounds is None:
        # No clamp: the spelling turns out-of-range values into NaN where our kernel saturates.
        # A dynamic scale of at least amax / fmax keeps every value in range (the fp8 cast rounds
        # a value within half a step above fmax to fmax), so there the two agree.
        if m.rule is None or m.rule.divisor < fmax * (1 - 1e-6):
            raise Refusal("no_clamp", "values beyond the fp8 range become NaN in the spelling")
        return
    if not (_close(lo, -fmax) and _close(hi, fmax)):
        raise Refusal("clamp_bound_mismatch", f"{m.dtype} clamp [{lo}, {hi}], its range is +-{fmax}")


def _close(a: float | None, b: float, rel: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= rel * abs(b)
