# SPDX-License-Identifier: Apache-2.0
"""The RMSNorm in plain torch, recognised by meaning.

``y = w * cast(x * invroot(mean(x^2) + eps))`` (Hugging Face: cast back to the model dtype, then
the weight) or ``y = cast?((x * invroot(...)) * w)`` (the weight in fp32: ``F.rms_norm``,
Gemma's ``1 + w``, OLMo2), where ``invroot(v)`` is ``rsqrt(v)``, ``pow(v, -0.5)``,
``reciprocal(sqrt(v))`` or the division ``x / sqrt(v)``, and ``x`` is the input upcast to fp32
(or fp32 already), optionally the sum of a residual add.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx

from fusion_passes import fx_utils
from fusion_passes.patterns.native.graph import FLOAT_DTYPES, aten, cast_target, dtype_of, is_call, number

ADD = (aten.add.Tensor, aten.add.Scalar)
MUL = (aten.mul.Tensor,)


@dataclasses.dataclass
class NormMatch:
    spelling: str  # "hf" (cast back, then the weight) or "functional" (the weight in fp32)
    x: fx.Node  # the norm's input (in the model dtype)
    weight: fx.Node
    eps: Any  # a number (a graph node when eps is a symbolic input)
    y: fx.Node  # the normalized, weighted output the quantizer reads
    internal: list[fx.Node]  # nodes replaced along with the quantizer
    residual: tuple[fx.Node, fx.Node] | None = None  # (a, b) with x = a + b
    residual_out: fx.Node | None = None  # the node holding the new residual (a + b in the model dtype)
    #: the residual add is done in fp32 and the norm reads the unrounded sum (vLLM, SGLang); ours
    #: reads the sum rounded to the model dtype
    sum_unrounded: bool = False


def anchors(graph: fx.Graph) -> list[fx.Node]:
    """The inverse-root nodes a norm is recognised from."""
    found = []
    for target in (aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.sqrt.default):
        for n in graph.find_nodes(op="call_function", target=target):
            if target is aten.pow.Tensor_Scalar and number(n.args[1]) != -0.5:
                continue
            found.append(n)
    return found


def _other(binop: fx.Node, known: Any) -> Any:
    a, b = binop.args[0], binop.args[1]
    return b if a is known else a if b is known else None


def _user(node: fx.Node, pred) -> fx.Node | None:
    found = [u for u in node.users if pred(u)]
    return found[0] if len(found) == 1 else None


def _last_dim(dims: Any, rank: int) -> bool:
    if not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return False
    return isinstance(dims[0], int) and dims[0] in (-1, rank - 1)


def _squared(node: Any) -> fx.Node | None:
    """x for ``pow(x, 2)`` or ``x * x``."""
    if is_call(node, (aten.pow.Tensor_Scalar,)) and number(node.args[1]) == 2.0:
        return node.args[0]
    if is_call(node, MUL) and node.args[0] is node.args[1]:
        return node.args[0]
    return None


def match_norm(anchor: fx.Node) -> NormMatch | None:
    """The RMSNorm around ``anchor`` (rsqrt, pow(-0.5) or sqrt). Intermediates may have extra
    users (e.g. saved for the backward pass): the site is still recognised, and the matcher
    refuses it with a reason."""
    add = anchor.args[0]
    if not is_call(add, ADD):
        return None
    mean = next((a for a in add.args if is_call(a, (aten.mean.dim,))), None)
    if mean is None:
        return None
    eps = _other(add, mean)
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    xf = _squared(mean.args[0])
    if not keepdim or xf is None:
        return None
    xf_val = fx_utils.val(xf)
    if not isinstance(xf_val, torch.Tensor) or not _last_dim(mean.args[1], xf_val.dim()):
        return None
    if xf_val.dtype != torch.float32:
        return None
    upcast = cast_target(xf) == torch.float32
    x = xf.args[0] if upcast else xf
    x_dtype = dtype_of(x)
    if x_dtype not in FLOAT_DTYPES:
        return None
    fp32_sum = None if upcast else _fp32_residual_sum(xf)
    if fp32_sum is not None:
        x_dtype = fp32_sum[2]
    internal = [mean.args[0], mean, add, anchor]
    if anchor.target is aten.sqrt.default:
        normed = _user(anchor, lambda u: is_call(u, (aten.div.Tensor,)) and u.args[0] is xf and u.args[1] is anchor)
        if normed is None:
            inv = _user(anchor, lambda u: is_call(u, (aten.reciprocal.default,)))
            if inv is None:
                return None
            internal.append(inv)
            normed = _user(inv, lambda u: is_call(u, MUL) and _other(u, inv) is xf)
    else:
        normed = _user(anchor, lambda u: is_call(u, MUL) and _other(u, anchor) is xf)
    if normed is None:
        return None
    internal.append(normed)
    if upcast:
        internal.insert(0, xf)
    cast_back = _user(normed, lambda u: cast_target(u) == x_dtype) if x_dtype != torch.float32 else None
    weight_mul = _user(normed, lambda u: is_call(u, MUL))
    if cast_back is not None:
        # Hugging Face: cast back to the model dtype, then weight * x (or no weight at all).
        y = _user(cast_back, lambda u: is_call(u, MUL))
        if y is None:
            y, weight = cast_back, None
        else:
            weight = _other(y, cast_back)
            internal.append(cast_back)
        spelling = "hf"
    elif weight_mul is not None:
        # functional: (x * invroot) * weight in fp32, then one cast to the model dtype (or the
        # fp32 product quantized unrounded: models write that, and Inductor in torch <= 2.11
        # leaves it of F.rms_norm followed by `.to(torch.float32)`).
        weight = _other(weight_mul, normed)
        y = weight_mul
        spelling = "functional"
        if x_dtype != torch.float32:
            cast = _user(weight_mul, lambda u: cast_target(u) == x_dtype)
            if cast is not None:
                internal.append(weight_mul)
                y = cast
    else:
        return None
    if weight is not None:
        w_val = fx_utils.val(weight)
        if not isinstance(weight, fx.Node) or not isinstance(w_val, torch.Tensor) or w_val.dim() != 1:
            return None
        if w_val.shape[0] != xf_val.shape[-1]:
            return None
    m = NormMatch(spelling, x, weight, eps, y, internal)
    if fp32_sum is not None:
        a, b, _, ups, rounded = fp32_sum
        m.residual, m.residual_out, m.sum_unrounded = (a, b), rounded, True
        m.x = a  # the fused op reads the inputs of the add; xf itself is replaced
        m.internal = ups + [xf] + m.internal
        return m
    # A residual add feeding the norm: h = a + b (same shape and dtype, no broadcasting).
    if is_call(x, (aten.add.Tensor,)) and len(x.args) == 2 and not x.kwargs.get("alpha"):
        a, b = x.args
        va, vb, vx = fx_utils.val(a), fx_utils.val(b), fx_utils.val(x)
        if (
            isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and va.shape == vb.shape == vx.shape and va.dtype == vb.dtype == vx.dtype
        ):  # fmt: skip
            m.residual = (a, b)
            m.residual_out = x
    return m


def _fp32_residual_sum(xf: fx.Node):
    """(a, b, model dtype, [upcasts], rounded) for ``xf = a.float() + b.float()`` whose sum is
    also rounded back to the model dtype (the new residual) by a cast ``rounded``."""
    if not is_call(xf, (aten.add.Tensor,)) or len(xf.args) != 2 or xf.kwargs.get("alpha"):
        return None
    ups = list(xf.args)
    if not all(cast_target(u) == torch.float32 for u in ups):
        return None
    a, b = (u.args[0] for u in ups)
    va, vb = fx_utils.val(a), fx_utils.val(b)
    if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
        return None
    if va.dtype != vb.dtype or va.dtype not in (torch.float16, torch.bfloat16) or va.shape != vb.shape:
        return None
    rounded = _user(xf, lambda u: cast_target(u) == va.dtype)
    if rounded is None:
        return None
    return a, b, va.dtype, ups, rounded
