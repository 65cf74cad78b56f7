# SPDX-License-Identifier: Apache-2.0
"""The native matcher: finds every RMSNorm -> quantize site, decides which fused op reproduces
it, checks the site, and rewrites it.

Several identical quantizers of one norm output (one per linear: q/k/v, gate/up) are one site:
fused once, every reader rewired. Quantizers that differ, or a norm output read by anything
else, are refused with a reason.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from fusion_kernels import platform
from fusion_passes import fx_utils, policy
from fusion_passes.patterns import Refusal
from fusion_passes.patterns.native import graph as G
from fusion_passes.patterns.native.norm import NormMatch, anchors, match_norm
from fusion_passes.patterns.native.ops import FORMS, FusedCall, choose_op, form_of, with_norm_out
from fusion_passes.patterns.native.mx import mx_quantizers
from fusion_passes.patterns.native.quant import QuantMatch, match_quantizer, quant_casts
from fusion_passes.quant_key import QuantKey, Scheme
from fusion_passes.registry import Registry
from fusion_passes.reporting import GraphReport, Site

NORM_SPELLINGS = ("hf", "functional")


def pattern_name(spelling: str, residual: bool, form: str) -> str:
    return f"native:{'add+' if residual else ''}rms_norm_{spelling}+{form}"


def all_pattern_names() -> list[str]:
    return [pattern_name(s, r, f) for s in NORM_SPELLINGS for r in (False, True) for f in FORMS]


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
            missing = [op for op in FORMS[form](residual) if op in registry.missing]
            if wanted is not None and name not in wanted:
                self.inactive[name] = "not selected (patterns=...)"
            elif native == "never":
                self.inactive[name] = 'native="never"'
            elif len(missing) == len(FORMS[form](residual)):
                self.inactive[name] = "; ".join(f"{op}: {registry.missing[op]}" for op in missing)
            else:
                self._active.append(name)

    def all_names(self) -> set[str]:
        return set(all_pattern_names())

    def active_names(self) -> list[str]:
        return list(self._active)

    def apply(self, graph: fx.Graph, g: GraphReport) -> bool:
        changed = False
        for anchor in anchors(graph):
            if anchor.graph is not graph or anchor not in graph.nodes:
                continue
            norm = match_norm(anchor)
            if norm is None:
                continue
            where = fx_utils.source_line(anchor)
            label = f"native:rms_norm_{norm.spelling}"
            try:
                quants = self._quantizers(norm)
            except Refusal as r:
                g.sites.append(Site(g.index, label, False, r.reason, anchor.name, where, r.detail))
                continue
            if not quants:
                continue
            name = pattern_name(norm.spelling, norm.residual is not None, form_of(quants[0]))
            where = fx_utils.source_line(quants[0].q) or where
            if name not in self._active:
                if self.native == "never":
                    g.sites.append(Site(g.index, name, False, "native_policy_never", anchor.name, where))
                elif name in self.inactive:
                    g.sites.append(
                        Site(g.index, name, False, "pattern_inactive", anchor.name, where, self.inactive[name])
                    )
                continue
            try:
                call = self._check(norm, quants)
            except Refusal as r:
                g.sites.append(Site(g.index, name, False, r.reason, anchor.name, where, r.detail))
                continue
            fused = self._rewrite(graph, norm, quants, call)
            details = [f"{len(quants)} quantizers merged"] if len(quants) > 1 else []
            if call.norm_out:
                details.append("normalised output returned too")
            detail = "; ".join(details)
            g.sites.append(Site(g.index, name, True, call.op_name, fused.name, where, detail))
            changed = True
        return changed

    # -- recognising ------------------------------------------------------------------------

    def _quantizers(self, norm: NormMatch) -> list[QuantMatch]:
        """Every quantizer of the norm output; identical ones are one site."""
        # Microscaling quantizers first: their element casts are not scale-rule quantizers.
        matches: list[QuantMatch] = mx_quantizers(norm.y)
        taken = {n for m in matches for n in m.seen}
        for q in quant_casts(norm.y):
            if q in taken:
                continue
            m = match_quantizer(q, norm.y)
            if m is not None:
                matches.append(m)
        # A cast that is part of another quantizer (a lossless round trip) is not one itself.
        inner = {n for m in matches for n in m.seen if n is not m.q}
        matches = [m for m in matches if m.q not in inner]
        if len({m.signature() for m in matches}) > 1:
            raise Refusal("different_quantizers_of_one_norm", ", ".join(_describe(m) for m in matches))
        return matches

    def _check(self, norm: NormMatch, quants: list[QuantMatch]) -> FusedCall:
        m = quants[0]
        region = set(norm.internal) | {norm.y} | {n for q in quants for n in q.seen}
        outputs = {q.q for q in quants} | {n for q in quants for n in q.scale_nodes}
        if norm.sum_unrounded:
            region.add(norm.residual_out)
            outputs.add(norm.residual_out)
        escapes = [(n, u) for n in region if n not in outputs for u in n.users if u not in region]
        # Only the normalised output read elsewhere (an MoE router, a 16-bit branch): the rule op's
        # norm-output variant returns it too, where it computes y exactly as the spelling rounds it.
        y_readers = [u for n, u in escapes if n is norm.y]
        if y_readers and len(y_readers) == len(escapes):
            escapes = []
        else:
            y_readers = []
        if escapes:
            # Deterministic, and autograd first: a value the forward graph returns for the backward
            # pass is the cause the user can act on (run under no_grad / inference_mode).
            for_backward = [(n, u) for n, u in escapes if u.op == "output"]
            n, u = min(for_backward or escapes, key=lambda e: e[0].name)
            raise Refusal(*_other_user_reason(n, u, norm))
        eps = norm.eps
        if G.number(eps) is None:
            raise Refusal("eps_not_constant", "compile with mark_dynamic instead of dynamic=True")
        x_val = fx_utils.val(norm.x)
        if x_val.dtype not in G.FLOAT_DTYPES:
            raise Refusal("unsupported_dtype", str(x_val.dtype))
        w_dtype = G.dtype_of(norm.weight) if norm.weight is not None else x_val.dtype
        if w_dtype not in (x_val.dtype, torch.float32):
            raise Refusal("unsupported_weight_dtype", str(w_dtype))
        if norm.spelling == "functional" and x_val.dtype != torch.float32 and m.dtype == torch.int8:
            # F.rms_norm rounds once (after the weight), or not at all when its fp32 result is
            # quantized directly; our op rounds where the Hugging Face RMSNorm does. INT8 steps
            # are fine enough that this moves more than 5% of the values by one step (measured
            # 6.5% in bf16): not equivalent, so not rewritten.
            raise Refusal("int8_rounding_points_differ", "F.rms_norm in a 16-bit model followed by INT8")
        if norm.spelling == "functional" and x_val.dtype == torch.float16 and m.rule is not None:
            # Rounded once (F.rms_norm) instead of twice, a normalized value in fp16's subnormal
            # range (a row or group of tiny values, e.g. beside an outlier) can differ by a large
            # fraction of itself, and a dynamic scale amplifies that to several FP8 steps.
            raise Refusal("rounding_points_differ_fp16", "F.rms_norm in fp16 followed by a dynamic quantizer")
        if norm.sum_unrounded and m.dtype == torch.int8:
            # The norm reads the fp32 residual sum where ours reads it rounded to the model dtype:
            # a 16-bit rounding of the input, too coarse for INT8 steps (as above).
            raise Refusal("int8_rounding_points_differ", "the norm reads the unrounded fp32 residual sum")
        if m.mx is not None:
            return self._check_mx(norm, m, x_val, y_readers)
        if m.rule is not None and m.rule.group_size and x_val.shape[-1] % m.rule.group_size:
            raise Refusal("group_size_not_dividing_hidden")
        if y_readers:
            user = f"{norm.y.name} is also used by {min(u.name for u in y_readers)}"
            y_dtype = G.dtype_of(norm.y)
            if y_dtype != x_val.dtype:
                raise Refusal("norm_output_has_other_users",
                              f"{user}; it is {y_dtype}, the norm-output variant returns {x_val.dtype}")  # fmt: skip
            if norm.spelling == "functional" and x_val.dtype != torch.float32:
                raise Refusal("norm_output_has_other_users",
                              f"{user}; F.rms_norm rounds it once, the norm-output variant twice (as Hugging Face's "
                              "RMSNorm)")  # fmt: skip
            if norm.sum_unrounded:
                raise Refusal("norm_output_has_other_users", f"{user}; the norm reads the unrounded fp32 residual sum")
            call = with_norm_out(self.registry, m, norm.residual is not None, float(eps), user)
        else:
            call = choose_op(self.registry, m, norm.residual is not None, float(eps))
        if not platform.has_kernel(call.op._schema.name, x_val.device):
            raise Refusal("no_kernel_for_device", str(x_val.device))
        info = platform.device_info(x_val.device)
        ok, reason = policy.native_rewrite_allowed(
            self.native, info, call.key, norm.residual is not None, _tokens(x_val)
        )
        if not ok:
            raise Refusal(reason)
        return call

    def _check_mx(self, norm: NormMatch, m: QuantMatch, x_val: torch.Tensor, y_readers: list) -> FusedCall:
        """A microscaling site: fused only where our op's y is the spelling's (the Hugging Face
        rounding points, or an fp32 model), so the bytes are the spelling's."""
        if y_readers:
            raise Refusal("norm_output_has_other_users",
                          f"{norm.y.name} is also used by {min(u.name for u in y_readers)}; the microscaling "
                          "ops have no norm-output variant")  # fmt: skip
        if norm.spelling == "functional" and x_val.dtype != torch.float32:
            raise Refusal("mx_rounding_points_differ", "F.rms_norm rounds y once, our op twice (as Hugging Face's "
                          "RMSNorm): the block scales and elements would not be the spelling's bytes")  # fmt: skip
        if norm.sum_unrounded:
            raise Refusal("mx_rounding_points_differ", "the norm reads the unrounded fp32 residual sum")
        call = choose_op(self.registry, m, norm.residual is not None, float(norm.eps))
        if not platform.has_kernel(call.op._schema.name, x_val.device):
            raise Refusal("no_kernel_for_device", str(x_val.device))
        # "auto": the policy's rows of the format (the benchmark's mxfp8 / nvfp4 / ... cases).
        info = platform.device_info(x_val.device)
        ok, reason = policy.native_rewrite_allowed(self.native, info, m.mx.fmt, norm.residual is not None, _tokens(x_val))
        if not ok:
            raise Refusal(reason, m.mx.fmt)
        return call

    # -- rewriting ---------------------------------------------------------------------------

    def _rewrite(self, graph: fx.Graph, norm: NormMatch, quants: list[QuantMatch], call: FusedCall) -> fx.Node:
        residual = norm.residual is not None
        first = _first_in_graph([q.q for q in quants])
        weight = norm.weight
        if weight is None:  # a norm without a weight: ours with a weight of ones (exact)
            x_val = fx_utils.val(norm.x)
            with graph.inserting_before(first):
                weight = graph.call_function(
                    torch.ops.aten.full.default,
                    ([x_val.shape[-1]], 1.0),
                    {"dtype": x_val.dtype, "layout": torch.strided, "device": x_val.device, "pin_memory": False},
                )
            weight.meta["val"] = x_val.new_ones((x_val.shape[-1],))
        head = (norm.residual[0], norm.residual[1], weight) if residual else (norm.x, weight)
        with graph.inserting_before(first):
            args = list(head) + list(call.tail)
            if quants[0].static_scale is not None and G.dtype_of(quants[0].static_scale) != torch.float32:
                scale = fx_utils.call(graph, torch.ops.prims.convert_element_type.default,
                                      (quants[0].static_scale, torch.float32), like=first)  # fmt: skip
                args[args.index(quants[0].static_scale)] = scale
            fused = fx_utils.call(graph, call.op, tuple(args), like=first)
            dynamic = quants[0].rule is not None or quants[0].mx is not None
            q_out = fx_utils.getitem(graph, fused, 0) if (dynamic or residual) else fused
            scales = fx_utils.getitem(graph, fused, 1) if dynamic else None
            for m in quants:
                m.q.replace_all_uses_with(_as(graph, q_out, m.q))
                for s in m.scale_nodes:
                    s.replace_all_uses_with(_as(graph, scales, s))
            if residual:
                new_res = fx_utils.getitem(graph, fused, 2 if dynamic else 1)
                norm.residual_out.replace_all_uses_with(new_res)
            if call.norm_out:  # the other readers of y get the variant's normalised output
                norm.y.replace_all_uses_with(fx_utils.getitem(graph, fused, 3 if residual else 2))
        dead = (
            [n for m in quants for n in m.seen] + [n for m in quants for n in m.scale_nodes] + [norm.y] + norm.internal
        )
        if residual:
            dead.append(norm.residual_out)
        wanted = set(dead)
        for n in reversed([n for n in graph.nodes if n in wanted]):
            if not n.users:
                graph.erase_node(n)
        return fused


def _first_in_graph(nodes: list[fx.Node]) -> fx.Node:
    """The one of ``nodes`` that comes first in the graph (walking back from each is cheaper
    than numbering a large graph)."""
    if len(nodes) == 1:
        return nodes[0]
    rest = set(nodes)
    for n in nodes:
        cur, earlier = n.prev, False
        while cur.op != "root":
            if cur in rest:
                earlier = True
                break
            cur = cur.prev
        if not earlier:
            return n
    return nodes[0]


def _as(graph: fx.Graph, value: fx.Node, like: fx.Node) -> fx.Node:
    """``value`` viewed to ``like``'s shape and cast to its dtype (the same elements)."""
    shape, dtype = G.shape_of(like), G.dtype_of(like)
    out = value
    if G.shape_of(out) != shape:
        # A symbolic size cannot be a literal argument: one of them becomes -1 (the view keeps
        # the element count); more than one would need size nodes (not produced by our views).
        symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        size = [(-1 if i in symbolic[:1] else d) for i, d in enumerate(shape)]
        out = fx_utils.call(graph, torch.ops.aten.view.default, (out, size), like=like)
    if G.dtype_of(out) != dtype:
        out = fx_utils.call(graph, torch.ops.prims.convert_element_type.default, (out, dtype), like=like)
    return out


def _other_user_reason(n: fx.Node, u: fx.Node, norm: NormMatch) -> tuple[str, str]:
    if u.op == "output" and n is not norm.y:
        # An intermediate leaves the graph: in training the forward graph returns what the
        # backward pass needs.
        return (
            "intermediate_needed_for_backward",
            f"{n.name} is saved for the backward pass; run the model under torch.no_grad() or "
            "torch.inference_mode() to fuse it",
        )
    if n is norm.y:
        return "norm_output_has_other_users", f"{n.name} is also used by {u.name}"
    return "intermediate_has_other_users", f"{n.name} is also used by {u.name}"


def _describe(m: QuantMatch) -> str:
    if m.mx is not None:
        return m.mx.describe()
    return f"{m.dtype} {m.rule.describe() if m.rule else 'static'}"


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


__all__ = ["NativeMatcher", "all_pattern_names", "pattern_name", "QuantKey", "Scheme"]
