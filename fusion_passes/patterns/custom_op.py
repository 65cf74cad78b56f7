# SPDX-License-Identifier: Apache-2.0
"""The custom-op form: our unfused ops in the graph, rewritten by a direct FX rewrite.

    rms_norm(x, w, eps)            -> quant(y, ...)   ==>  rms_norm_<scheme>_quant(x, w, ..., eps)
    fused_add_rms_norm(x, r, w, eps) -> (y, r') ; quant(y, ...)
                                                      ==>  fused_add_rms_norm_<scheme>_quant(x, r, w, ...)

also when a view/reshape of the token dims sits between the norm and the quant (FP8 linear
layers flatten [batch, seq, hidden] to [tokens, hidden] before quantizing): the fused op then
runs on the unflattened input and its quantized outputs are viewed like the quant's input.

A direct rewrite costs milliseconds per graph (the pattern matcher would re-trace per match).
Opaque custom ops cannot be fused by Inductor itself, so these sites are always rewritten when
the checks pass; there is no speed policy here.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from fusion_kernels import platform
from fusion_passes import fx_utils
from fusion_passes.patterns import Refusal
from fusion_passes.quant_key import QuantKey, Scheme
from fusion_passes.registry import (
    NORM_OP_NAMES,
    PACKED_GROUP_FUSED_OP_NAMES,
    PACKED_GROUP_QUANT_OP_NAME,
    RULE_FUSED_OP_NAMES,
    RULE_NORM_OUT_OP_NAMES,
    RULE_QUANT_OP_NAME,
    Registry,
    mx_op_names,
    family_key,
    fused_op_name,
    quant_op_name,
)


@dataclasses.dataclass(frozen=True)
class Family:
    """One quant op and how its arguments map onto the fused op's."""

    name: str
    quant_op: str
    scheme: Scheme
    #: quant op arguments -> QuantKey
    key: Callable[[dict[str, Any]], QuantKey]
    #: (quant args) -> the fused op's trailing arguments after (input[, residual], weight, ...)
    fused_tail: Callable[[dict[str, Any], Any], tuple]
    dynamic: bool  # the quant returns (out, scales)
    rule: bool = False  # the rule op: its fused op takes the scale rule's arguments
    #: a microscaling format (MX_FORMATS): its fused ops by name, blocks of `block` elements
    mx: str = ""
    block: int = 0
    #: the group ops with packed UE8M0 scales (registry.PACKED_GROUP_*): int32 scales over the
    #: flattened rows, 2-D whatever the input's rank
    packed: bool = False


def _fp8_static_tail(q, eps):
    return (q["scale"], eps, q["fp8_dtype"])


def _fp8_token_tail(q, eps):
    return (eps, q["fp8_dtype"], q["scale_ub"])


def _fp8_group_tail(q, eps):
    return (eps, q["group_size"], q["column_major_scales"], q["scale_ue8m0"], q["fp8_dtype"],
            bool(q.get("tma_aligned_scales")))  # fmt: skip


def _int8_static_tail(q, eps):
    return (q["scale"], eps)


def _int8_token_tail(q, eps):
    return (eps, torch.int8, None)


_RULE_ARGS = ("quant_dtype", "group_size", "divisor", "absmax_floor", "scale_floor", "zero_scale", "scale_dtype",
              "scale_ue8m0")  # fmt: skip


def _rule_tail(q, eps):
    return (eps, *(q[name] for name in _RULE_ARGS))


def _rule_key(q) -> QuantKey:
    if q["group_size"] == -1:
        return QuantKey(q["quant_dtype"], Scheme.PER_TENSOR)
    if q["group_size"]:
        return QuantKey(q["quant_dtype"], Scheme.PER_GROUP, q["group_size"])
    return QuantKey(q["quant_dtype"], Scheme.PER_TOKEN)


FAMILIES = (
    Family("fp8_static", "static_scaled_fp8_quant", Scheme.STATIC,
           lambda q: QuantKey(q["fp8_dtype"], Scheme.STATIC), _fp8_static_tail, False),
    Family("fp8_per_token", "dynamic_per_token_scaled_fp8_quant", Scheme.PER_TOKEN,
           lambda q: QuantKey(q["fp8_dtype"], Scheme.PER_TOKEN), _fp8_token_tail, True),
    Family("fp8_per_group", "per_token_group_fp8_quant", Scheme.PER_GROUP,
           lambda q: QuantKey(q["fp8_dtype"], Scheme.PER_GROUP, q["group_size"]), _fp8_group_tail, True),
    Family("fp8_per_group_packed", PACKED_GROUP_QUANT_OP_NAME, Scheme.PER_GROUP,
           lambda q: QuantKey(q["fp8_dtype"], Scheme.PER_GROUP, q["group_size"]),
           lambda q, eps: (eps, q["group_size"], q["fp8_dtype"]), True, packed=True),
    Family("int8_static", "static_scaled_int8_quant", Scheme.STATIC,
           lambda q: QuantKey(torch.int8, Scheme.STATIC), _int8_static_tail, False),
    Family("int8_per_token", "dynamic_scaled_int8_quant", Scheme.PER_TOKEN,
           lambda q: QuantKey(torch.int8, Scheme.PER_TOKEN), _int8_token_tail, True),
    Family("dynamic_rule", RULE_QUANT_OP_NAME, Scheme.PER_TOKEN, _rule_key, _rule_tail, True, rule=True),
    # The microscaling formats (no QuantKey: their key is the format); the fused op's arguments
    # after epsilon are the quant op's after its input.
    Family("mxfp8", "mxfp8_quant", Scheme.PER_GROUP, lambda q: None,
           lambda q, eps: (eps, q["fp8_dtype"], q["scale_mode"], q["swizzled_scales"]), True, mx="mxfp8", block=32),
    Family("mxfp4", "mxfp4_quant", Scheme.PER_GROUP, lambda q: None,
           lambda q, eps: (eps, q["scale_mode"], q["swizzled_scales"]), True, mx="mxfp4", block=32),
    Family("nvfp4", "nvfp4_quant", Scheme.PER_GROUP, lambda q: None,
           lambda q, eps: (eps, q["global_scale"], q["global_scale_is_multiplier"], q["swizzled_scales"]), True,
           mx="nvfp4", block=16),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CustomOpPattern:
    family: Family
    residual: bool

    @property
    def norm_op(self) -> str:
        return NORM_OP_NAMES[self.residual]

    @property
    def name(self) -> str:
        return f"{self.norm_op}+{self.family.quant_op}"

    def fused_op_name(self) -> str:
        if self.family.packed:
            return PACKED_GROUP_FUSED_OP_NAMES[self.residual]
        if self.family.mx:
            return mx_op_names(self.family.mx)[1][self.residual]
        if self.family.rule:
            return RULE_FUSED_OP_NAMES[self.residual]
        sample = family_key(self.family.name)
        assert quant_op_name(sample) == self.family.quant_op
        return fused_op_name(sample, self.residual)

    def _fused_op(self, registry: Registry, key: QuantKey | None):
        if self.family.packed:
            return registry.packed_group_ops.get(self.fused_op_name())
        if self.family.mx:
            return registry.mx_ops.get(self.fused_op_name())
        if self.family.rule:
            return registry.rule_op(self.residual)
        return registry.fused_ops.get((key, self.residual))

    def unavailable_reason(self, registry: Registry) -> str | None:
        for op in (self.norm_op, self.family.quant_op, self.fused_op_name()):
            if op in registry.missing:
                return f"{op}: {registry.missing[op]}"
        return None

    # -- matching ------------------------------------------------------------------------

    def sites(self, graph: fx.Graph) -> list[fx.Node]:
        quant = getattr(torch.ops.fusion_kernels, self.family.quant_op).default
        return list(graph.find_nodes(op="call_function", target=quant))

    def match(self, qnode: fx.Node) -> _Match | None:
        """The structure around a quant node, or None if no norm of this pattern feeds it."""
        q = fx_utils.bound_args(qnode)
        src = q["input"]
        if not isinstance(src, fx.Node):
            return None
        view = None
        if src.op == "call_function" and src.target in fx_utils.VIEW_OPS:
            view, src = src, src.args[0]
            if not isinstance(src, fx.Node):
                return None
        norm_target = getattr(torch.ops.fusion_kernels, self.norm_op).default
        if self.residual:
            if not (src.op == "call_function" and src.target is operator.getitem and src.args[1] == 0):
                return None
            norm = src.args[0]
            if not (isinstance(norm, fx.Node) and norm.target is norm_target):
                return None
        else:
            if src.target is not norm_target:
                return None
            norm = src
        return _Match(self, qnode, q, view, src, norm, fx_utils.bound_args(norm))

    def check(self, m: _Match, registry: Registry) -> QuantKey:
        """Raise Refusal unless the fused op computes exactly what the pair computes here."""
        # The norm's output feeds this quant; another consumer gets the rule op's norm-output
        # variant (the same y, bit for bit: our norm's), where one computes this quant.
        expected = {m.view} if m.view is not None else {m.qnode}
        if m.view is not None and set(m.view.users) != {m.qnode}:
            raise Refusal("norm_output_has_other_users", f"{m.view.name} is also used elsewhere")
        others = [u for y in self._y_nodes(m) for u in y.users if u not in expected]
        if others:
            m.norm_out_tail = self._norm_out_tail(m, registry, f"{m.y.name} is also used by {others[0].name}")
        try:
            key = self.family.key(m.q)
        except (ValueError, TypeError) as exc:
            raise Refusal("unsupported_quant_args", str(exc)) from None
        fused = self._fused_op(registry, key)
        if m.norm_out_tail is not None:
            fused = registry.rule_norm_out_ops[self.residual]
        if fused is None:
            raise Refusal(
                "fused_op_missing",
                self.fused_op_name()
                if (self.family.rule or self.family.mx or self.family.packed)
                else fused_op_name(key, self.residual),
            )
        x_val = fx_utils.val(m.n["input"])
        y_val = fx_utils.val(m.qnode.args[0] if m.view is not None else m.y)
        if x_val is None or y_val is None:
            raise Refusal("no_shape_information")
        if not platform.has_kernel(f"fusion_kernels::{fused._schema.name.split('::')[-1]}", x_val.device):
            raise Refusal("no_kernel_for_device", str(x_val.device))
        if x_val.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise Refusal("unsupported_dtype", str(x_val.dtype))
        if self.family.mx:
            # Through a token-flattening view: row-major scales are viewed like the quant's input;
            # swizzled ones tile the flattened rows, so they are the same tensor either way.
            if m.view is not None and y_val.shape[-1] != x_val.shape[-1]:
                raise Refusal("view_changes_hidden_dim")
            return key
        if m.view is not None:
            if y_val.shape[-1] != x_val.shape[-1]:
                raise Refusal("view_changes_hidden_dim")
            if key.scheme is Scheme.PER_GROUP and m.q.get("column_major_scales"):
                raise Refusal("column_major_needs_2d_input", "the norm's input is not 2-D")
        if key.scheme is Scheme.PER_GROUP:
            hidden = x_val.shape[-1]
            if not isinstance(hidden, int):
                raise Refusal("symbolic_hidden_size")
            if hidden % key.group_size != 0:
                raise Refusal("group_size_not_dividing_hidden", f"H={hidden}, group_size={key.group_size}")
            if m.q.get("column_major_scales") and x_val.dim() != 2:
                raise Refusal("column_major_needs_2d_input")
        return key

    def _y_nodes(self, m: _Match) -> list[fx.Node]:
        """The nodes whose value is the norm's output: the norm, or its getitem(0) nodes."""
        return fx_utils.getitem_users(m.norm).get(0, []) if self.residual else [m.norm]

    def _norm_out_tail(self, m: _Match, registry: Registry, user: str) -> tuple:
        """The norm-output variant's trailing arguments for this quant (its scale rule as the rule
        op's arguments; the fixed rules are special cases of it, bit for bit), or Refusal."""
        from fusion_kernels.reference import GROUP_ABSMAX_FLOOR, QMAX, per_token_min_scale

        q, name = m.q, self.family.name
        if not self.family.dynamic:
            raise Refusal("norm_output_has_other_users", f"{user}; a static scale has no norm-output variant")
        if registry.rule_norm_out_ops.get(self.residual) is None:
            missing = RULE_NORM_OUT_OP_NAMES[self.residual]
            raise Refusal("norm_output_has_other_users", f"{user}; {missing} is not available")
        if self.family.rule:
            return tuple(q[a] for a in _RULE_ARGS)
        if name in ("fp8_per_token", "int8_per_token"):
            dtype = q.get("fp8_dtype", torch.int8)
            if q.get("scale_ub") is not None:
                raise Refusal("norm_output_has_other_users", f"{user}; scale_ub has no norm-output variant")
            return (dtype, 0, QMAX[dtype], 0.0, per_token_min_scale(dtype), 0.0, torch.float32, False)
        if name == "fp8_per_group":
            if q["column_major_scales"]:
                raise Refusal("norm_output_has_other_users", f"{user}; column-major scales have no norm-output variant")
            dtype = q["fp8_dtype"]
            return (dtype, q["group_size"], QMAX[dtype], GROUP_ABSMAX_FLOOR, 0.0, 0.0, torch.float32, q["scale_ue8m0"])
        raise Refusal("norm_output_has_other_users", user)

    # -- rewriting -----------------------------------------------------------------------

    def rewrite(self, graph: fx.Graph, m: _Match, key: QuantKey, registry: Registry) -> fx.Node:
        fused_op = self._fused_op(registry, key)
        n = m.n
        head = (n["input"], n["residual"], n["weight"]) if self.residual else (n["input"], n["weight"])
        args = head + self.family.fused_tail(m.q, n["epsilon"])
        if m.norm_out_tail is not None:
            fused_op = registry.rule_norm_out_ops[self.residual]
            args = head + (n["epsilon"], *m.norm_out_tail)
        res_items = fx_utils.getitem_users(m.norm).get(1, []) if self.residual else []
        q_items = fx_utils.getitem_users(m.qnode) if self.family.dynamic else {}
        with graph.inserting_before(m.qnode):
            fused = fx_utils.call(graph, fused_op, args, like=m.qnode)
            multi = self.family.dynamic or self.residual
            out = fx_utils.getitem(graph, fused, 0) if multi else fused
            scales = fx_utils.getitem(graph, fused, 1) if self.family.dynamic else None
            if m.view is not None:
                shape = list(m.view.args[1])
                if self.family.mx in ("mxfp4", "nvfp4"):  # packed FP4: H / 2 bytes a row
                    out_shape = [*shape[:-1], int(fx_utils.val(n["input"]).shape[-1]) // 2]
                    out = fx_utils.call(graph, m.view.target, (out, out_shape), like=m.qnode)
                else:
                    out = fx_utils.call(graph, m.view.target, (out, shape), like=m.view)
                if scales is not None:
                    if self.family.packed:  # int32 over the flattened rows: the same tensor either way
                        scale_shape = None
                    elif self.family.mx:  # row-major [..., H / block] (swizzled ones are 2-D either way)
                        x_val = fx_utils.val(n["input"])
                        scale_shape = ([*shape[:-1], int(x_val.shape[-1]) // self.family.block]
                                       if not m.q["swizzled_scales"] else None)  # fmt: skip
                    elif key.scheme is Scheme.PER_TENSOR:  # one scale, [1, ..., 1] in the view's rank
                        scale_shape = [1] * len(shape)
                    else:
                        last = 1 if key.scheme is Scheme.PER_TOKEN else x_groups(fx_utils.val(n["input"]), key)
                        scale_shape = [*shape[:-1], last]
                    if scale_shape is not None:
                        scales = fx_utils.call(graph, m.view.target, (scales, scale_shape), like=m.view)
            if self.family.dynamic:
                for idx, items in q_items.items():
                    for item in items:
                        item.replace_all_uses_with(out if idx == 0 else scales)
            else:
                m.qnode.replace_all_uses_with(out)
            if res_items:
                new_res = fx_utils.getitem(graph, fused, 2 if self.family.dynamic else 1)
                for item in res_items:
                    item.replace_all_uses_with(new_res)
            if m.norm_out_tail is not None:  # y's other readers get the variant's y
                new_y = fx_utils.getitem(graph, fused, 3 if self.residual else 2)
                keep = {m.view} if m.view is not None else {m.qnode}
                for y in self._y_nodes(m):
                    y.replace_all_uses_with(new_y, delete_user_cb=lambda u, keep=keep: u not in keep)
        # Erase what the fused op replaced, consumers first.
        for items in q_items.values():
            for item in items:
                graph.erase_node(item)
        graph.erase_node(m.qnode)
        if m.view is not None:
            graph.erase_node(m.view)
        if self.residual:
            for y in self._y_nodes(m):
                if not y.users:
                    graph.erase_node(y)
            for item in res_items:
                graph.erase_node(item)
            if not m.norm.users:
                graph.erase_node(m.norm)
        else:
            graph.erase_node(m.norm)
        return fused


def x_groups(x_val: torch.Tensor, key: QuantKey) -> int:
    return int(x_val.shape[-1]) // int(key.group_size)


@dataclasses.dataclass
class _Match:
    pattern: CustomOpPattern
    qnode: fx.Node
    q: dict[str, Any]  # quant op arguments by name
    view: fx.Node | None
    y: fx.Node  # the norm's normalized output (rms_norm node, or getitem(fused_add_rms_norm, 0))
    norm: fx.Node
    n: dict[str, Any]  # norm op arguments by name
    #: Set by check when y has other readers: the norm-output variant's arguments after epsilon.
    norm_out_tail: tuple | None = None


def all_patterns() -> list[CustomOpPattern]:
    return [CustomOpPattern(f, residual) for f in FAMILIES for residual in (False, True)]
