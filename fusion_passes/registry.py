# SPDX-License-Identifier: Apache-2.0
"""The op registry: QUANT_OPS (quant key -> unfused quant op) and FUSED_OPS ((quant key,
residual) -> fused op), the only copy of these tables.

Built lazily, behind one ``hasattr(torch.ops.fusion_kernels, name)`` guard per op: a library
built without an op (or no library at all) just loses the patterns that need it, and
:attr:`Registry.missing` says why. ``hasattr(torch.ops, "fusion_kernels")`` is always true
(namespaces are lazy), so the guard is per op, never per namespace.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping

import torch

import fusion_kernels
from fusion_passes.quant_key import FP8_DTYPES, GROUP_SIZES, INT8_PER_TOKEN, INT8_STATIC, QuantKey, Scheme

NAMESPACE = "fusion_kernels"
NORM_OP_NAMES = {False: "rms_norm", True: "fused_add_rms_norm"}

#: The rule ops: dynamic quantization (per row or per group of 32/64/128, FP8 or INT8) whose scale
#: rule is a set of op arguments (divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
#: scale_ue8m0; fusion_kernels.reference.dynamic_scale is its spec). The unfused quant op, and the
#: fused ops by residual (False: RMSNorm, True: residual add + RMSNorm). Each behind its own
#: hasattr guard, independent of the fixed-rule tables above.
RULE_QUANT_OP_NAME = "dynamic_quant"
RULE_FUSED_OP_NAMES = {False: "rms_norm_dynamic_quant", True: "fused_add_rms_norm_dynamic_quant"}
#: The fused rule ops' norm-output variants (the normalised output returned too), by residual.
RULE_NORM_OUT_OP_NAMES = {
    False: "rms_norm_dynamic_quant_with_norm_out",
    True: "fused_add_rms_norm_dynamic_quant_with_norm_out",
}


#: The microscaling formats: format -> (unfused quant op, fused ops by residual). CPU kernels
#: only in this release; each op behind its own hasattr guard.
MX_FORMATS = ("mxfp8", "mxfp4", "nvfp4")


#: The per-token-group FP8 ops whose UE8M0 scales are packed for DeepGEMM (int32, four groups each,
#: MN-major): the unfused quant op and the fused ops by residual.
PACKED_GROUP_QUANT_OP_NAME = "per_token_group_fp8_quant_packed"
PACKED_GROUP_FUSED_OP_NAMES = {
    False: "rms_norm_per_token_group_quant_packed",
    True: "fused_add_rms_norm_per_token_group_quant_packed",
}


def mx_op_names(fmt: str) -> tuple[str, dict[bool, str]]:
    return f"{fmt}_quant", {False: f"rms_norm_{fmt}_quant", True: f"fused_add_rms_norm_{fmt}_quant"}


def quant_op_name(key: QuantKey) -> str:
    """The unfused quant op of a key."""
    if key.is_fp8:
        return {
            Scheme.STATIC: "static_scaled_fp8_quant",
            Scheme.PER_TOKEN: "dynamic_per_token_scaled_fp8_quant",
            Scheme.PER_GROUP: "per_token_group_fp8_quant",
        }[key.scheme]
    return {Scheme.STATIC: "static_scaled_int8_quant", Scheme.PER_TOKEN: "dynamic_scaled_int8_quant"}[key.scheme]


def fused_op_name(key: QuantKey, residual: bool) -> str:
    """The fused [residual add +] RMSNorm + quant op of a key."""
    if key.is_fp8:
        base = {
            Scheme.STATIC: "rms_norm_static_fp8_quant",
            Scheme.PER_TOKEN: "rms_norm_dynamic_per_token_quant",
            Scheme.PER_GROUP: "rms_norm_per_token_group_quant",
        }[key.scheme]
    else:
        base = {Scheme.STATIC: "rms_norm_static_int8_quant", Scheme.PER_TOKEN: "rms_norm_dynamic_per_token_quant"}[
            key.scheme
        ]
    return ("fused_add_" + base) if residual else base


#: Quantizer families, each named after its form (the patterns and reports use these names).
FAMILIES = ("fp8_static", "fp8_per_token", "fp8_per_group", "int8_static", "int8_per_token")


def family_key(family: str) -> QuantKey:
    """A representative key of a family: every key of a family names the same unfused and fused
    ops (the FP8 flavour and the group size are op arguments)."""
    return {
        "fp8_static": QuantKey(torch.float8_e4m3fn, Scheme.STATIC),
        "fp8_per_token": QuantKey(torch.float8_e4m3fn, Scheme.PER_TOKEN),
        "fp8_per_group": QuantKey(torch.float8_e4m3fn, Scheme.PER_GROUP, 128),
        "int8_static": INT8_STATIC,
        "int8_per_token": INT8_PER_TOKEN,
    }[family]


def all_keys() -> list[QuantKey]:
    """Every quant key the library can serve, both FP8 flavours included."""
    keys: list[QuantKey] = []
    for dtype in FP8_DTYPES:
        keys.append(QuantKey(dtype, Scheme.STATIC))
        keys.append(QuantKey(dtype, Scheme.PER_TOKEN))
        keys.extend(QuantKey(dtype, Scheme.PER_GROUP, g) for g in GROUP_SIZES)
    keys += [INT8_STATIC, INT8_PER_TOKEN]
    return keys


def fp8_keys_for(device: torch.device | str) -> list[QuantKey]:
    """The FP8 quant keys of ``device``'s flavour (the platform module decides: float8_e4m3fnuz
    on MI300, float8_e4m3fn elsewhere)."""
    from fusion_kernels import platform

    flavour = platform.fp8_dtype(device)
    return [k for k in all_keys() if k.dtype == flavour]


def _lookup_op(name: str) -> torch._ops.OpOverload | None:
    """The op's default overload if the loaded library defines it (the hasattr guard)."""
    ns = getattr(torch.ops, NAMESPACE)
    if not hasattr(ns, name):
        return None
    return getattr(ns, name).default


@dataclasses.dataclass
class Registry:
    quant_ops: dict[QuantKey, torch._ops.OpOverload]
    fused_ops: dict[tuple[QuantKey, bool], torch._ops.OpOverload]
    norm_ops: dict[bool, torch._ops.OpOverload]
    #: op name -> why it is unavailable
    missing: dict[str, str]
    library: str  # one line: how the library was obtained, or why it is absent
    #: The rule ops that the loaded library defines (see RULE_QUANT_OP_NAME, RULE_FUSED_OP_NAMES).
    rule_quant_op: torch._ops.OpOverload | None = None
    rule_fused_ops: dict[bool, torch._ops.OpOverload] = dataclasses.field(default_factory=dict)
    #: Their norm-output variants (see RULE_NORM_OUT_OP_NAMES), where defined.
    rule_norm_out_ops: dict[bool, torch._ops.OpOverload] = dataclasses.field(default_factory=dict)
    #: The microscaling ops by name (MX_FORMATS), where defined.
    mx_ops: dict[str, torch._ops.OpOverload] = dataclasses.field(default_factory=dict)
    #: The packed-scale group ops by name (PACKED_GROUP_QUANT_OP_NAME, PACKED_GROUP_FUSED_OP_NAMES).
    packed_group_ops: dict[str, torch._ops.OpOverload] = dataclasses.field(default_factory=dict)

    def schemas(self) -> list[str]:
        ops = {*self.quant_ops.values(), *self.fused_ops.values(), *self.norm_ops.values()}
        ops |= {*self.rule_fused_ops.values(), *([self.rule_quant_op] if self.rule_quant_op is not None else [])}
        ops |= set(self.rule_norm_out_ops.values()) | set(self.mx_ops.values()) | set(self.packed_group_ops.values())
        return sorted(str(op._schema) for op in ops)

    def rule_op(self, residual: bool | None) -> torch._ops.OpOverload | None:
        """The rule op: unfused (``residual`` None), fused with RMSNorm (False) or with residual
        add + RMSNorm (True); None where the loaded library does not define it (``missing`` says
        why)."""
        return self.rule_quant_op if residual is None else self.rule_fused_ops.get(residual)


def _library_line() -> str:
    st = fusion_kernels.state()
    if st.status == "loaded":
        line = f"loaded ({st.source}, {st.target or 'prebuilt'})"
        if st.gpu_note:
            line += f"; GPU kernels not built: {st.gpu_note}"
        return line
    return f"{st.status}: {st.reason}" if st.reason else st.status


def build_registry() -> Registry:
    st = fusion_kernels.state()
    absent_reason = "the op library is not loaded" if not st.loaded else "not defined by the loaded library"
    if st.status in ("disabled", "failed"):
        absent_reason = f"the op library is {st.status} ({st.reason})"
    missing: dict[str, str] = {}

    def get(name: str):
        op = _lookup_op(name)
        if op is None:
            missing[name] = absent_reason
        return op

    norm_ops = {res: op for res, name in NORM_OP_NAMES.items() if (op := get(name)) is not None}
    quant_ops: dict[QuantKey, torch._ops.OpOverload] = {}
    fused_ops: dict[tuple[QuantKey, bool], torch._ops.OpOverload] = {}
    for key in all_keys():
        if (q := get(quant_op_name(key))) is not None:
            quant_ops[key] = q
        for residual in (False, True):
            if (f := get(fused_op_name(key, residual))) is not None:
                fused_ops[(key, residual)] = f
    rule_quant_op = get(RULE_QUANT_OP_NAME)
    rule_fused_ops = {res: op for res, name in RULE_FUSED_OP_NAMES.items() if (op := get(name)) is not None}
    rule_norm_out_ops = {res: op for res, name in RULE_NORM_OUT_OP_NAMES.items() if (op := get(name)) is not None}
    mx_ops = {}
    for fmt in MX_FORMATS:
        quant, fused = mx_op_names(fmt)
        for name in (quant, *fused.values()):
            if (op := get(name)) is not None:
                mx_ops[name] = op
    packed_group_ops = {name: op for name in (PACKED_GROUP_QUANT_OP_NAME, *PACKED_GROUP_FUSED_OP_NAMES.values())
                        if (op := get(name)) is not None}  # fmt: skip
    return Registry(quant_ops, fused_ops, norm_ops, missing, _library_line(), rule_quant_op, rule_fused_ops,
                    rule_norm_out_ops, mx_ops, packed_group_ops)  # fmt: skip


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry(refresh: bool = False) -> Registry:
    """The registry for the library as loaded now (rebuilt on ``refresh``)."""
    global _registry
    with _registry_lock:
        if _registry is None or refresh:
            _registry = build_registry()
        return _registry


class _LazyTable(Mapping):
    """A read-only view of one registry table, built on first access."""

    def __init__(self, field: str) -> None:
        self._field = field

    def _table(self) -> dict:
        return getattr(get_registry(), self._field)

    def __getitem__(self, key):
        return self._table()[key]

    def __iter__(self) -> Iterator:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"{self._field.upper()}({self._table()!r})"


QUANT_OPS: Mapping[QuantKey, torch._ops.OpOverload] = _LazyTable("quant_ops")
FUSED_OPS: Mapping[tuple[QuantKey, bool], torch._ops.OpOverload] = _LazyTable("fused_ops")
#: residual (False: RMSNorm, True: residual add + RMSNorm) -> the fused rule op.
RULE_FUSED_OPS: Mapping[bool, torch._ops.OpOverload] = _LazyTable("rule_fused_ops")
