# SPDX-License-Identifier: Apache-2.0
"""Other libraries' opaque quant ops after an RMSNorm, rewritten into our fused ops.

    norm (ours, vLLM's _C, or plain torch) -> foreign quant op   ==>  our fused [add +] norm + quant

The quant ops, and the fused op that computes what each computes:

* ``triton.quantize_fp8_row`` (FBGEMM GenAI / MSLK; torchao's PerRow calls it): one scale per row,
  ``amax`` floored at 1e-12, ``scale = amax / finfo.max``, returned as ``1 / (finfo.max / amax)``
  -> the rule op ``rms_norm_dynamic_quant`` (group 0, divisor finfo.max, absmax floor 1e-12);
  ``scale_ub``, ``zero_start_index_M``, ``align_rows_to`` and another output device are refused.
* vLLM ``_C.static_scaled_fp8_quant`` -> ``rms_norm_static_fp8_quant``;
  ``_C.dynamic_per_token_scaled_fp8_quant`` (floor ``1 / (448 * 512)`` on the scale, ``scale_ub``)
  -> ``rms_norm_dynamic_per_token_quant``; ``_C.per_token_group_fp8_quant`` (its ``eps`` floors
  the group absmax) -> ``rms_norm_per_token_group_quant`` (row-major, column-major or TMA-aligned
  column-major scales) when ``eps`` is 1e-10 and the range is the dtype's, else the rule op. vLLM's e4m3fnuz range is +-224 (ours +-240): refused there.
* vLLM ``_C.per_token_group_fp8_quant_packed`` (its DeepGEMM path on sm_100: UE8M0 scales packed
  four to an int32 ``[rows, ceil(groups / 4)]``, MN-major, strides ``(1, 4 * ceil(rows / 4))``)
  -> ``rms_norm_per_token_group_quant_packed`` when ``eps`` is 1e-10, the range +-448
  (float8_e4m3fn's) and the scale buffer has that layout (its quantization then gives the same
  bits: the scales are powers of two, where x / s is x * (1 / s)). There is no rule-op form of
  the packed layout: another ``eps`` or range is refused.

Ours differ only in rounding order (a reciprocal-multiply where they divide): equivalent in the
README's sense. The norm is ours, vLLM's ``_C.rms_norm``/``_C.fused_add_rms_norm`` (mutating:
see :mod:`fusion_passes.foreign`) or a plain-torch RMSNorm as the native matcher recognises it.
Inductor cannot fuse opaque ops, so the native speed policy does not apply; ``native="never"``
still leaves plain-torch norms alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from typing import Any

import torch
import torch.fx as fx
from torch._prims_common import make_contiguous_strides_for
from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

from fusion_kernels import platform
from fusion_kernels.reference import GROUP_ABSMAX_FLOOR
from fusion_passes import foreign as F
from fusion_passes import fx_utils
from fusion_passes.patterns import Refusal
from fusion_passes.quant_key import GROUP_SIZES, QuantKey, Scheme
from fusion_passes.registry import NORM_OP_NAMES, PACKED_GROUP_FUSED_OP_NAMES, Registry, fused_op_name
from fusion_passes.reporting import GraphReport, Site

FBGEMM_ABSMAX_FLOOR = 1e-12
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class _Norm:
    source: str  # "ours", "vllm" or "native"
    x: fx.Node
    residual: fx.Node | None
    weight: Any
    eps: Any
    y: fx.Node  # the normalized output's value node
    res_readers: list[fx.Node]  # nodes whose readers get the new residual
    region: list[fx.Node]  # nodes the fused op replaces (erased once unused)
    internal: list[fx.Node]  # nodes that must have no reader outside the region
    views: set[str] = dataclasses.field(default_factory=set)  # mutated buffers that are views


@dataclasses.dataclass
class _Plan:
    op: torch._ops.OpOverload
    tail: tuple  # the fused op's arguments after (input, [residual,] weight)
    #: (node whose readers are rewired, fused output index, that node's value is the transpose)
    readers: list[tuple[fx.Node, int, bool]]
    shapes: dict[fx.Node, Any] = dataclasses.field(default_factory=dict)  # reader -> view shape


class ForeignMatcher:
    """Finds norm -> foreign quant sites and rewrites them into our fused ops."""

    def __init__(self, registry: Registry, native: str, wanted: set[str] | None) -> None:
        self.registry = registry
        self.native = native
        self.table = F.build_foreign_table()
        self.inactive: dict[str, str] = {}
        self._active: list[str] = []
        for source, residual, quant in itertools.product(F.NORM_SOURCES, (False, True), F.FOREIGN_QUANTS):
            name = F.pattern_name(source, residual, quant)
            if why := self._unavailable(source, residual, quant, wanted, name):
                self.inactive[name] = why
            else:
                self._active.append(name)
        self._quant_ops = {op for q in F.FOREIGN_QUANTS if (op := self.table.get(q)) is not None}
        self._our_norms = {op: residual for residual, op in registry.norm_ops.items()}
        self._norm_ops = {op for n in F.FOREIGN_NORMS.values() if (op := self.table.get(n)) is not None}

    def _unavailable(self, source, residual, quant, wanted, name) -> str:
        if wanted is not None and name not in wanted:
            return "not selected (patterns=...)"
        if source == "native" and self.native == "never":
            return 'native="never"'
        # Our library first: where it is disabled or absent, that is why nothing here can fuse.
        fused = F.fused_ops_for(quant, residual)  # any one of them serves
        missing = [NORM_OP_NAMES[residual]] if source == "ours" and self._missing(NORM_OP_NAMES[residual]) else []
        missing += fused if all(self._missing(op) for op in fused) else []
        if missing:
            return "; ".join(f"{op}: {self._missing(op)}" for op in missing)
        norm = F.FOREIGN_NORMS[residual].qualname if source == "vllm" else None
        for op in (norm, quant.qualname):
            if op in self.table.missing:
                return f"torch.ops.{op}: {self.table.missing[op]}"
        return ""

    def _missing(self, name: str) -> str:
        """Why our op ``name`` is unavailable ("" when it is available)."""
        if name in F.RULE_FUSED_OP_NAMES.values():
            residual = name == F.RULE_FUSED_OP_NAMES[True]
            if residual in getattr(self.registry, "rule_fused_ops", {}):
                return ""
            return self.registry.missing.get(name, "not defined by the loaded library")
        return self.registry.missing.get(name, "")

    def all_names(self) -> set[str]:
        return set(F.all_pattern_names())

    def active_names(self) -> list[str]:
        return list(self._active)

    def schemas(self) -> list[str]:
        return self.table.schemas()

    # -- matching ----------------------------------------------------------------------------

    def apply(self, graph: fx.Graph, g: GraphReport) -> bool:
        if not self._quant_ops:
            return False
        calls = [c for n in graph.nodes if (c := F.read_call(n, self._quant_ops)) is not None]
        natives: dict[fx.Node, Any] | None = None
        changed = False
        for call in calls:
            if call.node.graph is not graph or call.node not in graph.nodes:
                continue
            quant = next(q for q in F.FOREIGN_QUANTS if self.table.get(q) is call.op)
            src = call.args["a" if quant is F.FBGEMM_ROW_FP8 else "input"]
            view = None
            if isinstance(src, fx.Node) and src.op == "call_function" and src.target in fx_utils.VIEW_OPS:
                view, src = src, src.args[0]
            if not isinstance(src, fx.Node):
                continue
            norm = self._read_norm(src)
            if norm is None:
                if natives is None:
                    from fusion_passes.patterns.native.norm import anchors, match_norm

                    natives = {m.y: m for a in anchors(graph) if (m := match_norm(a)) is not None}
                norm = _native_norm(natives.get(src))
            if norm is None:
                continue
            name = F.pattern_name(norm.source, norm.residual is not None, quant)
            where = fx_utils.source_line(call.node)
            why = self.inactive.get(name, "")
            if why.startswith("not selected"):
                continue
            if why.startswith("native="):
                g.sites.append(Site(g.index, name, False, "native_policy_never", call.node.name, where))
                continue
            try:
                plan = self._check(norm, call, view, quant)
            except Refusal as r:
                g.sites.append(Site(g.index, name, False, r.reason, call.node.name, where, r.detail))
                continue
            fused = self._rewrite(graph, norm, call, view, plan)
            g.sites.append(Site(g.index, name, True, plan.op._schema.name.split("::")[-1], fused.name, where))
            changed = True
        return changed

    def _read_norm(self, y: fx.Node) -> _Norm | None:
        """Our norm op or vLLM's whose normalized output is ``y`` (plain torch: see apply)."""
        if y.op != "call_function":
            return None
        if self._our_norms.get(y.target) is False:
            n = fx_utils.bound_args(y)
            return _Norm("ours", n["input"], None, n["weight"], n["epsilon"], y, [], [y], [])
        if y.target is not operator.getitem or not isinstance(y.args[0], fx.Node):
            return None
        node, index = y.args
        if self._our_norms.get(node.target) is True and index == 0:
            n = fx_utils.bound_args(node)
            res = fx_utils.getitem_users(node).get(1, [])
            return _Norm("ours", n["input"], n["residual"], n["weight"], n["epsilon"], y, res, [y, node, *res], [node])
        call = F.read_call(node, self._norm_ops)
        if call is None:
            return None
        residual = call.op is self.table.get(F.VLLM_FUSED_ADD_RMS_NORM)
        out = "input" if residual else "result"
        if call.outputs.get(out) != [y]:
            return None
        res = call.outputs.get("residual", []) if residual else []
        region = [y, node, *res] + ([] if residual else [call.args["result"]])
        a = call.args
        return _Norm("vllm", a["input"], a["residual"] if residual else None, a["weight"], a["epsilon"], y, res,
                     region, [node], call.views)  # fmt: skip

    def _check(self, norm: _Norm, call: F.Call, view: fx.Node | None, quant: F.ForeignOp) -> _Plan:
        if norm.views or call.views:
            raise Refusal("mutated_buffer_is_a_view", ", ".join(sorted(norm.views | call.views)))
        reader = view if view is not None else call.node
        if set(norm.y.users) != {reader} or (view is not None and set(view.users) != {call.node}):
            raise Refusal("norm_output_has_other_users", f"{norm.y.name} is also used elsewhere")
        inside = set(norm.region) | {norm.y}
        for n in norm.internal:
            outside = [u for u in n.users if u not in inside]
            if outside and all(u.op == "output" for u in outside):
                raise Refusal("intermediate_needed_for_backward", f"{n.name} leaves the graph")
            if outside:
                raise Refusal("intermediate_has_other_users", f"{n.name} is also used by {outside[0].name}")
        if not isinstance(norm.eps, (int, float)):
            raise Refusal("eps_not_constant", "compile with mark_dynamic instead of dynamic=True")
        x_val = fx_utils.val(norm.x)
        if not isinstance(x_val, torch.Tensor):
            raise Refusal("no_shape_information")
        w_val = fx_utils.val(norm.weight) if norm.weight is not None else x_val.new_ones(x_val.shape[-1:])
        if not isinstance(w_val, torch.Tensor):
            raise Refusal("no_shape_information")
        if x_val.dtype not in FLOAT_DTYPES:
            raise Refusal("unsupported_dtype", str(x_val.dtype))
        if w_val.dtype not in (x_val.dtype, torch.float32) or w_val.dim() != 1:
            raise Refusal("unsupported_weight", f"{w_val.dtype}{tuple(w_val.shape)}")
        if view is not None and not statically_known_true(sym_eq(fx_utils.val(view).shape[-1], x_val.shape[-1])):
            raise Refusal("view_changes_hidden_dim")
        if not call.mutating and not fx_utils.only_getitem_users(call.node):
            raise Refusal("unsupported_output_use")
        plan = self._plan(quant, call, x_val, norm.residual is not None, float(norm.eps), view)
        if not platform.has_kernel(plan.op._schema.name, x_val.device):
            raise Refusal("no_kernel_for_device", str(x_val.device))
        head = (norm.x, norm.residual, w_val) if norm.residual is not None else (norm.x, w_val)
        outs = plan.op(*fx.node.map_arg(head + plan.tail, fx_utils.val))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for node, index, transposed in plan.readers:
            ours = outs[index].t() if transposed else outs[index]
            plan.shapes[node] = _view_shape(ours, fx_utils.val(node), view, index)
        return plan

    def _plan(self, quant: F.ForeignOp, call: F.Call, x_val, residual: bool, eps: float, view) -> _Plan:
        a, hidden = call.args, x_val.shape[-1]
        if quant is F.FBGEMM_ROW_FP8:
            for arg in ("scale_ub", "zero_start_index_M", "align_rows_to"):
                if a.get(arg) is not None:
                    raise Refusal("unsupported_argument", f"{arg}: the fused op has no such parameter")
            if a.get("output_device") is not None and torch.device(a["output_device"]) != x_val.device:
                raise Refusal("unsupported_argument", f"output_device {a['output_device']}")
            dtype = fx_utils.val(call.node)[0].dtype
            op = self._rule_op(residual)
            tail = (eps, dtype, 0, torch.finfo(dtype).max, FBGEMM_ABSMAX_FLOOR, 0.0, 0.0, torch.float32, False)
            return _Plan(op, tail, _readers(call, 0, 0) + _readers(call, 1, 1))
        q_name = "output_q" if quant in (F.VLLM_GROUP_FP8, F.VLLM_GROUP_FP8_PACKED) else "result"
        dtype = call.value(q_name).dtype
        if dtype == torch.float8_e4m3fnuz:
            raise Refusal("fp8_range_differs", "vLLM's float8_e4m3fnuz range is +-224, ours +-240")
        if dtype != torch.float8_e4m3fn:
            raise Refusal("unsupported_dtype", str(dtype))
        q_readers = _readers(call, q_name, 0)
        if quant is F.VLLM_STATIC_FP8:
            s = fx_utils.val(a["scale"])
            if not isinstance(s, torch.Tensor) or s.numel() != 1 or s.dtype != torch.float32:
                raise Refusal("unsupported_static_scale", "one fp32 element expected")
            return _Plan(self._fused(QuantKey(dtype, Scheme.STATIC), residual), (a["scale"], eps, dtype), q_readers)
        if quant is F.VLLM_PER_TOKEN_FP8:
            if call.value("scale").dtype != torch.float32:
                raise Refusal("unsupported_scale_dtype", str(call.value("scale").dtype))
            op = self._fused(QuantKey(dtype, Scheme.PER_TOKEN), residual)
            return _Plan(op, (eps, dtype, a["scale_ub"]), q_readers + _readers(call, "scale", 1))
        size, floor, lo, hi = a["group_size"], a["eps"], float(a["fp8_min"]), float(a["fp8_max"])
        if size not in GROUP_SIZES:
            raise Refusal("unsupported_group_size", f"{size}; supported: {', '.join(map(str, GROUP_SIZES))}")
        if not isinstance(hidden, int) or hidden % size:
            raise Refusal("group_size_not_dividing_hidden", f"H={hidden}, group_size={size}")
        if lo != -hi or not 0 < hi <= torch.finfo(dtype).max:
            raise Refusal("fp8_range_differs", f"[{lo}, {hi}]")
        same_floor = abs(floor - GROUP_ABSMAX_FLOOR) <= 1e-6 * GROUP_ABSMAX_FLOOR  # up to float32 rounding
        if quant is F.VLLM_GROUP_FP8_PACKED:
            return self._packed_plan(call, x_val, residual, eps, dtype, size, same_floor, q_readers)
        s_val = call.value("output_s")
        # column-major, or column-major with the columns padded to 4 rows (TMA-aligned: DeepGEMM's
        # sm_90 layout, what vLLM allocates with tma_aligned_scales)
        tma = _tma_aligned(s_val) and not _column_major(s_val)
        column_major = (_column_major(s_val) or tma) and not _row_major(s_val)
        if not (column_major or _row_major(s_val)) or s_val.dtype != torch.float32:
            raise Refusal("unsupported_scale_layout", f"{s_val.dtype}{tuple(s_val.shape)} strides {s_val.stride()}")
        if column_major and (x_val.dim() != 2 or view is not None):
            raise Refusal("column_major_needs_2d_input")
        readers = q_readers + _readers(call, "output_s", 1)
        ue8m0 = bool(a["scale_ue8m0"])
        legacy = self.registry.fused_ops.get((QuantKey(dtype, Scheme.PER_GROUP, size), residual))
        if legacy is not None and same_floor and hi == torch.finfo(dtype).max:
            return _Plan(legacy, (eps, size, column_major, ue8m0, dtype, tma), readers)
        if column_major:
            raise Refusal("unsupported_scale_layout", f"column-major scales with absmax floor {floor}")
        tail = (eps, dtype, size, hi, float(floor), 0.0, 0.0, torch.float32, ue8m0)
        return _Plan(self._rule_op(residual, f"absmax floor {floor}, divisor {hi}"), tail, readers)

    def _packed_plan(self, call: F.Call, x_val, residual: bool, eps: float, dtype, size: int, same_floor: bool,
                     q_readers) -> _Plan:  # fmt: skip
        """``_C.per_token_group_fp8_quant_packed`` (group size, H and the range's sign already
        checked): our packed op computes it only with its own floor and range, into its own layout."""
        a, hidden = call.args, x_val.shape[-1]
        lo, hi = float(a["fp8_min"]), float(a["fp8_max"])
        if hi != torch.finfo(dtype).max:
            raise Refusal("fp8_range_differs", f"[{lo}, {hi}]; the packed op's is +-{torch.finfo(dtype).max}")
        if not same_floor:
            raise Refusal("unsupported_absmax_floor",
                          f"eps {a['eps']}: the packed op floors the group absmax at {GROUP_ABSMAX_FLOOR} "
                          "and the rule op has no packed scale layout")  # fmt: skip
        s_val = call.value("output_s_packed")
        rows = math.prod(x_val.shape[:-1])  # the flattened input's rows, as the caller counts them
        packed_k, padded = (hidden // size + 3) // 4, (rows + 3) // 4 * 4
        if not (
            s_val.dtype == torch.int32
            and statically_known_true(sym_eq(tuple(s_val.shape), (rows, packed_k)))
            and statically_known_true(sym_eq(tuple(s_val.stride()), (1, padded)))
        ):
            raise Refusal("unsupported_scale_layout",
                          f"{s_val.dtype}{tuple(s_val.shape)} strides {s_val.stride()}; the packed op's: "
                          f"torch.int32({rows}, {packed_k}) strides (1, {padded})")  # fmt: skip
        name = PACKED_GROUP_FUSED_OP_NAMES[residual]
        op = getattr(self.registry, "packed_group_ops", {}).get(name)
        if op is None:
            raise Refusal("fused_op_missing", f"{name}: {self._missing(name)}")
        return _Plan(op, (eps, size, dtype), q_readers + _readers(call, "output_s_packed", 1))

    def _fused(self, key: QuantKey, residual: bool) -> torch._ops.OpOverload:
        op = self.registry.fused_ops.get((key, residual))
        if op is None:
            name = fused_op_name(key, residual)
            raise Refusal("fused_op_missing", f"{name}: {self._missing(name)}")
        return op

    def _rule_op(self, residual: bool, why: str = "") -> torch._ops.OpOverload:
        op = getattr(self.registry, "rule_fused_ops", {}).get(residual)
        if op is None:
            name = F.RULE_FUSED_OP_NAMES[residual]
            detail = f"{name}: {self._missing(name)}"
            raise Refusal("fused_op_missing", f"{why}; {detail}" if why else detail)
        return op

    # -- rewriting ---------------------------------------------------------------------------

    def _rewrite(self, graph: fx.Graph, norm: _Norm, call: F.Call, view: fx.Node | None, plan: _Plan) -> fx.Node:
        with graph.inserting_before(call.node):
            weight = norm.weight
            if weight is None:  # a norm without a weight: ours with a weight of ones (exact)
                x_val = fx_utils.val(norm.x)
                kwargs = {"dtype": x_val.dtype, "layout": torch.strided, "device": x_val.device, "pin_memory": False}
                weight = graph.call_function(torch.ops.aten.full.default, ([x_val.shape[-1]], 1.0), kwargs)
                weight.meta["val"] = x_val.new_ones(x_val.shape[-1:])  # fake, like x_val
            head = (norm.x, norm.residual, weight) if norm.residual is not None else (norm.x, weight)
            fused = fx_utils.call(graph, plan.op, head + plan.tail, like=call.node)
            multi = isinstance(fx_utils.val(fused), tuple)
            outs = [fx_utils.getitem(graph, fused, i) for i in range(len(fx_utils.val(fused)))] if multi else [fused]
            for node, index, transposed in plan.readers:
                value, shape = outs[index], plan.shapes[node]
                if transposed:
                    value = fx_utils.call(graph, torch.ops.aten.permute.default, (value, [1, 0]), like=node)
                if shape is not None:
                    value = fx_utils.call(graph, torch.ops.aten.view.default, (value, shape), like=node)
                node.replace_all_uses_with(value)
            for node in norm.res_readers:  # the residual output is the fused op's last
                node.replace_all_uses_with(outs[-1])
        buffers = [v for k, v in call.args.items() if isinstance(v, fx.Node) and k in call.outputs]
        buffers += [i for b in buffers + norm.region for i in b.all_input_nodes]
        dead = [*(n for items in call.outputs.values() for n in items), call.node, *buffers]
        _erase_unused(graph, dead + ([view] if view is not None else []) + norm.region)
        return fused


def _readers(call: F.Call, output: Any, index: int) -> list[tuple[fx.Node, int, bool]]:
    """The nodes giving a call's output (a mutated buffer's new value), and our output for each."""
    return [(n, index, output in call.transposed) for n in call.outputs.get(output, [])]


def _native_norm(m) -> _Norm | None:
    """A plain-torch RMSNorm as the native matcher recognises it; with a residual add the fused op
    reads its two operands and every reader of the (model-dtype) sum gets the residual output."""
    if m is None:
        return None
    if m.residual is None:
        return _Norm("native", m.x, None, m.weight, m.eps, m.y, [], [m.y, *m.internal], list(m.internal))
    (a, b), res = m.residual, m.residual_out
    return _Norm("native", a, b, m.weight, m.eps, m.y, [res], [m.y, *m.internal, res], list(m.internal))


def _view_shape(ours: torch.Tensor, want: Any, view: fx.Node | None, index: int) -> Any:
    """How our output ``index`` (0: quantized, 1: scales) becomes a reader's value: None (as it
    is) or the shape to view it to."""
    if not isinstance(want, torch.Tensor):
        raise Refusal("no_shape_information")
    if want.dtype != ours.dtype:
        raise Refusal("output_dtype_differs", f"{want.dtype} vs {ours.dtype}")
    if statically_known_true(sym_eq(tuple(want.shape), tuple(ours.shape))):
        if _row_major(want) and _row_major(ours):
            return None
        # Neither row-major (column-major, or the packed MN-major scales): the very same strides.
        if not (_row_major(want) or _row_major(ours)) and statically_known_true(
            sym_eq(tuple(want.stride()), tuple(ours.stride()))
        ):
            return None
        raise Refusal("unsupported_scale_layout", f"strides {want.stride()} vs {ours.stride()}")
    if not (_row_major(want) and _row_major(ours)):
        raise Refusal("output_shape_differs", f"{tuple(want.shape)} vs {tuple(ours.shape)}")
    if all(isinstance(s, int) for s in want.shape):
        return list(want.shape)
    if view is not None:  # symbolic sizes: reuse the view's own shape argument
        shape = list(view.args[1])
        if index == 0 and want.dim() == len(shape):
            return shape
        if index == 1 and want.dim() == len(shape) - 1:
            return shape[:-1]
        if index == 1 and want.dim() == len(shape) and isinstance(want.shape[-1], int):
            return shape[:-1] + [want.shape[-1]]
    raise Refusal("output_shape_differs", f"{tuple(want.shape)} vs {tuple(ours.shape)}")


def _row_major(t: torch.Tensor) -> bool:
    return statically_known_true(sym_eq(tuple(t.stride()), tuple(make_contiguous_strides_for(t.shape))))


def _column_major(t: torch.Tensor) -> bool:
    return t.dim() == 2 and statically_known_true(sym_eq(tuple(t.stride()), (1, t.shape[0])))


def _tma_aligned(t: torch.Tensor) -> bool:
    """Column-major with the columns padded to a multiple of 4 rows (16 bytes of fp32)."""
    return t.dim() == 2 and statically_known_true(sym_eq(tuple(t.stride()), (1, (t.shape[0] + 3) // 4 * 4)))


def _erase_unused(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase the given call_function nodes that no longer have readers (readers first)."""
    wanted = {n for n in nodes if isinstance(n, fx.Node) and n.op == "call_function"}
    for n in reversed(list(graph.nodes)):
        if n in wanted and not n.users:
            graph.erase_node(n)
