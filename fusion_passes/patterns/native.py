# SPDX-License-Identifier: Apache-2.0
"""The native-torch form: RMSNorm and quantization written in plain torch.

A structural matcher over the post-grad graph, not traced patterns: it starts at every
``rsqrt``, recognises the RMSNorm around it and the quantizer after it, checks every constant
and dtype against what our fused op computes, and refuses (with a counted reason) whatever it
cannot prove equivalent. Operand order of the commutative ops, ``add.Scalar`` vs ``add.Tensor``,
the reduction dim written as -1 or as the last positive index, where the fp32 casts sit and
2-D vs 3-D inputs are normalised here instead of being one traced pattern each; nothing is
traced, so registering costs nothing and matching a 32-layer graph takes milliseconds.

The catalogue (README "Native spellings" has the exact forms):

* norms: Hugging Face Llama/Mistral/Qwen2 ``RMSNorm`` (upcast, ``pow(2).mean(-1, keepdim=True)``,
  ``rsqrt(var + eps)``, cast back, ``weight * x``) and ``torch.nn.functional.rms_norm`` /
  ``torch.nn.RMSNorm``; each optionally fed by a residual add ``h = x + residual``;
* quantizers (fusion_passes/native_forms.py): FP8 static per-tensor (``(y.float() / scale)
  .clamp(fp8 min, fp8 max).to(fp8)``), FP8 dynamic per-token (vLLM's scale floor
  ``1 / (fp8 max * 512)``), FP8 per-token-group 32/64/128 (absmax floored at 1e-10), INT8
  static and dynamic per-token (``round`` then ``clamp(-128, 127)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx as fx

from fusion_kernels import platform
from fusion_kernels.reference import GROUP_ABSMAX_FLOOR, per_token_min_scale
from fusion_passes import fx_utils, policy
from fusion_passes.patterns import Refusal
from fusion_passes.quant_key import FP8_DTYPES, GROUP_SIZES, QuantKey, Scheme
from fusion_passes.registry import FAMILIES, Registry, family_key, fused_op_name
from fusion_passes.reporting import GraphReport, Site

aten = torch.ops.aten
prims = torch.ops.prims
CONVERT = (prims.convert_element_type.default, aten._to_copy.default)
ADD = (aten.add.Tensor, aten.add.Scalar)
MUL = (aten.mul.Tensor,)
DIV = (aten.div.Tensor,)
RESHAPE = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
NORM_SPELLINGS = ("hf", "functional")
QUANT_FORMS = FAMILIES


def pattern_name(spelling: str, residual: bool, form: str) -> str:
    return f"native:{'add+' if residual else ''}rms_norm_{spelling}+{form}"


def all_pattern_names() -> list[str]:
    return [pattern_name(s, r, f) for s in NORM_SPELLINGS for r in (False, True) for f in QUANT_FORMS]


# --- small graph helpers ----------------------------------------------------------------------


def _is(node: Any, targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _dtype(node: Any) -> torch.dtype | None:
    v = fx_utils.val(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _other(binop: fx.Node, known: fx.Node) -> Any:
    a, b = binop.args[0], binop.args[1]
    if a is known:
        return b
    if b is known:
        return a
    return None


def _is_cast_to(node: Any, dtype: torch.dtype) -> bool:
    if not _is(node, CONVERT):
        return False
    if node.target is prims.convert_element_type.default:
        return node.args[1] == dtype
    return node.kwargs.get("dtype") == dtype and len(node.args) == 1


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _last_dim(dims: Any, rank: int) -> bool:
    if not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return False
    d = dims[0]
    return isinstance(d, int) and d in (-1, rank - 1)


def _clamp_bounds(node: fx.Node) -> tuple[fx.Node, float | None, float | None] | None:
    """(input, lo, hi) of a clamp chain: clamp(min, max), clamp_min->clamp_max or clamp_max->clamp_min."""
    if _is(node, (aten.clamp.default,)):
        lo = _number(node.args[1] if len(node.args) > 1 else node.kwargs.get("min"))
        hi = _number(node.args[2] if len(node.args) > 2 else node.kwargs.get("max"))
        return node.args[0], lo, hi
    if _is(node, (aten.clamp_max.default,)) and _is(node.args[0], (aten.clamp_min.default,)):
        inner = node.args[0]
        return inner.args[0], _number(inner.args[1]), _number(node.args[1])
    if _is(node, (aten.clamp_min.default,)) and _is(node.args[0], (aten.clamp_max.default,)):
        inner = node.args[0]
        return inner.args[0], _number(node.args[1]), _number(inner.args[1])
    return None


def _close(a: float | None, b: float, rel: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= rel * abs(b)


# --- the norm ---------------------------------------------------------------------------------


@dataclasses.dataclass
class NormMatch:
    spelling: str
    x: fx.Node  # the norm's input (in the model dtype)
    weight: fx.Node
    eps: Any  # a number (a graph node when eps is a symbolic input)
    y: fx.Node  # the normalized, weighted output the quantizer reads
    internal: list[fx.Node]  # nodes replaced along with the quantizer
    residual: tuple[fx.Node, fx.Node] | None = None  # (a, b) with x = a + b


def _user(node: fx.Node, pred) -> fx.Node | None:
    """The one user of ``node`` that satisfies ``pred`` (None if none or several)."""
    found = [u for u in node.users if pred(u)]
    return found[0] if len(found) == 1 else None


def match_norm(rsqrt: fx.Node) -> NormMatch | None:
    """The RMSNorm around ``rsqrt``. Intermediates may have extra users (e.g. saved for the
    backward pass): the site is still recognised, and the check refuses it with a reason."""
    add = rsqrt.args[0]
    if not _is(add, ADD):
        return None
    mean = next((a for a in add.args if _is(a, (aten.mean.dim,))), None)
    if mean is None:
        return None
    eps = _other(add, mean)
    pw = mean.args[0]
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    if not keepdim or not _is(pw, (aten.pow.Tensor_Scalar,)) or pw.args[1] != 2:
        return None
    xf = pw.args[0]
    xf_val = fx_utils.val(xf)
    if not isinstance(xf_val, torch.Tensor) or not _last_dim(mean.args[1], xf_val.dim()):
        return None
    if xf_val.dtype != torch.float32:
        return None
    upcast = _is_cast_to(xf, torch.float32)
    x = xf.args[0] if upcast else xf
    x_dtype = _dtype(x)
    if x_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    normed = _user(rsqrt, lambda u: _is(u, MUL) and _other(u, rsqrt) is xf)
    if normed is None:
        return None
    internal = [pw, mean, add, rsqrt, normed]
    if upcast:
        internal.insert(0, xf)
    cast_back = _user(normed, lambda u: _is_cast_to(u, x_dtype)) if x_dtype != torch.float32 else None
    weight_mul = _user(normed, lambda u: _is(u, MUL))
    if cast_back is not None:
        # Hugging Face: cast back to the model dtype, then weight * x.
        y = _user(cast_back, lambda u: _is(u, MUL))
        if y is None:
            return None
        weight = _other(y, cast_back)
        internal.append(cast_back)
        spelling = "hf"
    elif weight_mul is not None:
        # functional: (x * rsqrt) * weight in fp32, then one cast to the model dtype.
        weight = _other(weight_mul, normed)
        y = weight_mul
        spelling = "functional"
        if x_dtype != torch.float32:
            cast = _user(weight_mul, lambda u: _is_cast_to(u, x_dtype))
            if cast is not None:
                internal.append(weight_mul)
                y = cast
            # else: the fp32 product is quantized unrounded. Models write that, and Inductor
            # (torch <= 2.11) leaves it of F.rms_norm followed by `.to(torch.float32)`: it removes
            # the fp32 -> 16-bit -> fp32 round trip. Same class of difference as the cast-once
            # form (checked in FusionPass._check); y is the fp32 product.
    else:
        return None
    w_val = fx_utils.val(weight)
    if not isinstance(weight, fx.Node) or not isinstance(w_val, torch.Tensor) or w_val.dim() != 1:
        return None
    if w_val.shape[0] != xf_val.shape[-1]:
        return None
    m = NormMatch(spelling, x, weight, eps, y, internal)
    # A residual add feeding the norm: h = a + b (same shape and dtype, no broadcasting).
    if _is(x, (aten.add.Tensor,)) and len(x.args) == 2 and not x.kwargs.get("alpha"):
        a, b = x.args
        va, vb, vx = fx_utils.val(a), fx_utils.val(b), fx_utils.val(x)
        if (
            isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and va.shape == vb.shape == vx.shape and va.dtype == vb.dtype == vx.dtype
        ):  # fmt: skip
            m.residual = (a, b)
    return m


# --- the quantizer ----------------------------------------------------------------------------


@dataclasses.dataclass
class QuantMatch:
    form: str
    key: QuantKey
    q: fx.Node  # the quantized output node
    scale: fx.Node | None  # static: the scale input
    scales: fx.Node | None  # dynamic: the scale node the model reads ([..., 1] or [..., G, 1])
    nodes: list[fx.Node]  # every node of the quantizer (replaced)
    group_reshape: fx.Node | None = None  # per-group: the reshape back to [..., H]


def _quant_tail(v: fx.Node, nodes: list[fx.Node]):
    """From the scaled value v: [round ->] clamp [-> round] -> cast.

    Returns (dtype, cast, lo, hi, rounded) or None; appends the nodes it walked to ``nodes``.
    """
    seq: list[fx.Node] = []
    cur = _only_user(v)
    rounded = False
    if _is(cur, (aten.round.default,)):
        seq.append(cur)
        rounded = True
        cur = _only_user(cur)
    first = cur
    if not _is(first, (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)):
        return None
    last = first
    nxt = _only_user(first)
    if _is(first, (aten.clamp_min.default, aten.clamp_max.default)) and _is(
        nxt, (aten.clamp_min.default, aten.clamp_max.default)
    ):
        last = nxt
    bounds = _clamp_bounds(last)
    if bounds is None or bounds[0] is not (seq[-1] if rounded else v):
        return None
    seq += [first] if first is last else [first, last]
    cur = _only_user(last)
    if not rounded and _is(cur, (aten.round.default,)):
        seq.append(cur)
        rounded = True
        cur = _only_user(cur)
    if not _is(cur, CONVERT):
        return None
    seq.append(cur)
    nodes.extend(seq)
    return _dtype(cur), cur, bounds[1], bounds[2], rounded


def _check_bounds(dtype: torch.dtype, lo: float | None, hi: float | None, rounded: bool) -> None:
    if dtype == torch.int8:
        if not rounded:
            raise Refusal("int8_without_rounding")
        if not (_close(lo, -128.0) and _close(hi, 127.0)):
            raise Refusal("clamp_bound_mismatch", f"int8 clamp [{lo}, {hi}]")
        return
    if dtype not in FP8_DTYPES:
        raise Refusal("unsupported_quant_dtype", str(dtype))
    if rounded:
        raise Refusal("fp8_with_rounding")
    fmax = platform.FP8_MAX[dtype]
    if not (_close(lo, -fmax) and _close(hi, fmax)):
        raise Refusal("clamp_bound_mismatch", f"{dtype} clamp [{lo}, {hi}], its range is +-{fmax}")


def match_quant(y: fx.Node) -> QuantMatch | None:
    """The quantizer reading y, or None when y does not feed one of the catalogue's forms.

    Raises Refusal for a quantizer that matches structurally but computes something else.
    """
    users = list(y.users)
    yf = next((u for u in users if _is_cast_to(u, torch.float32)), None)
    y_dtype = _dtype(y)
    src = yf if yf is not None else (y if y_dtype == torch.float32 else None)
    if src is None:
        return None
    nodes: list[fx.Node] = [yf] if yf is not None else []

    # Per-group: reshape to [..., H/G, G] first.
    reshape = next((u for u in src.users if _is(u, RESHAPE)), None)
    if reshape is not None:
        return _match_group(y, src, reshape, nodes)

    div = next((u for u in src.users if _is(u, DIV) and u.args[0] is src), None)
    if div is None:
        return None
    scale = div.args[1]
    # A dynamic scale reads |y| (before or after the upcast).
    amax_user = next((u for u in users if _is(u, (aten.abs.default,))), None)
    if amax_user is None and yf is not None:
        amax_user = next((u for u in yf.users if _is(u, (aten.abs.default,))), None)
    nodes.append(div)
    tail = _quant_tail(div, nodes)
    if tail is None:
        return None
    dtype, cast, lo, hi, rounded = tail
    if amax_user is None:
        # Static: the scale is a tensor input with one element.
        sv = fx_utils.val(scale)
        if not isinstance(scale, fx.Node) or not isinstance(sv, torch.Tensor) or sv.numel() != 1:
            return None
        if sv.dtype != torch.float32:
            raise Refusal("scale_not_fp32", str(sv.dtype))
        _check_bounds(dtype, lo, hi, rounded)
        form = "int8_static" if dtype == torch.int8 else "fp8_static"
        return QuantMatch(form, QuantKey(dtype, Scheme.STATIC), cast, scale, None, nodes)
    # Per-token: scale = clamp_min(amax(|y|, -1, keepdim) [-> f32] / qmax, min_scale).
    scale_chain = _match_dynamic_scale(amax_user, scale, y)
    if scale_chain is None:
        return None
    chain_nodes, qmax_seen, floor = scale_chain
    _check_bounds(dtype, lo, hi, rounded)
    key = QuantKey(dtype, Scheme.PER_TOKEN)
    if not _close(qmax_seen, key.qmax):
        raise Refusal("scale_divisor_mismatch", f"amax / {qmax_seen}, expected / {key.qmax}")
    if not _close(floor, per_token_min_scale(dtype), rel=1e-5):
        raise Refusal("min_scale_mismatch", f"floor {floor}, expected {per_token_min_scale(dtype)}")
    form = "int8_per_token" if dtype == torch.int8 else "fp8_per_token"
    return QuantMatch(form, key, cast, None, scale, nodes + chain_nodes)


def _match_dynamic_scale(abs_node: fx.Node, scale: Any, y: fx.Node):
    """abs -> amax(-1, keepdim) [-> f32] -> div(qmax) -> clamp_min(floor) == scale."""
    amax = _only_user(abs_node)
    if not _is(amax, (aten.amax.default,)):
        return None
    rank = fx_utils.val(abs_node.args[0]).dim()
    dims = amax.args[1] if len(amax.args) > 1 else amax.kwargs.get("dim")
    keepdim = amax.args[2] if len(amax.args) > 2 else amax.kwargs.get("keepdim", False)
    if not keepdim or not _last_dim(list(dims) if isinstance(dims, (list, tuple)) else [dims], rank):
        raise Refusal("absmax_not_over_last_dim", f"amax over {dims}")
    nodes = [abs_node, amax]
    cur = _only_user(amax)
    if _is_cast_to(cur, torch.float32):
        nodes.append(cur)
        nxt = _only_user(cur)
    else:
        nxt = cur
    if not _is(nxt, DIV) or _number(nxt.args[1]) is None:
        return None
    qmax_seen = _number(nxt.args[1])
    nodes.append(nxt)
    floor_node = _only_user(nxt)
    if not _is(floor_node, (aten.clamp_min.default,)) or floor_node is not scale:
        return None
    nodes.append(floor_node)
    return nodes, qmax_seen, _number(floor_node.args[1])


def _match_group(y: fx.Node, src: fx.Node, reshape: fx.Node, nodes: list[fx.Node]) -> QuantMatch | None:
    shape = fx_utils.val(reshape).shape
    y_shape = fx_utils.val(y).shape
    if len(shape) != len(y_shape) + 1 or tuple(shape[:-2]) != tuple(y_shape[:-1]):
        return None
    groups, group_size = shape[-2], shape[-1]
    if not isinstance(group_size, int) or groups * group_size != y_shape[-1]:
        return None
    nodes.append(reshape)
    abs_node = next((u for u in reshape.users if _is(u, (aten.abs.default,))), None)
    div = next((u for u in reshape.users if _is(u, DIV) and u.args[0] is reshape), None)
    if abs_node is None or div is None:
        return None
    amax = _only_user(abs_node)
    if not _is(amax, (aten.amax.default,)):
        return None
    dims = amax.args[1] if len(amax.args) > 1 else amax.kwargs.get("dim")
    keepdim = amax.args[2] if len(amax.args) > 2 else amax.kwargs.get("keepdim", False)
    if not keepdim or not _last_dim(list(dims) if isinstance(dims, (list, tuple)) else [dims], len(shape)):
        raise Refusal("absmax_not_over_last_dim", f"amax over {dims}")
    floor = _only_user(amax)
    if not _is(floor, (aten.clamp_min.default,)):
        return None
    sdiv = _only_user(floor)
    if not _is(sdiv, DIV) or _number(sdiv.args[1]) is None or div.args[1] is not sdiv:
        return None
    nodes += [abs_node, amax, floor, sdiv, div]
    tail = _quant_tail(div, nodes)
    if tail is None:
        return None
    dtype, cast, lo, hi, rounded = tail
    back = _only_user(cast)
    if not _is(back, RESHAPE) or tuple(fx_utils.val(back).shape) != tuple(y_shape):
        return None
    nodes.append(back)
    _check_bounds(dtype, lo, hi, rounded)
    if dtype == torch.int8:
        raise Refusal("int8_per_group_unsupported")
    if group_size not in GROUP_SIZES:
        raise Refusal("unsupported_group_size", str(group_size))
    key = QuantKey(dtype, Scheme.PER_GROUP, group_size)
    if not _close(_number(sdiv.args[1]), key.qmax):
        raise Refusal("scale_divisor_mismatch", f"amax / {sdiv.args[1]}, expected / {key.qmax}")
    if not _close(_number(floor.args[1]), GROUP_ABSMAX_FLOOR, rel=1e-3):
        raise Refusal("absmax_floor_mismatch", f"floor {floor.args[1]}, expected {GROUP_ABSMAX_FLOOR}")
    return QuantMatch("fp8_per_group", key, back, None, sdiv, nodes, group_reshape=back)


# --- the matcher --------------------------------------------------------------------------------


class NativeMatcher:
    """Finds native RMSNorm -> quant sites and rewrites them into our fused ops."""

    def __init__(self, registry: Registry, native: str, wanted: set[str] | None) -> None:
        self.registry = registry
        self.native = native
        self.inactive: dict[str, str] = {}
        self._active: list[str] = []
        for name in all_pattern_names():
            residual = "add+" in name
            form = name.rsplit("+", 1)[1]
            op = fused_op_name(family_key(form), residual)
            if wanted is not None and name not in wanted:
                self.inactive[name] = "not selected (patterns=...)"
            elif native == "never":
                self.inactive[name] = 'native="never"'
            elif op in registry.missing:
                self.inactive[name] = f"{op}: {registry.missing[op]}"
            else:
                self._active.append(name)

    def all_names(self) -> set[str]:
        return set(all_pattern_names())

    def active_names(self) -> list[str]:
        return list(self._active)

    def apply(self, graph: fx.Graph, g: GraphReport) -> bool:
        changed = False
        for rsqrt in list(graph.find_nodes(op="call_function", target=aten.rsqrt.default)):
            if rsqrt.graph is not graph or rsqrt not in graph.nodes:
                continue
            norm = match_norm(rsqrt)
            if norm is None:
                continue
            try:
                quant = match_quant(norm.y)
            except Refusal as r:
                g.sites.append(Site(g.index, f"native:rms_norm_{norm.spelling}", False, r.reason, rsqrt.name,
                                    fx_utils.source_line(rsqrt), r.detail))  # fmt: skip
                continue
            if quant is None:
                continue
            name = pattern_name(norm.spelling, norm.residual is not None, quant.form)
            where = fx_utils.source_line(quant.q) or fx_utils.source_line(rsqrt)
            if name not in self._active:
                if name in self.inactive and self.native != "never":
                    g.sites.append(
                        Site(g.index, name, False, "pattern_inactive", rsqrt.name, where, self.inactive[name])
                    )
                elif self.native == "never":
                    g.sites.append(Site(g.index, name, False, "native_policy_never", rsqrt.name, where))
                continue
            try:
                self._check(norm, quant)
            except Refusal as r:
                g.sites.append(Site(g.index, name, False, r.reason, rsqrt.name, where, r.detail))
                continue
            fused = self._rewrite(graph, norm, quant)
            g.sites.append(Site(g.index, name, True, fused.target._schema.name.split("::")[-1], fused.name, where))
            changed = True
        return changed

    def _check(self, norm: NormMatch, quant: QuantMatch) -> None:
        # Every intermediate must be private to the site (one consumer inside the pattern).
        replaced = set(norm.internal) | set(quant.nodes) | {norm.y}
        outputs = {quant.q, quant.scales}
        for n in replaced:
            if n in outputs:
                continue
            for u in n.users:
                if u not in replaced:
                    raise Refusal("norm_output_has_other_users" if n is norm.y else "intermediate_has_other_users",
                                  f"{n.name} is also used by {u.name}")  # fmt: skip
        eps = norm.eps
        if _number(eps) is None:
            raise Refusal("eps_not_constant", "compile with mark_dynamic instead of dynamic=True")
        x_val = fx_utils.val(norm.x)
        if x_val.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise Refusal("unsupported_dtype", str(x_val.dtype))
        w_dtype = _dtype(norm.weight)
        if w_dtype not in (x_val.dtype, torch.float32):
            raise Refusal("unsupported_weight_dtype", str(w_dtype))
        if norm.spelling == "functional" and x_val.dtype != torch.float32 and quant.key.dtype == torch.int8:
            # F.rms_norm rounds once (after the weight), or not at all when its fp32 result is
            # quantized directly; our op rounds where the Hugging Face RMSNorm does. INT8 steps
            # are fine enough that this moves more than 5% of the values by one step (measured
            # 6.5% in bf16): not equivalent, so not rewritten.
            raise Refusal("int8_rounding_points_differ", "F.rms_norm in a 16-bit model followed by INT8")
        if quant.key.scheme is Scheme.PER_GROUP and x_val.shape[-1] % quant.key.group_size:
            raise Refusal("group_size_not_dividing_hidden")
        residual = norm.residual is not None
        fused = self.registry.fused_ops.get((quant.key, residual))
        if fused is None:
            raise Refusal("fused_op_missing", fused_op_name(quant.key, residual))
        if not platform.has_kernel(fused._schema.name, x_val.device):
            raise Refusal("no_kernel_for_device", str(x_val.device))
        info = platform.device_info(x_val.device)
        ok, reason = policy.native_rewrite_allowed(self.native, info, quant.key, residual, _tokens(x_val))
        if not ok:
            raise Refusal(reason)

    def _rewrite(self, graph: fx.Graph, norm: NormMatch, quant: QuantMatch) -> fx.Node:
        residual = norm.residual is not None
        op = self.registry.fused_ops[(quant.key, residual)]
        key = quant.key
        head = (norm.residual[0], norm.residual[1], norm.weight) if residual else (norm.x, norm.weight)
        eps = float(norm.eps)
        if key.scheme is Scheme.STATIC:
            tail = (quant.scale, eps, key.dtype) if key.is_fp8 else (quant.scale, eps)
        elif key.scheme is Scheme.PER_TOKEN:
            tail = (eps, key.dtype, None)
        else:
            tail = (eps, key.group_size, False, False, key.dtype)
        dynamic = key.scheme is not Scheme.STATIC
        with graph.inserting_before(quant.q):
            fused = fx_utils.call(graph, op, head + tail, like=quant.q)
            multi = dynamic or residual
            q = fx_utils.getitem(graph, fused, 0) if multi else fused
            quant.q.replace_all_uses_with(q)
            if dynamic:
                scales = fx_utils.getitem(graph, fused, 1)
                if key.scheme is Scheme.PER_GROUP:
                    # The model's scale node is [..., G, 1]; ours is [..., G].
                    scales = fx_utils.call(graph, aten.unsqueeze.default, (scales, -1), like=quant.q)
                quant.scales.replace_all_uses_with(scales)
            if residual:
                new_res = fx_utils.getitem(graph, fused, 2 if dynamic else 1)
                norm.x.replace_all_uses_with(new_res)
        # Erase the replaced nodes, consumers first.
        dead = [*quant.nodes, norm.y, *norm.internal]
        if residual:
            dead.append(norm.x)
        for n in reversed(_topo_order(graph, dead)):
            if not n.users:
                graph.erase_node(n)
        return fused


def _tokens(x_val: torch.Tensor) -> int | None:
    """Rows of a [..., H] value; a symbolic size counts by its hint (None when it has none)."""
    rows = 1
    for size in x_val.shape[:-1]:
        if isinstance(size, torch.SymInt):
            hint = getattr(size.node, "hint", None)
            if hint is None:
                return None
            size = hint
        rows *= int(size)
    return rows


def _topo_order(graph: fx.Graph, nodes: list[fx.Node]) -> list[fx.Node]:
    wanted = set(nodes)
    return [n for n in graph.nodes if n in wanted]


__all__ = ["NativeMatcher", "all_pattern_names", "match_norm", "match_quant", "Refusal"]
