# SPDX-License-Identifier: Apache-2.0
"""torchao's MXFP8 RCEIL scale as it runs off Blackwell (the ``log2`` fallback of ``to_mx``), read
by meaning: our op's ``"rceil"`` mode where the block absmaxes are 16-bit values (see
:func:`rceil_quantizer`); the FLOOR and CEIL spellings are :mod:`.mx`'s."""

from __future__ import annotations

import torch
import torch.fx as fx

from fusion_passes.patterns import Refusal
from fusion_passes.patterns.native import graph as G
from fusion_passes.patterns.native.mx import MXFP8_POW2, _clamp_user, _last_clamp, _only, mxfp8_match
from fusion_passes.patterns.native.quant import QuantMatch

aten = G.aten


def rceil_quantizer(div: fx.Node, view: fx.Node, y: fx.Node, seen: list) -> QuantMatch | None:
    """torchao's RCEIL fallback (``to_mx`` off Blackwell, or eagerly), after a 16-bit absmax ``a``::

        d    = a / qmax                                       (fp32)
        byte = where(isnan(d), 255, where(isinf(d), 254, u8(clamp(ceil(log2(d)), -127, 127) + 127)))
        f    = where(byte == 255, d, where(byte == 254, 2 ** -127, where(byte == 0, 1, exp2(127 - byte))))
        q    = cast(fp8, clamp(block * f, -qmax, qmax))

    Our op's rceil is the exact round-up of ``d`` (``cvt.rp.satfinite.ue8m0``) with the same factors
    for bytes 0, 254 and 255. The two bytes differ only where ``d`` lies within an ulp of ``log2``
    above a power of two. ``a`` is a 16-bit value ``m * 2 ** e`` (``m`` < 2048) and ``qmax`` is
    ``7 * 2 ** k``, so ``d`` is a power of two (``m = 7 * 2 ** j``: ``log2`` exact, both agree) or at
    least ``1 / (7 * 256)`` above one, far beyond ``log2``'s rounding (about 1e-7 relative). So for
    such ``a`` the bytes are the same, all-zero, subnormal, Inf and NaN blocks included."""
    local: list = [div]
    qmax = G.const(div.args[1], local)
    if qmax is None:
        return None
    logs = [u for u in div.users if G.is_call(u, (aten.log2.default,))]
    ceil = _only(logs[0], local) if len(logs) == 1 else None
    if not G.is_call(ceil, (aten.ceil.default,)):
        return None
    local += [logs[0], ceil]
    end = _last_clamp(_only(ceil, local))
    c = G.clamp(end, local) if end is not None else None
    if c is None or c[0] is not ceil or c[1] != -127 or c[2] != 127:
        raise Refusal("mx_scale_clamp_differs", f"rceil exponent clamped to {c[1:] if c else None}, ours [-127, 127]")
    add = _only(end, local)
    if not (G.is_call(add, (aten.add.Tensor,)) and add.args[0] is end and G.number(add.args[1]) == 127):
        raise Refusal("mx_scale_not_recognised", "the rceil exponent is not biased by 127")
    conv = _only(add, local)
    if G.cast_target(conv) != torch.uint8:
        raise Refusal("mx_scale_not_recognised", "the biased exponent is not cast to uint8")
    local += [add, conv]
    # where(isinf(d), 254, ...) and where(isnan(d), 255, ...), in either order
    byte, specials = conv, {}
    for _ in range(2):
        w = _only(byte, local)
        if not (G.is_call(w, (aten.where.self,)) and w.args[2] is byte):
            break
        cond, value = w.args[0], G.const(w.args[1], local)
        kind = "nan" if G.is_call(cond, (aten.isnan.default,)) else "inf" if G.is_call(cond, (aten.isinf.default,)) else None
        if kind is None or cond.args[0] is not div:
            break
        specials[kind] = value
        local += [cond, w]
        byte = w
    if specials != {"nan": 255, "inf": 254}:
        raise Refusal("mx_nan_scale_differs", f"rceil special bytes {specials}, ours NaN -> 255, Inf -> 254")
    # the factor: exp2(127 - f32(byte)), then where(byte == k, v, ...) for k = 0, 254, 255
    exps = [u for u in byte.users if G.cast_target(u) == torch.float32]
    sub = _only(exps[0], local) if len(exps) == 1 else None
    if not (G.is_call(sub, (aten.sub.Tensor, aten.rsub.Scalar)) and G.number(sub.args[0] if sub.target is aten.sub.Tensor
                                                                              else sub.args[1]) == 127):  # fmt: skip
        return None
    exp2 = _only(sub, local)
    if not G.is_call(exp2, (aten.exp2.default,)):
        return None
    local += [exps[0], sub, exp2]
    factor, cases = exp2, {}
    while G.is_call(w := _only(factor, local), (aten.where.self,)) and w.args[2] is factor:
        cond = w.args[0]
        if not (G.is_call(cond, (aten.eq.Scalar,)) and cond.args[0] is byte and G.number(cond.args[1]) is not None):
            break
        k = int(cond.args[1])
        cases[k] = div if w.args[1] is div else G.const(w.args[1], local)
        local += [cond, w]
        factor = w
    if cases != {0: 1.0, 254: 2.0**-127, 255: div}:
        raise Refusal("mx_scale_not_recognised", f"rceil factors for bytes {sorted(cases)} differ from ours")
    muls = [u for u in factor.users if G.is_call(u, (aten.mul.Tensor,))]
    if len(muls) != 1 or len(factor.users) != 1:
        return None
    mul = muls[0]
    num = mul.args[0] if mul.args[1] is factor else mul.args[1]
    if G.through_value_preserving(num, []) is not y or G.shape_of(num) != G.shape_of(view):
        return None
    G.through_value_preserving(num, local)
    local.append(mul)
    users = list(mul.users)
    cl = _clamp_user(users[0], local) if len(users) == 1 else None
    if cl is None:
        raise Refusal("no_clamp", "rceil elements not clamped before the cast")
    v, bounds = cl
    casts = [u for u in v.users if G.cast_target(u) is not None]
    if len(casts) != 1 or len(v.users) != 1:
        return None
    q = casts[0]
    dtype = G.cast_target(q)
    if dtype not in MXFP8_POW2:
        raise Refusal("mx_elements_unsupported", f"blocks of 32 cast to {dtype}")
    fmax = torch.finfo(dtype).max
    if qmax != fmax:
        raise Refusal("mx_scale_exponent_mismatch", f"rceil divides by {qmax:g}, {dtype}'s largest value is {fmax:g}")
    if not (bounds[0] == -fmax and bounds[1] == fmax):
        raise Refusal("clamp_bound_mismatch", f"{dtype} clamp [{bounds[0]}, {bounds[1]}], its range is +-{fmax:g}")
    scale_nodes = [u for u in byte.users if G.is_call(u, (aten.view.dtype,)) and u.args[1] == torch.float8_e8m0fnu]
    if len(scale_nodes) != 1:
        return None
    seen += local
    return mxfp8_match(q, y, dtype, "rceil", scale_nodes, seen)
