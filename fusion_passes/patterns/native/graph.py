# SPDX-License-Identifier: Apache-2.0
"""Reading the post-grad graph by meaning: the canonical forms the native matcher recognises.

Real code spells one computation many ways. These helpers look through the differences that do
not change a value (or change it only within one fp32 rounding) and return the canonical reading:

* constants: Python numbers, 0-d/one-element tensor constants (``lift_fresh_copy`` of a lifted
  attribute, ``full``/``scalar_tensor``, ``zeros_like``) and arithmetic on constants, folded;
* casts: an upcast to fp32 is exact and is looked through where only the value matters; the
  dtype an arithmetic result is rounded to is read from its fake value;
* views: ``view``/``reshape``/``unsqueeze``/``squeeze`` of the same elements;
* clamps: ``clamp``, ``clamp_min``/``clamp_max`` in either order, their ``.Tensor`` forms with a
  constant bound, and ``maximum``/``minimum`` with a constant;
* quotients: ``a / b``, ``a * reciprocal(b)``, ``a * (1 / b)``, ``a * (c / b)`` (an inverse
  scale, read as ``a / (b / c)``) and ``a * c`` for a constant ``c`` (read as ``a / (1 / c)``);
* reductions (reductions.py): ``amax(|v|)``, ``max.dim(|v|)[0]`` (with or without keepdim, then
  ``unsqueeze``), ``max(|amin(v)|, |amax(v)|)`` and the same with ``amin``/``amax`` clamped
  against zero.

Every node a reading walks through is appended to the caller's ``seen`` list, so the matcher
knows exactly which nodes a rewrite replaces.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from fusion_passes import fx_utils

aten = torch.ops.aten
prims = torch.ops.prims
CONVERT = (prims.convert_element_type.default, aten._to_copy.default)
VIEWS = (
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.clone.default,
)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INV_ROOT = ("rsqrt", "pow_neg_half", "recip_sqrt")


def is_call(node: Any, targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def dtype_of(node: Any) -> torch.dtype | None:
    v = fx_utils.val(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


def shape_of(node: Any) -> tuple | None:
    v = fx_utils.val(node)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def cast_target(node: Any) -> torch.dtype | None:
    """The dtype a cast node casts to (None if the node is not a pure dtype cast)."""
    if not is_call(node, CONVERT):
        return None
    if node.target is prims.convert_element_type.default:
        return node.args[1]
    if len(node.args) == 1 and set(node.kwargs) <= {"dtype", "layout", "device", "memory_format"}:
        return node.kwargs.get("dtype")
    return None


def only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


# --- constants ---------------------------------------------------------------------------------


def round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (round to nearest even), as a Python float. Real tensors,
    also while the compile's fake mode is active."""
    with unset_fake_temporarily():
        return float(torch.tensor(value, dtype=torch.float64).to(dtype).item())


def const(x: Any, seen: list | None = None) -> float | None:
    """The value of a scalar constant expression, or None."""
    n = number(x)
    if n is not None:
        return n
    if not isinstance(x, fx.Node):
        return None
    value = _const_node(x)
    if value is not None and seen is not None:
        seen.extend(_const_nodes(x))
    return value


def _const_nodes(node: fx.Node) -> list[fx.Node]:
    out = [node]
    for a in node.all_input_nodes:
        out += _const_nodes(a)
    return out


def _const_node(node: fx.Node) -> float | None:
    if node.op == "get_attr":
        owner = node.graph.owning_module
        t = getattr(owner, node.target, None) if owner is not None else None
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            with unset_fake_temporarily():
                return float(t.detach().reshape(()).item())
        return None
    if node.op != "call_function":
        return None
    t, args = node.target, node.args
    if t in (aten.lift_fresh_copy.default, aten.clone.default) or cast_target(node) is not None:
        inner = _const_node(args[0]) if isinstance(args[0], fx.Node) else None
        if inner is None or cast_target(node) is None:
            return inner
        if cast_target(node).is_floating_point:
            return round_to(inner, cast_target(node))
        return float(inner) if float(inner).is_integer() else None  # an integral value cast to an int dtype
    if t is aten.scalar_tensor.default:
        return number(args[0])
    if t in (aten.full.default, aten.full_like.default):
        shape = fx_utils.val(node)
        return number(args[1]) if isinstance(shape, torch.Tensor) else None
    if t in (aten.zeros_like.default, aten.zeros.default):
        return 0.0
    binary = {
        aten.mul.Tensor: operator.mul,
        aten.div.Tensor: operator.truediv,
        aten.add.Tensor: operator.add,
        aten.sub.Tensor: operator.sub,
    }
    if t in binary and len(args) == 2:
        a, b = const(args[0]), const(args[1])
        if a is None or b is None:
            return None
        if t is aten.div.Tensor and b == 0:
            return None
        dt = dtype_of(node) or torch.float32
        return round_to(binary[t](a, b), dt) if dt.is_floating_point else binary[t](a, b)
    if t is aten.round.default:
        a = const(args[0])
        return None if a is None else float(round(a))  # Python rounds half to even, as torch does
    if t is aten.reciprocal.default:
        a = const(args[0])
        return None if not a else 1.0 / a
    if t in (aten.clamp_min.default, aten.clamp_max.default, aten.clamp.default):
        a = const(args[0])
        bounds = [const(b) if b is not None else None for b in args[1:3]]
        if a is None or any(b is None and i < len(args) - 1 for i, b in enumerate(bounds)):
            return None
        lo = bounds[0] if t is not aten.clamp_max.default else None
        hi = bounds[0] if t is aten.clamp_max.default else (bounds[1] if len(bounds) > 1 else None)
        a = a if lo is None else max(a, lo)
        return a if hi is None else min(a, hi)
    return None


# --- look-through ------------------------------------------------------------------------------


def through_upcasts(node: Any, seen: list) -> Any:
    """Skip casts to fp32 (exact for our input dtypes)."""
    while cast_target(node) == torch.float32 and dtype_of(node.args[0]) in FLOAT_DTYPES:
        seen.append(node)
        node = node.args[0]
    return node


def through_views(node: Any, seen: list) -> Any:
    while is_call(node, VIEWS):
        seen.append(node)
        node = node.args[0]
    return node


def through_value_preserving(node: Any, seen: list) -> Any:
    """Skip views and exact upcasts, in any order."""
    while True:
        nxt = through_views(through_upcasts(node, seen), seen)
        if nxt is node:
            return node
        node = nxt


def clamp(node: Any, seen: list) -> tuple[Any, float | None, float | None] | None:
    """(input, lo, hi) of one clamp step or a clamp_min/clamp_max pair; None if not a clamp."""
    lo = hi = None
    steps = 0
    while True:
        t = node.target if isinstance(node, fx.Node) and node.op == "call_function" else None
        if t in (aten.clamp.default, aten.clamp.Tensor):
            a = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
            b = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
            ca, cb = const(a, seen) if a is not None else None, const(b, seen) if b is not None else None
            if (a is not None and ca is None) or (b is not None and cb is None):
                return None
            lo = ca if lo is None else lo
            hi = cb if hi is None else hi
        elif t in (aten.clamp_min.default, aten.clamp_min.Tensor, aten.maximum.default):
            c = const(node.args[1], seen)
            if c is None or lo is not None:
                break
            lo = c
        elif t in (aten.clamp_max.default, aten.clamp_max.Tensor, aten.minimum.default):
            c = const(node.args[1], seen)
            if c is None or hi is not None:
                break
            hi = c
        else:
            break
        seen.append(node)
        node = node.args[0]
        steps += 1
    return (node, lo, hi) if steps else None


def quotient(node: Any, seen: list) -> tuple[Any, Any, float | None] | None:
    """(numerator, denominator node, constant divisor) of a division spelled any way.

    Exactly one of the last two is set. ``a * c`` with a constant ``c`` reads as ``a / (1/c)``;
    ``a * (c / b)`` as ``a / (b / c)``: the denominator is then returned as ("inv", c, b).
    """
    if is_call(node, (aten.div.Tensor,)):
        c = const(node.args[1], seen)
        seen.append(node)
        return (node.args[0], None, c) if c is not None else (node.args[0], node.args[1], None)
    if is_call(node, (aten.mul.Tensor,)):
        for a, b in (node.args, tuple(reversed(node.args))):
            c = const(b, seen)
            if c is not None and c != 0:
                seen.append(node)
                return a, None, 1.0 / c
            r = reciprocal_of(b, seen)
            if r is not None:
                seen.append(node)
                return a, r, None
    return None


def inverse_form(node: Any, seen: list) -> tuple[float, Any] | None:
    """(c, v) for ``c / v`` spelled ``div(c, v)``, ``c * reciprocal(v)`` or ``reciprocal(v)``."""
    local: list = []
    if is_call(node, (aten.reciprocal.default,)):
        seen.append(node)
        return 1.0, node.args[0]
    if is_call(node, (aten.div.Tensor,)):
        c = const(node.args[0], local)
        if c is not None and const(node.args[1]) is None:
            seen += local + [node]
            return c, node.args[1]
    if is_call(node, (aten.mul.Tensor,)):
        for a, b in (node.args, tuple(reversed(node.args))):
            c = const(a, local)
            if c is not None and is_call(b, (aten.reciprocal.default,)):
                seen += local + [node, b]
                return c, b.args[0]
    return None


def reciprocal_of(node: Any, seen: list) -> Any:
    """x for ``1 / x`` (any spelling); ("inv", c, x, node, guard) for ``c / x`` with c != 1 or
    behind an inf guard (an inverse scale; ``node`` is the value its other readers see; ``guard``
    the value an infinite inverse is replaced by, None where it never is infinite)."""
    local: list = []
    node = through_views(node, local) if isinstance(node, fx.Node) else node
    outer = node
    node, guard = through_inf_guard(node, local)
    inv = inverse_form(node, local)
    if inv is None:
        return None
    seen += local
    c, x = inv
    return x if c == 1.0 and outer is node else ("inv", c, x, outer, guard)


def through_inf_guard(node: Any, seen: list) -> tuple[Any, float | None]:
    """(x, None) for ``x[x == inf] = g`` (an ``index_put``) where x = c / max(a, f) with f > 0 once
    rounded, which is never inf: the guard changes nothing; (x, g) where the floor rounds to 0 (or
    there is none): x is inf exactly where a == 0, and becomes g there. (node, None) otherwise."""
    if not is_call(node, (aten.index_put.default, aten.index_put_.default)):
        return node, None
    x, idx = node.args[0], node.args[1]
    if not (isinstance(idx, (list, tuple)) and len(idx) == 1 and is_call(idx[0], (aten.eq.Scalar,))):
        return node, None
    if idx[0].args[0] is not x or number(idx[0].args[1]) != float("inf"):
        return node, None
    local: list = []
    inv = inverse_form(x, local)
    g = const(node.args[2], local) if len(node.args) > 2 else None
    if inv is None or g is None or not g > 0:
        return node, None
    a, lowest = through_float_casts(through_views(inv[1], local), local)
    c = clamp(a, local)
    floor = 0.0
    if c is not None and c[1] is not None and c[2] is None:
        floor = round_to(c[1], lowest) if lowest is not None else c[1]
    seen += [node, idx[0]]
    if isinstance(node.args[2], fx.Node):
        seen += _const_nodes(node.args[2])
    return x, (None if floor > 0 else g)


def through_float_casts(node: Any, seen: list) -> tuple[Any, torch.dtype | None]:
    """Skip casts between float dtypes; also returns the least precise dtype a cast rounded to
    (None if none rounded)."""
    lowest = None
    while cast_target(node) in FLOAT_DTYPES and dtype_of(node.args[0]) in FLOAT_DTYPES:
        target = cast_target(node)
        if _bits(target) < _bits(dtype_of(node.args[0])) and (lowest is None or _bits(target) < _bits(lowest)):
            lowest = target
        seen.append(node)
        node = node.args[0]
    return node, lowest


_MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def _bits(dtype: torch.dtype | None) -> int:
    """Mantissa bits of a float dtype (more: more precise; non-floats rank lowest)."""
    return _MANTISSA_BITS.get(dtype, -1)


def is_ue8m0(node: Any, seen: list) -> Any:
    """x for ``exp2(ceil(log2(x)))`` or ``pow(2, ceil(log2(x)))``, else None."""
    if is_call(node, (aten.exp2.default,)):
        inner = node.args[0]
    elif is_call(node, (aten.pow.Scalar,)) and number(node.args[0]) == 2.0:
        inner = node.args[1]
    else:
        return None
    if not is_call(inner, (aten.ceil.default,)) or not is_call(inner.args[0], (aten.log2.default,)):
        return None
    seen += [node, inner, inner.args[0]]
    return inner.args[0].args[0]


def zero_replaced(node: Any, seen: list) -> tuple[Any, float] | None:
    """(x, c) for ``where(x == 0, c, x)``."""
    if not is_call(node, (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf)):
        return None
    cond, a, b = node.args[:3]
    if not is_call(cond, (aten.eq.Scalar, aten.eq.Tensor)) or const(cond.args[1]) != 0.0:
        return None
    x = cond.args[0]
    if b is not x:
        return None
    c = const(a, seen)
    if c is None:
        return None
    seen += [node, cond]
    return x, c
