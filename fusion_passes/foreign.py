# SPDX-License-Identifier: Apache-2.0
"""Other libraries' opaque norm and quant ops that the pass recognises, and how their calls read
in the post-grad graph.

Each op enters the table behind its own ``hasattr(torch.ops.<namespace>, name)`` guard: a process
that never loaded the library simply has no such op, its patterns are inactive, and the report
says so ("_C.rms_norm: not loaded"). Nothing here imports the other library.

vLLM's ``_C`` ops write into out-buffers (``Tensor!`` arguments). In the functional post-grad
graph such a call is an ``auto_functionalized_v2`` node (``auto_functionalized`` where a caller
forces v1) whose ``getitem`` outputs are the new values of the mutated buffers; :func:`read_call`
reads both forms, and the functional ops, into one :class:`Call`.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx

from fusion_passes.quant_key import QuantKey, Scheme
from fusion_passes.registry import NORM_OP_NAMES, PACKED_GROUP_FUSED_OP_NAMES, fused_op_name

VLLM = "vLLM"
FBGEMM = "FBGEMM GenAI / MSLK"


@dataclasses.dataclass(frozen=True)
class ForeignOp:
    namespace: str
    name: str
    source: str  # the library that defines it

    @property
    def qualname(self) -> str:
        return f"{self.namespace}.{self.name}"


VLLM_RMS_NORM = ForeignOp("_C", "rms_norm", VLLM)
VLLM_FUSED_ADD_RMS_NORM = ForeignOp("_C", "fused_add_rms_norm", VLLM)
VLLM_STATIC_FP8 = ForeignOp("_C", "static_scaled_fp8_quant", VLLM)
VLLM_PER_TOKEN_FP8 = ForeignOp("_C", "dynamic_per_token_scaled_fp8_quant", VLLM)
VLLM_GROUP_FP8 = ForeignOp("_C", "per_token_group_fp8_quant", VLLM)
#: UE8M0 scales packed four to an int32, MN-major and TMA-aligned (vLLM's DeepGEMM path on sm_100).
VLLM_GROUP_FP8_PACKED = ForeignOp("_C", "per_token_group_fp8_quant_packed", VLLM)
FBGEMM_ROW_FP8 = ForeignOp("triton", "quantize_fp8_row", FBGEMM)

#: residual (False: RMSNorm, True: residual add + RMSNorm) -> the foreign norm op.
FOREIGN_NORMS = {False: VLLM_RMS_NORM, True: VLLM_FUSED_ADD_RMS_NORM}
FOREIGN_QUANTS = (FBGEMM_ROW_FP8, VLLM_STATIC_FP8, VLLM_PER_TOKEN_FP8, VLLM_GROUP_FP8, VLLM_GROUP_FP8_PACKED)
FOREIGN_OPS = (*FOREIGN_NORMS.values(), *FOREIGN_QUANTS)


@dataclasses.dataclass
class ForeignTable:
    """The foreign ops loaded in this process (qualname -> default overload), and why the others
    are absent."""

    ops: dict[str, torch._ops.OpOverload]
    missing: dict[str, str]

    def get(self, op: ForeignOp) -> torch._ops.OpOverload | None:
        return self.ops.get(op.qualname)

    def schemas(self) -> list[str]:
        return sorted(str(op._schema) for op in self.ops.values())


def build_foreign_table() -> ForeignTable:
    ops: dict[str, torch._ops.OpOverload] = {}
    missing: dict[str, str] = {}
    for op in FOREIGN_OPS:
        # Per op, never per namespace: hasattr(torch.ops, ns) is always true (namespaces are lazy).
        namespace = getattr(torch.ops, op.namespace)
        if not hasattr(namespace, op.name):
            missing[op.qualname] = f"not loaded (defined by {op.source})"
            continue
        packet = getattr(namespace, op.name)
        if "default" not in packet.overloads():
            missing[op.qualname] = "loaded without a default overload"
            continue
        ops[op.qualname] = packet.default
    return ForeignTable(ops, missing)


# --- the patterns: a norm (ours, vLLM's, or plain torch) followed by one of the quant ops ----------

#: The fused rule ops by residual (the registry's rule_fused_ops, where it has them).
RULE_FUSED_OP_NAMES = {False: "rms_norm_dynamic_quant", True: "fused_add_rms_norm_dynamic_quant"}
NORM_SOURCES = ("ours", "vllm", "native")
_NORM_LABELS = {
    "ours": NORM_OP_NAMES,
    "vllm": {r: op.qualname for r, op in FOREIGN_NORMS.items()},
    "native": {False: "native_rms_norm", True: "native_add_rms_norm"},
}


def pattern_name(source: str, residual: bool, quant: ForeignOp) -> str:
    return f"foreign:{_NORM_LABELS[source][residual]}+{quant.qualname}"


def all_pattern_names() -> list[str]:
    return [pattern_name(s, r, q) for s in NORM_SOURCES for r in (False, True) for q in FOREIGN_QUANTS]


def fused_ops_for(quant: ForeignOp, residual: bool) -> list[str]:
    """The fused ops that can serve a quant op (any one of them suffices)."""
    rule = RULE_FUSED_OP_NAMES[residual]
    if quant is VLLM_GROUP_FP8_PACKED:  # no rule-op form of the packed layout
        return [PACKED_GROUP_FUSED_OP_NAMES[residual]]
    if quant is FBGEMM_ROW_FP8:
        return [rule]
    scheme = {VLLM_STATIC_FP8: Scheme.STATIC, VLLM_PER_TOKEN_FP8: Scheme.PER_TOKEN}.get(quant, Scheme.PER_GROUP)
    key = QuantKey(torch.float8_e4m3fn, scheme, 128 if scheme is Scheme.PER_GROUP else None)
    return [fused_op_name(key, residual)] + ([rule] if scheme is Scheme.PER_GROUP else [])


# --- reading calls in the post-grad graph ------------------------------------------------------

AUTO_FUNCTIONALIZED = (torch.ops.higher_order.auto_functionalized, torch.ops.higher_order.auto_functionalized_v2)


@dataclasses.dataclass
class Call:
    """One call of a foreign op in the post-grad graph.

    ``args``: every schema argument by name; a mutated argument is the buffer it writes (for
    ``auto_functionalized_v2``, its base). ``outputs``: the ``getitem`` nodes reading each output
    (by return index for a functional op, by argument name for a mutated buffer's new value).
    ``views``: mutated arguments that are views of a larger or differently laid out base (their
    new value is the base's, not theirs, so they cannot be rewired to a fused op's output), except
    ``transposed`` ones: a 2-D buffer allocated as the transpose of a contiguous one (vLLM's
    column-major scales), whose base is the transpose of the value written.
    """

    node: fx.Node
    op: torch._ops.OpOverload
    args: dict[str, Any]
    outputs: dict[Any, list[fx.Node]]
    views: set[str]
    mutating: bool
    transposed: set[str] = dataclasses.field(default_factory=set)

    def value(self, name: str) -> Any:
        """The (fake) value of an argument as the op sees it (a transposed buffer: the view)."""
        v = self.args[name].meta.get("val") if isinstance(self.args[name], fx.Node) else self.args[name]
        return v.t() if name in self.transposed else v


def _getitems(node: fx.Node) -> dict[int, list[fx.Node]]:
    out: dict[int, list[fx.Node]] = {}
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem:
            out.setdefault(user.args[1], []).append(user)  # type: ignore[arg-type]
    return out


def read_call(node: fx.Node, ops: set[torch._ops.OpOverload]) -> Call | None:
    """The call at ``node`` if it is one of ``ops`` (directly, or under auto_functionalized[_v2])."""
    if node.op != "call_function":
        return None
    if node.target in ops:
        schema = node.target._schema  # type: ignore[union-attr]
        args = _by_name(schema, node.args, node.kwargs)
        return Call(node, node.target, args, dict(_getitems(node)), set(), False)  # type: ignore[arg-type]
    if node.target not in AUTO_FUNCTIONALIZED or not node.args or node.args[0] not in ops:
        return None
    op = node.args[0]
    if torch._library.utils.is_out(op):  # an out= variant returns its outputs, not the bases
        return None
    schema = op._schema
    mutable = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    args = _by_name(schema, (), node.kwargs)
    items = _getitems(node)
    first = max(1, len(schema.returns))  # the op's own returns come first (None for "-> ()")
    outputs: dict[Any, list[fx.Node]] = {i: items.get(i, []) for i in range(first)}
    views: set[str] = set()
    transposed: set[str] = set()
    if node.target is torch.ops.higher_order.auto_functionalized:
        for i, name in enumerate(mutable):
            outputs[name] = items.get(first + i, [])
        return Call(node, op, args, outputs, views, True)
    bases = node.kwargs.get("_all_bases", [])
    used: set[int] = set()
    for name in mutable:
        index = node.kwargs.get(f"_{name}_base_index")
        if index is None:  # an optional buffer passed as None
            args[name] = None
            continue
        if index in used:
            return None  # two mutated arguments in one buffer: not something a fused op returns
        used.add(index)
        args[name] = bases[index]
        outputs[name] = items.get(first + index, [])
        if f"_{name}_storage_offset" in node.kwargs and _is_transpose(node.kwargs, name, bases[index]):
            transposed.add(name)
        elif any(f"_{name}_{k}" in node.kwargs for k in ("size", "storage_offset", "slice_dim")):
            views.add(name)
    return Call(node, op, args, outputs, views, True, transposed)


def _is_transpose(kwargs: dict, name: str, base: Any) -> bool:
    """Whether the as_strided view of ``base`` recorded for ``name`` is its 2-D transpose."""
    b = base.meta.get("val") if isinstance(base, fx.Node) else None
    if not isinstance(b, torch.Tensor) or b.dim() != 2 or kwargs[f"_{name}_storage_offset"] != 0:
        return False
    rows, cols = b.shape
    return (
        tuple(b.stride()) == (cols, 1)
        and tuple(kwargs[f"_{name}_size"]) == (cols, rows)
        and tuple(kwargs[f"_{name}_stride"]) == (1, cols)
    )


def _by_name(schema: torch.FunctionSchema, args: tuple, kwargs: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(args):
            out[arg.name] = args[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out
