# SPDX-License-Identifier: Apache-2.0
"""The kernel benchmark's cases and grid, and the computations it times.

A case is a scheme with or without the residual add; a cell is a case at one hidden size H and
token count T. For every cell there are three computations with the same meaning: our fused op,
our unfused pair (norm op, then quant op), and the plain-torch function (``native_fn``) that
Inductor compiles and eager runs. Nothing here touches a GPU.
"""

from __future__ import annotations

import dataclasses

import torch

FULL_T = [1, 16, 128, 1024, 4096, 16384]
QUICK_T = [1, 16, 4096, 16384]
CASES = [
    # name, scheme, residual, group
    ("static", "static", False, None),
    ("static+res", "static", True, None),
    ("per_token", "per_token", False, None),
    ("per_token+res", "per_token", True, None),
    ("group128", "group", False, 128),
    ("group128+res", "group", True, 128),
    ("group64", "group", False, 64),
    ("int8_static", "int8_static", False, None),
    ("int8_per_token", "int8_per_token", False, None),
    # torchao PerTensor: one scale from the whole tensor's absmax (the rule ops' group_size -1)
    ("per_tensor", "per_tensor", False, None),
    ("per_tensor+res", "per_tensor", True, None),
]
CASE_NAMES = [c[0] for c in CASES]
# The hidden sizes of the wider grid (``--hidden``): dense models' widths, an odd-sized one
# (2880: a group of 64 divides it, 128 does not) and one that no group size divides (4100).
WIDE_HIDDEN = [2048, 2880, 3584, 5120, 6144, 12288, 16384, 4100]
EPS = 1e-6
DTYPE = torch.bfloat16


@dataclasses.dataclass(frozen=True)
class Cell:
    case: str
    hidden: int
    tokens: int

    @property
    def spec(self):
        return next(c for c in CASES if c[0] == self.case)


def hidden_sizes(case: str, quick: bool) -> list[int]:
    """The record's hidden sizes per case (7168 only for the group cases)."""
    group = "group" in case
    if quick:
        return [7168] if group else [8192]
    return [4096, 7168, 8192] if group else [4096, 8192]


def group_size(case: str) -> int | None:
    return next(c[3] for c in CASES if c[0] == case)


def cells(quick: bool, only: list[str] | None = None, hidden: list[int] | None = None,
          tokens: list[int] | None = None) -> list[Cell]:  # fmt: skip
    """The grid, case by case, then H, then T. ``hidden`` replaces the record's hidden sizes; a
    group case gets a cell only where its group size divides H. ``tokens`` replaces the T list."""
    unknown = set(only or ()) - set(CASE_NAMES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; known: {', '.join(CASE_NAMES)}")
    out = []
    for name in CASE_NAMES:
        if only and name not in only:
            continue
        group = group_size(name)
        sizes = hidden_sizes(name, quick) if hidden is None else [h for h in hidden if not group or h % group == 0]
        for h in sizes:
            for t in tokens or (QUICK_T if quick else FULL_T):
                out.append(Cell(name, h, t))
    return out


# --- the computations ---------------------------------------------------------------------------


def native_fn(cell: Cell):
    """The plain-torch function Inductor compiles (and eager runs)."""
    from fusion_passes import native_forms as nf

    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn

    def fn(x, r, w, s):
        if residual:
            x, r = nf.add_residual(x, r)
        y = nf.rms_norm_functional(x, w, EPS)
        if scheme == "static":
            out = (nf.quant_fp8_static(y, s, fp8),)
        elif scheme == "per_token":
            out = nf.quant_fp8_per_token(y, fp8)
        elif scheme == "group":
            out = nf.quant_fp8_per_group(y, group, fp8)
        elif scheme == "int8_static":
            out = (nf.quant_int8_static(y, s),)
        elif scheme == "per_tensor":
            out = nf.quant_fp8_per_tensor(y, fp8)
        else:
            out = nf.quant_int8_per_token(y)
        return (*out, r) if residual else out

    return fn


#: The per-tensor cases' scale rule (torchao's: the scale rounded to the model dtype, no floor).
PER_TENSOR_RULE = (448.0, 0.0, 0.0, 0.0, DTYPE, False)


def composed(cell: Cell, ns):
    """Norm op then quant op, from ``ns``: torch.ops.fusion_kernels (our unfused pair) or
    fusion_kernels.reference (the spec); both name their functions alike."""
    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn

    def fn(x, r, w, s):
        if residual:
            y, r = ns.fused_add_rms_norm(x, r, w, EPS)
        else:
            y = ns.rms_norm(x, w, EPS)
        if scheme == "static":
            out = (ns.static_scaled_fp8_quant(y, s, fp8),)
        elif scheme == "per_token":
            out = ns.dynamic_per_token_scaled_fp8_quant(y, None, fp8)
        elif scheme == "group":
            out = ns.per_token_group_fp8_quant(y, group, False, False, fp8)
        elif scheme == "int8_static":
            out = (ns.static_scaled_int8_quant(y, s),)
        elif scheme == "per_tensor":
            out = ns.dynamic_quant(y, fp8, -1, *PER_TENSOR_RULE)
        else:
            out = ns.dynamic_scaled_int8_quant(y)
        return (*out, r) if residual else out

    return fn


def ours_fns(cell: Cell):
    """Our fused op and our unfused pair for the cell."""
    ops = torch.ops.fusion_kernels
    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn

    def fused(x, r, w, s):
        if scheme == "static":
            return (
                ops.fused_add_rms_norm_static_fp8_quant(x, r, w, s, EPS, fp8)
                if residual
                else (ops.rms_norm_static_fp8_quant(x, w, s, EPS, fp8),)
            )
        if scheme == "per_token":
            return (
                ops.fused_add_rms_norm_dynamic_per_token_quant(x, r, w, EPS, fp8, None)
                if residual
                else ops.rms_norm_dynamic_per_token_quant(x, w, EPS, fp8, None)
            )
        if scheme == "group":
            return (
                ops.fused_add_rms_norm_per_token_group_quant(x, r, w, EPS, group, False, False, fp8)
                if residual
                else ops.rms_norm_per_token_group_quant(x, w, EPS, group, False, False, fp8)
            )
        if scheme == "int8_static":
            return (ops.rms_norm_static_int8_quant(x, w, s, EPS),)
        if scheme == "per_tensor":
            return (
                ops.fused_add_rms_norm_dynamic_quant(x, r, w, EPS, fp8, -1, *PER_TENSOR_RULE)
                if residual
                else ops.rms_norm_dynamic_quant(x, w, EPS, fp8, -1, *PER_TENSOR_RULE)
            )
        return ops.rms_norm_dynamic_per_token_quant(x, w, EPS, torch.int8, None)

    unfused = composed(cell, ops)

    return fused, unfused


def min_bytes(cell: Cell) -> int:
    """Bytes a kernel must move at least: read x [+ residual] + weight, write q [+ residual] + scales."""
    _, scheme, residual, group = cell.spec
    t, h, e = cell.tokens, cell.hidden, DTYPE.itemsize
    n = t * h * e + t * h * 1 + h * e  # read x, write q, read w
    if residual:
        n += 2 * t * h * e  # read residual, write the new residual
    if scheme in ("per_token", "int8_per_token"):
        n += t * 4
    if scheme == "group":
        n += t * (h // group) * 4
    if scheme == "per_tensor":
        n += 4  # (a two-pass kernel reads x twice: at most ~60% of this minimum's bandwidth)
    return n
