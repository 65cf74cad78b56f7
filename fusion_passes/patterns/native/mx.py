# SPDX-License-Identifier: Apache-2.0
"""Microscaling quantizers in plain torch (torchao's ``to_mx`` and ``nvfp4_quantize``), read by
meaning and fused only where our op computes the same bytes.

An MX quantizer of the norm output ``y`` views ``y`` as blocks (``[..., H / 32, 32]``), takes the
absmax ``a`` of each block (exact in any float dtype; upcast to fp32) and derives a power-of-two
scale from it. The spelling read here is torchao's bit-level one (its FLOOR and CEIL modes)::

    E    = (bits(a) >> 23) & 255                    the biased exponent field of a
    e    = E [+ (bits(a) & 0x7FFFFF != 0)]          CEIL: the next power of two
    byte = u8(clamp(e + c1, lo, hi) + c2)           net offset c1 + c2 = -p, lo + c2 = 0
    byte = where(isnan(a), 255, byte)               the E8M0 scale
    d    = max(f32(byte << 23), 2 ** -126)
    q    = cast(fp8, [clamp(+-qmax)] (block / d))

with ``p = floor(log2(qmax))`` of the element dtype. Our op's MX scale is ``clamp(e - p, 0, 254)``
(NaN: 255) and divides by ``max(2 ** (byte - 127), 2 ** -126)``, so the two are the same bytes
exactly when ``lo + c2 == 0`` (an all-zero or subnormal absmax gets byte 0, not a wrapped one),
the upper clamp never binds below ``255 - p`` (the exponent of Inf), the lower bound of the
divisor is ``2 ** -126`` (the divisor of byte 0: without it an all-zero block divides by 0) and
the elements are clamped to the dtype's range before the cast, or cast by a saturating cast.

RCEIL as torchao writes it off Blackwell (``ceil(log2(amax / qmax))`` in fp32, bytes 0 / 254 / 255
multiplying by 1 / ``2 ** -127`` / NaN) is our op's rceil where the absmax is a 16-bit value (see
:mod:`.mx_rceil`). Refused, with the difference named: that RCEIL of an fp32 absmax (it rounds
to the power of two below where the quotient lies a few ulps above one, where our op's rceil
rounds up exactly); element formats converted in software (FP4 e2m1: torchao's conversion
encodes NaN as 1.5, ours as 6); NVFP4 (e2m1 elements too).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.fx as fx

from fusion_passes.patterns import Refusal
from fusion_passes.patterns.native import graph as G
from fusion_passes.patterns.native.quant import QuantMatch

aten = G.aten
MX_BLOCK = 32
NVFP4_BLOCK = 16
#: the MX element dtypes our fused op writes, by p = floor(log2(largest value))
MXFP8_POW2 = {torch.float8_e4m3fn: 8, torch.float8_e5m2: 15}
#: p of e2m1 (largest value 6): blocks whose scale is read with it hold FP4 elements
E2M1_POW2 = 2
F32_MIN_NORMAL = 2.0**-126
_SHR = (aten.bitwise_right_shift.Tensor_Scalar, aten.__rshift__.Scalar)
_SHL = (aten.bitwise_left_shift.Tensor_Scalar, aten.__lshift__.Scalar)
_AND = (aten.bitwise_and.Scalar,)
FP4_NAN = "torchao's e2m1 conversion encodes NaN as code 3 (1.5), our op as code 7 (6.0)"


@dataclasses.dataclass(frozen=True)
class MXSpec:
    """What an MX quantizer computes, as our fused op's arguments."""

    fmt: str  # "mxfp8"
    elem_dtype: torch.dtype
    scale_mode: str  # torchao's mode: "floor", "ceil", "rceil"

    def describe(self) -> str:
        return f"{self.fmt} {self.elem_dtype} {self.scale_mode} (blocks of {MX_BLOCK})"


@functools.lru_cache(maxsize=None)
def cast_saturates(dtype: torch.dtype) -> bool:
    """Whether this torch's cast of a finite fp32 value beyond ``dtype``'s range gives its largest
    value (torch >= 2.12 for float8_e4m3fn; older torch and float8_e5m2 give NaN or Inf)."""
    with G.unset_fake_temporarily():
        big = torch.tensor([torch.finfo(dtype).max * 1.25])
        return bool(big.to(dtype).float().item() == torch.finfo(dtype).max)


def _through_aliases(node, seen: list):
    while G.is_call(node, (aten.alias.default,)):
        seen.append(node)
        node = node.args[0]
    return node


def _bitcast(node, dtype: torch.dtype, seen: list):
    """x for ``x.view(dtype)`` (through aliases), else None."""
    node = _through_aliases(node, seen)
    if G.is_call(node, (aten.view.dtype,)) and node.args[1] == dtype:
        seen.append(node)
        return _through_aliases(node.args[0], seen)
    return None


# --- entry: the block absmaxes of y --------------------------------------------------------------


def block_amaxes(y: fx.Node) -> list[tuple[fx.Node, fx.Node, int]]:
    """(amax node, block view, block size) for every absmax over the last dim of a view of ``y``
    as ``[..., H / b, b]`` blocks (b = 16 or 32), also through an upcast on either side."""
    hidden = G.shape_of(y)[-1] if G.shape_of(y) else None
    if not isinstance(hidden, int):
        return []
    found = []
    frontier, visited = [y], {y}
    for _ in range(3):  # y -> [convert] -> view -> [convert]
        nxt = []
        for n in frontier:
            for u in n.users:
                if u in visited or not (G.is_call(u, G.VIEWS) or G.cast_target(u) == torch.float32):
                    continue
                visited.add(u)
                nxt.append(u)
        frontier = nxt
        for v in frontier:
            shape = G.shape_of(v)
            if not shape or len(shape) < 2 or shape[-1] not in (MX_BLOCK, NVFP4_BLOCK):
                continue
            if shape[-2] != hidden // shape[-1] or hidden % shape[-1]:
                continue
            for a in v.users:
                if G.is_call(a, (aten.abs.default,)):
                    for m in a.users:
                        if G.is_call(m, (aten.amax.default,)) and list(m.args[1]) in ([-1], [len(shape) - 1]):
                            found.append((m, v, int(shape[-1])))
    return found


def mx_quantizers(y: fx.Node) -> list[QuantMatch]:
    """Every microscaling quantizer of ``y``; Refusal for one our op does not reproduce."""
    out = []
    for amax, view, block in block_amaxes(y):
        if block == NVFP4_BLOCK:
            if _is_nvfp4_scale(amax):
                raise Refusal("fp4_nan_encoding_differs", f"NVFP4 (blocks of 16, e4m3 scales): {FP4_NAN}")
            continue
        m = _mx_quantizer(amax, view, y)
        if m is not None:
            out.append(m)
    return out


# --- NVFP4: recognised (to say why it is refused) -----------------------------------------------


def _is_nvfp4_scale(amax: fx.Node) -> bool:
    """``amax / 6`` (then divided by a per-tensor scale or not) clamped and cast to e4m3: the
    block scale of torchao's nvfp4_quantize."""
    for d in amax.users:
        parts = G.quotient(d, []) if G.is_call(d, (aten.div.Tensor, aten.mul.Tensor)) else None
        if parts is None or parts[2] != 6.0:
            continue
        frontier = [d]
        for _ in range(5):
            frontier = [u for n in frontier for u in n.users]
            if any(G.cast_target(u) == torch.float8_e4m3fn for u in frontier):
                return True
    return False


# --- MX -------------------------------------------------------------------------------------------


def _mx_quantizer(amax: fx.Node, view: fx.Node, y: fx.Node) -> QuantMatch | None:
    seen: list = [amax.args[0], amax]
    a = amax
    # [unsqueeze(-1)] and an upcast, in either order
    for _ in range(2):
        nxt = [u for u in a.users if G.is_call(u, (aten.unsqueeze.default,)) or G.cast_target(u) == torch.float32]
        if len(nxt) != 1 or len(a.users) != 1:
            break
        a = nxt[0]
        seen.append(a)
    if G.dtype_of(a) != torch.float32 or G.shape_of(a) != G.shape_of(view)[:-1] + (1,):
        return None
    rceil = [u for u in a.users if G.is_call(u, (aten.div.Tensor,)) and any(G.is_call(w, (aten.log2.default,))
                                                                           for w in u.users)]  # fmt: skip
    if rceil:
        if len(rceil) != 1:
            return None
        if G.dtype_of(amax) not in (torch.bfloat16, torch.float16):
            raise Refusal("rceil_float_log2", f"rceil via float log2 of a {G.dtype_of(amax)} absmax: differs from "
                          "exact rounding above powers of two (a scale a few ulps above a power of two stays below "
                          "it); exact for a 16-bit absmax only")  # fmt: skip
        from fusion_passes.patterns.native.mx_rceil import rceil_quantizer  # (it imports this module)

        return rceil_quantizer(rceil[0], view, y, seen)
    bits = [u for u in a.users if G.is_call(u, (aten.view.dtype,)) and u.args[1] == torch.int32]
    if len(bits) != 1:
        return None
    byte, mode, pow2 = _e8m0_byte(a, bits[0], seen)
    if pow2 == E2M1_POW2:
        raise Refusal("fp4_nan_encoding_differs", f"MXFP4 (blocks of 32, e2m1 elements): {FP4_NAN}")
    quotients = _divided_by_scale(byte, seen)
    scale_nodes = [u for u in byte.users if G.is_call(u, (aten.view.dtype,)) and u.args[1] == torch.float8_e8m0fnu]
    if len(quotients) != 1 or len(scale_nodes) != 1:
        return None
    div = quotients[0]
    num = div.args[0]
    if G.through_value_preserving(num, []) is not y or G.shape_of(num) != G.shape_of(view):
        return None
    G.through_value_preserving(num, seen)
    seen.append(div)
    # [clamp(+-qmax)] -> cast to the element dtype -> [view back to y's shape]
    v, bounds = div, None
    users = list(v.users)
    if len(users) == 1 and (c := _clamp_user(users[0], seen)) is not None:
        v, bounds = c
        users = list(v.users)
    casts = [u for u in users if G.cast_target(u) is not None]
    if len(users) != 1 or not casts:
        return None
    q = casts[0]
    dtype = G.cast_target(q)
    if dtype not in MXFP8_POW2:
        raise Refusal("mx_elements_unsupported", f"blocks of 32 cast to {dtype}")
    if MXFP8_POW2[dtype] != pow2:
        raise Refusal("mx_scale_exponent_mismatch", f"scale exponent offset {pow2} for {dtype} "
                      f"(whose largest power of two is 2 ** {MXFP8_POW2[dtype]})")  # fmt: skip
    qmax = torch.finfo(dtype).max
    if bounds is None:
        if not cast_saturates(dtype):
            raise Refusal("no_clamp", f"the {dtype} cast of values beyond {qmax:g} does not saturate here "
                          "(our op clamps to the range)")  # fmt: skip
    elif not (bounds[0] == -qmax and bounds[1] == qmax):
        raise Refusal("clamp_bound_mismatch", f"{dtype} clamp [{bounds[0]}, {bounds[1]}], its range is +-{qmax:g}")
    return mxfp8_match(q, y, dtype, mode, scale_nodes, seen)


def mxfp8_match(q: fx.Node, y: fx.Node, dtype: torch.dtype, mode: str, scale_nodes: list, seen: list) -> QuantMatch:
    """The match of an MXFP8 quantizer whose elements are the cast ``q`` (and its view back to
    ``y``'s shape, if that is its one reader) and whose E8M0 scales are ``scale_nodes``."""
    seen.append(q)
    out = q
    if len(q.users) == 1 and G.is_call(only := next(iter(q.users)), G.VIEWS) and G.shape_of(only) == G.shape_of(y):
        out = only
        seen.append(out)
    return QuantMatch(dtype, out, None, None, scale_nodes, seen + scale_nodes, mx=MXSpec("mxfp8", dtype, mode))


def _clamp_user(node: fx.Node, seen: list):
    """(the last clamp node, (lo, hi)) for a clamp step or pair starting at ``node``."""
    local: list = []
    end = node
    while G.is_call(end, (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)) and len(end.users) == 1:
        nxt = next(iter(end.users))
        if not G.is_call(nxt, (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)):
            break
        end = nxt
    c = G.clamp(end, local)
    if c is None or c[0] is not node.args[0]:
        return None
    seen += local
    return end, (c[1], c[2])


def _e8m0_byte(a: fx.Node, bits: fx.Node, seen: list) -> tuple[fx.Node, str, int]:
    """The E8M0 byte node computed from the fp32 absmax ``a`` (through its int32 bits), the
    scale mode and p; Refusal where the bytes differ from our op's."""
    local: list = [bits]
    b = bits
    while G.is_call(nxt := _only(b, []), (aten.alias.default,)):
        local.append(nxt)
        b = nxt
    shifts = [u for u in b.users if G.is_call(u, _SHR) and G.number(u.args[1]) == 23]
    shr = shifts[0] if len(shifts) == 1 else None
    mask = _only(shr, local) if shr is not None else None
    if mask is None or not G.is_call(mask, _AND) or G.number(mask.args[1]) != 255:
        raise Refusal("mx_scale_not_recognised", "the scale is not read from the exponent field of the absmax")
    local += [shr, mask]
    e, mode = mask, "floor"
    off1 = 0
    node = _only(e, local)
    # constant offsets, and for CEIL one more where the mantissa is not zero (anywhere among them)
    while G.is_call(node, (aten.sub.Tensor, aten.add.Tensor)) and node.args[0] is e:
        other = node.args[1]
        if G.number(other) is not None:
            off1 += (-1 if node.target is aten.sub.Tensor else 1) * int(other)
        elif mode == "floor" and node.target is aten.add.Tensor and _mantissa_nonzero(other, a, local):
            mode = "ceil"
        else:
            raise Refusal("mx_scale_not_recognised", f"{node.name} adds something other than a mantissa test")
        local.append(node)
        e = node
        node = _only(e, local)
    c = G.clamp(_last_clamp(node), local) if node is not None else None
    if c is None or c[0] is not e:
        raise Refusal("mx_scale_not_recognised", "the exponent is not clamped (an all-zero block's byte would wrap)")
    e = _last_clamp(node)
    lo, hi = c[1], c[2]
    off2 = 0
    node = _only(e, local)
    while G.is_call(node, (aten.sub.Tensor, aten.add.Tensor)) and node.args[0] is e and G.number(node.args[1]) is not None:
        off2 += (-1 if node.target is aten.sub.Tensor else 1) * int(node.args[1])
        local.append(node)
        e = node
        node = _only(e, local)
    if G.cast_target(node) != torch.uint8:
        raise Refusal("mx_scale_not_recognised", "the biased exponent is not cast to uint8")
    local.append(node)
    pow2 = -(off1 + off2)
    ceil_bit = 1 if mode == "ceil" else 0
    if lo is None or lo + off2 != 0:
        raise Refusal("mx_scale_clamp_differs", f"the smallest byte is {lo}{off2:+d}, ours 0 (2 ** -127)")
    if hi is not None and not (255 - pow2 + ceil_bit <= hi + off2 <= 255):
        raise Refusal("mx_scale_clamp_differs", f"the largest byte is {hi}{off2:+d}")
    # NaN absmax -> 255
    w = _only(node, local)
    if not (G.is_call(w, (aten.where.self,)) and w.args[2] is node and G.is_call(w.args[0], (aten.isnan.default,))
            and G.through_value_preserving(w.args[0].args[0], []) is G.through_value_preserving(a, [])
            and G.const(w.args[1], local) == 255):  # fmt: skip
        raise Refusal("mx_nan_scale_differs", "a NaN absmax does not get the NaN scale 255")
    local += [w.args[0], w]
    seen += local
    return w, mode, pow2


def _last_clamp(node):
    """The outer node of a clamp_min/clamp_max pair starting at ``node`` (or ``node``)."""
    if G.is_call(node, (aten.clamp_min.default, aten.clamp_max.default)) and len(node.users) == 1:
        nxt = next(iter(node.users))
        if G.is_call(nxt, (aten.clamp_min.default, aten.clamp_max.default)) and nxt.target is not node.target:
            return nxt
    return node


def _mantissa_nonzero(node, a: fx.Node, local: list) -> bool:
    """``(bits(a) & 0x7FFFFF) > 0`` (or ``!= 0``)."""
    if not G.is_call(node, (aten.gt.Scalar, aten.ne.Scalar)) or G.number(node.args[1]) != 0:
        return False
    m = node.args[0]
    if not (G.is_call(m, _AND) and G.number(m.args[1]) == 0x7FFFFF):
        return False
    src = _bitcast(m.args[0], torch.int32, local)
    if src is None or G.through_value_preserving(src, []) is not G.through_value_preserving(a, []):
        return False
    local += [node, m]
    return True


def _only(node, local: list):
    """The one user of ``node`` (None if it has several or none)."""
    if node is None:
        return None
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _divided_by_scale(byte: fx.Node, seen: list) -> list[fx.Node]:
    """The divisions of blocks by ``max(f32(byte << 23), 2 ** -126)``; Refusal for another bound."""
    out = []
    for u in byte.users:
        if G.cast_target(u) != torch.int32:
            continue
        local: list = [u]
        shl = _only(u, local)
        if not (G.is_call(shl, _SHL) and G.number(shl.args[1]) == 23):
            continue
        local.append(shl)
        f = _only(shl, local)
        if not (G.is_call(f, (aten.view.dtype,)) and f.args[1] == torch.float32):
            continue
        local.append(f)
        while G.is_call(nxt := _only(f, []), (aten.alias.default,)):
            local.append(nxt)
            f = nxt
        d = _only(f, local)
        floor = None
        if G.is_call(d, (aten.clamp_min.default, aten.clamp.default, aten.maximum.default)):
            c = G.clamp(d, local)
            floor = c[1] if c is not None and c[2] is None else None
            local.append(d)
            f, d = d, _only(d, local)
        if floor is None or G.round_to(floor, torch.float32) != F32_MIN_NORMAL:
            raise Refusal("mx_divisor_floor_differs",
                          f"the block divisor's floor is {floor}, ours 2 ** -126 (the divisor of an all-zero block)")  # fmt: skip
        if not (G.is_call(d, (aten.div.Tensor,)) and d.args[1] is f):
            continue
        seen += local
        out.append(d)
    return out


def mx_tail(spec: MXSpec, eps: float) -> tuple:
    """The fused op's arguments after (input, [residual,] weight): row-major scales."""
    return (eps, spec.elem_dtype, spec.scale_mode, False)


__all__ = ["MXSpec", "mx_quantizers", "mx_tail", "cast_saturates", "block_amaxes"]
