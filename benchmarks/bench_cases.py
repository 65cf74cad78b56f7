# SPDX-License-Identifier: Apache-2.0
"""The kernel benchmark's cases and grid, and the computations it times.

A case is a scheme with or without the residual add; a cell is a case at one hidden size H and
token count T. For every cell there are three computations with the same meaning: our fused op,
our unfused pair (norm op, then quant op), and the plain-torch function (``native_fn``) that
Inductor compiles and eager runs. Nothing here touches a GPU.

The microscaling cases (MXFP8, MXFP4, NVFP4) are checked by :func:`check_microscaling` (their
outputs are packed bytes and block scales); :func:`check_cell` picks the check of a cell.
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
    # INT8 per token group (vLLM's and SGLang's per_token_group_quant_int8 rule, through the rule
    # ops): timed only when named
    ("int8_group128", "int8_group", False, 128),
    ("int8_group128+res", "int8_group", True, 128),
    # torchao PerTensor: one scale from the whole tensor's absmax (the rule ops' group_size -1)
    ("per_tensor", "per_tensor", False, None),
    ("per_tensor+res", "per_tensor", True, None),
    # Microscaling (group: the block size; a cell only where it divides H). NVFP4 with row-major
    # and with swizzled (128x4 tile) scales, MXFP8 with row-major scales, MXFP4 with swizzled
    # scales.
    ("nvfp4", "nvfp4", False, 16),
    ("nvfp4+res", "nvfp4", True, 16),
    ("nvfp4_swizzled", "nvfp4_swizzled", False, 16),
    ("nvfp4_swizzled+res", "nvfp4_swizzled", True, 16),
    ("mxfp8", "mxfp8", False, 32),
    ("mxfp8+res", "mxfp8", True, 32),
    ("mxfp4_swizzled", "mxfp4_swizzled", False, 32),
    ("mxfp4_swizzled+res", "mxfp4_swizzled", True, 32),
    # FP8 per-token-group-128 with UE8M0 scales packed for DeepGEMM (int32, four groups each,
    # MN-major, rows padded to 4): what vLLM's DeepGEMM path quantizes activations to on sm_100.
    ("group128_packed", "group_packed", False, 128),
    ("group128_packed+res", "group_packed", True, 128),
]
CASE_NAMES = [c[0] for c in CASES]
#: The microscaling cases (their own grid and targets) run only when named with ``--cases``; a
#: run without ``--cases`` times the FP8 / INT8 record's cases.
MX_CASE_NAMES = [c[0] for c in CASES if c[3] in (16, 32)]
#: The packed-scale group cases: like the microscaling cases, timed only when named.
PACKED_CASE_NAMES = [c[0] for c in CASES if c[1] == "group_packed"]
#: INT8 per-token-group (the rule ops): timed only when named too.
INT8_GROUP_CASE_NAMES = [c[0] for c in CASES if c[1] == "int8_group"]
RECORD_CASE_NAMES = [n for n in CASE_NAMES if n not in MX_CASE_NAMES + PACKED_CASE_NAMES + INT8_GROUP_CASE_NAMES]
# The hidden sizes of the wider grid (``--hidden``): dense models' widths, an odd-sized one
# (2880: a group of 64 divides it, 128 does not) and one that no group size divides (4100).
WIDE_HIDDEN = [2048, 2880, 3584, 5120, 6144, 12288, 16384, 4100]
EPS = 1e-6
DTYPE = torch.bfloat16

#: The microscaling schemes: (format, scales swizzled into the 128x4 tile layout).
MX_SCHEMES = {
    "nvfp4": ("nvfp4", False),
    "nvfp4_swizzled": ("nvfp4", True),
    "mxfp8": ("mxfp8", False),
    "mxfp4_swizzled": ("mxfp4", True),
}
#: The MX block-scale rule: torchao 0.18's default ``ScaleCalculationMode`` for ``to_mx`` and
#: ``MXTensor`` (FLOOR, the OCP MX rule: 2 ** (floor(log2(amax)) - emax of the element format)).
MX_SCALE_MODE = "floor"
# NVFP4's global scale is the static-scale input ``s`` (the benchmark's 4 / 448), read with
# torchao's divisor convention (``per_tensor_scale = amax / (448 * 6)``, values divided by it):
# a scale calibrated for amax 24, above every normalized value of these inputs, so no block
# scale saturates. A fixed, precomputed fp32 scalar, as a calibrated model holds it.


@dataclasses.dataclass(frozen=True)
class Cell:
    case: str
    hidden: int
    tokens: int

    @property
    def spec(self):
        return next(c for c in CASES if c[0] == self.case)


def hidden_sizes(case: str, quick: bool) -> list[int]:
    """The record's hidden sizes per case (7168 only for the group and microscaling cases)."""
    group = "group" in case or is_microscaling(case)
    if quick:
        return [7168] if group else [8192]
    return [4096, 7168, 8192] if group else [4096, 8192]


def is_microscaling(case: str) -> bool:
    return next(c[1] for c in CASES if c[0] == case) in MX_SCHEMES


def group_size(case: str) -> int | None:
    return next(c[3] for c in CASES if c[0] == case)


def cells(quick: bool, only: list[str] | None = None, hidden: list[int] | None = None,
          tokens: list[int] | None = None) -> list[Cell]:  # fmt: skip
    """The grid, case by case, then H, then T. ``hidden`` replaces the record's hidden sizes; a
    group or microscaling case gets a cell only where its group (block) size divides H.
    ``tokens`` replaces the T list. Without ``only``: the record's cases (not the microscaling
    ones)."""
    unknown = set(only or ()) - set(CASE_NAMES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; known: {', '.join(CASE_NAMES)}")
    out = []
    for name in CASE_NAMES:
        if name not in (only or RECORD_CASE_NAMES):
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
        elif scheme == "group_packed":
            out = packed_group_quant(y, group, fp8)
        elif scheme == "int8_static":
            out = (nf.quant_int8_static(y, s),)
        elif scheme == "int8_group":
            out = nf.quant_int8_per_group(y, group)
        elif scheme == "per_tensor":
            out = nf.quant_fp8_per_tensor(y, fp8)
        elif scheme in MX_SCHEMES:
            out = mx_spec_quant(scheme, y, s)
        else:
            out = nf.quant_int8_per_token(y)
        return (*out, r) if residual else out

    return fn


def packed_group_quant(y: torch.Tensor, group: int, fp8: torch.dtype):
    """The packed-scale group quantizer in plain torch (what Inductor compiles): per group of
    ``group`` elements, absmax floored at 1e-10 over 448, rounded up to a power of two on its bits
    (UE8M0), q = y / scale clamped; the scales' exponent bytes packed four to an int32 in
    DeepGEMM's MN-major layout (rows padded to 4, padding 0)."""
    finfo = torch.finfo(fp8)
    t, h = y.shape
    yg = y.to(torch.float32).reshape(t, h // group, group)
    amax = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10)
    bits = (amax / finfo.max).view(torch.int32)
    scale = ((bits + 0x7FFFFF) & -0x800000).view(torch.float32)  # up to a power of two
    q = (yg / scale).clamp(min=finfo.min, max=finfo.max).to(fp8).reshape(t, h)
    groups, packed_k, padded = h // group, -(-h // group // 4), -(-t // 4) * 4
    e = ((scale.view(torch.int32) >> 23) & 0xFF).to(torch.uint8).reshape(t, groups)
    e = torch.nn.functional.pad(e, (0, 4 * packed_k - groups, 0, padded - t))
    words = e.reshape(padded, packed_k, 4).view(torch.int32).reshape(padded, packed_k)
    out = torch.empty_strided((padded, packed_k), (1, padded), dtype=torch.int32, device=y.device)
    return q, out.copy_(words)[:t]


def mx_spec_quant(scheme: str, y, s):
    """The microscaling quantizer in plain torch: fusion_kernels.microscaling's, torchao's
    arithmetic bit for bit (``to_mx`` with FLOOR scales; ``nvfp4_quantize`` with a per-tensor
    scale; ``to_blocked`` for swizzled scales). ``(q, scales)``: q float8_e4m3fn (MXFP8) or
    packed FP4 as uint8 (two per byte); scales float8_e8m0fnu (MX) or float8_e4m3fn (NVFP4),
    row-major [T, H / block] or the swizzled buffer."""
    from fusion_kernels import microscaling as mx

    fmt, swizzled = MX_SCHEMES[scheme]
    layout = "swizzled" if swizzled else "row_major"
    if fmt == "mxfp8":
        return mx.mxfp8_quantize(y, MX_SCALE_MODE, torch.float8_e4m3fn, layout)
    if fmt == "mxfp4":
        return mx.mxfp4_quantize(y, MX_SCALE_MODE, layout)
    return mx.nvfp4_quantize(y, s, "divisor", layout)


def mx_op_quant(scheme: str, y, s):
    """Our unfused microscaling quant op (torch.ops.fusion_kernels), same outputs as
    :func:`mx_spec_quant`."""
    ops = torch.ops.fusion_kernels
    fmt, swizzled = MX_SCHEMES[scheme]
    if fmt == "mxfp8":
        return ops.mxfp8_quant(y, torch.float8_e4m3fn, MX_SCALE_MODE, swizzled)
    if fmt == "mxfp4":
        return ops.mxfp4_quant(y, MX_SCALE_MODE, swizzled)
    return ops.nvfp4_quant(y, s, False, swizzled)  # False: s is torchao's divisor


def mx_fused_op(cell: Cell):
    """Our fused norm + microscaling quant op for the cell: ``(q, scales[, residual_out])``."""
    _, scheme, residual, _ = cell.spec
    fmt, swizzled = MX_SCHEMES[scheme]
    op = getattr(torch.ops.fusion_kernels, f"{'fused_add_' if residual else ''}rms_norm_{fmt}_quant")

    def fused(x, r, w, s):
        head = (x, r, w, EPS) if residual else (x, w, EPS)
        if fmt == "mxfp8":
            return op(*head, torch.float8_e4m3fn, MX_SCALE_MODE, swizzled)
        if fmt == "mxfp4":
            return op(*head, MX_SCALE_MODE, swizzled)
        return op(*head, s, False, swizzled)

    return fused


#: The per-tensor cases' scale rule (torchao's: the scale rounded to the model dtype, no floor).
PER_TENSOR_RULE = (448.0, 0.0, 0.0, 0.0, DTYPE, False)
#: The INT8 per-token-group rule (quant_int8_per_group's), as the rule ops' arguments.
INT8_GROUP_RULE = (127.0, 1e-10, 0.0, 0.0, torch.float32, False)


def composed(cell: Cell, ns):
    """Norm op then quant op, from ``ns``: torch.ops.fusion_kernels (our unfused pair) or
    fusion_kernels.reference (the spec); both name their functions alike, but for the
    microscaling quantizers (the ops' ``*_quant``, the spec's ``*_quantize``)."""
    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn
    mx_quant = mx_op_quant if ns is torch.ops.fusion_kernels else mx_spec_quant

    def fn(x, r, w, s):
        if residual:
            y, r = ns.fused_add_rms_norm(x, r, w, EPS)
        else:
            y = ns.rms_norm(x, w, EPS)
        if scheme in MX_SCHEMES:
            out = mx_quant(scheme, y, s)
        elif scheme == "static":
            out = (ns.static_scaled_fp8_quant(y, s, fp8),)
        elif scheme == "per_token":
            out = ns.dynamic_per_token_scaled_fp8_quant(y, None, fp8)
        elif scheme == "group":
            out = ns.per_token_group_fp8_quant(y, group, False, False, fp8)
        elif scheme == "group_packed":
            out = ns.per_token_group_fp8_quant_packed(y, group, fp8)
        elif scheme == "int8_static":
            out = (ns.static_scaled_int8_quant(y, s),)
        elif scheme == "int8_group":
            out = ns.dynamic_quant(y, torch.int8, group, *INT8_GROUP_RULE)
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

    if scheme in MX_SCHEMES:
        return mx_fused_op(cell), composed(cell, ops)

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
        if scheme == "group_packed":
            return (
                ops.fused_add_rms_norm_per_token_group_quant_packed(x, r, w, EPS, group, fp8)
                if residual
                else ops.rms_norm_per_token_group_quant_packed(x, w, EPS, group, fp8)
            )
        if scheme == "int8_static":
            return (ops.rms_norm_static_int8_quant(x, w, s, EPS),)
        if scheme == "int8_group":
            return (
                ops.fused_add_rms_norm_dynamic_quant(x, r, w, EPS, torch.int8, group, *INT8_GROUP_RULE)
                if residual
                else ops.rms_norm_dynamic_quant(x, w, EPS, torch.int8, group, *INT8_GROUP_RULE)
            )
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
    if scheme in ("group", "int8_group"):
        n += t * (h // group) * 4
    if scheme == "group_packed":  # one byte per group, the int32 columns padded (rows to 4)
        n += -(-t // 4) * 4 * -(-h // group // 4) * 4
    if scheme == "per_tensor":
        n += 4  # (a two-pass kernel reads x twice: at most ~60% of this minimum's bandwidth)
    if scheme in MX_SCHEMES:
        n += mx_packed_bytes(cell) - t * h  # q packed (replacing the byte per element above) + scales
    return n


def mx_packed_bytes(cell: Cell) -> int:
    """The bytes a microscaling cell writes: q (one byte per element for MXFP8, half a byte for
    FP4) and its scales (one byte per block; swizzled: the whole padded buffer of 512-byte
    128x4 tiles, as a kernel writes it), plus NVFP4's global scale read (4 bytes)."""
    _, scheme, _, block = cell.spec
    t, h = cell.tokens, cell.hidden
    fmt, swizzled = MX_SCHEMES[scheme]
    q = t * h if fmt == "mxfp8" else t * h // 2
    cols = h // block
    scales = 512 * -(-t // 128) * -(-cols // 4) if swizzled else t * cols
    return q + scales + (4 if fmt == "nvfp4" else 0)


# --- the checks ---------------------------------------------------------------------------------

#: How far a microscaling variant's outputs may be from the whole spec's. ``F.rms_norm`` rounds
#: the norm output once where the spec rounds twice, Inductor's fused kernel quantizes it
#: unrounded (fp32), and our norm op sums in another order: a block whose absmax sits at a scale
#: boundary may take the neighbouring scale (one E8M0 binade, one E4M3 step), a value at a
#: rounding boundary the neighbouring code. Fractions of the blocks (at least 4 blocks allowed)
#: and of the elements of blocks whose scales agree. Seen on CPU (randn inputs, H 512 to 7168):
#: NVFP4 scales up to 3.9% (E4M3 has 3 mantissa bits: many boundaries), MX scales up to 1.6%,
#: MXFP8 elements up to 3.4%.
MX_SCALE_FLIPS = {"nvfp4": 0.08, "mxfp8": 0.02, "mxfp4": 0.02}
MX_ELEMENT_FLIPS = 0.10


def check_cell(cell: Cell, name: str, outs, x, r, w, s) -> None:
    """The benchmark's check of a variant's outputs before it is timed: bench_timing.check, or
    :func:`check_microscaling` for the microscaling cases."""
    if cell.spec[1] in MX_SCHEMES:
        check_microscaling(cell, name, outs, x, r, w, s)
    else:
        from bench_timing import check

        check(cell, name, outs, x, r, w, s)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def check_microscaling(cell: Cell, name: str, outs, x, r, w, s) -> None:
    """A microscaling variant's outputs: dtypes and shapes as the spec's, the new residual equal,
    and the quantizer's bytes (q, scales, the swizzled buffer's padding) bit for bit equal to the
    spec's quantizer (fusion_kernels.microscaling) applied to the variant's own norm: our norm op
    for our fused op and our unfused pair (the fused op is the pair, bit for bit), ``F.rms_norm``
    for eager. Every variant, Inductor's included, is also within :data:`MX_SCALE_FLIPS` and
    :data:`MX_ELEMENT_FLIPS` of the whole spec (fusion_kernels.reference's norm, then the
    quantizer). Inductor is not held to bit equality: its fused kernel quantizes the norm output
    unrounded (it does not emulate the bf16 rounding between the two)."""
    from fusion_kernels import reference as ref
    from fusion_passes import native_forms as nf

    _, scheme, residual, _ = cell.spec
    what = f"{cell} {name}"
    exp = composed(cell, ref)(x, r, w, s)
    outs = tuple(outs)
    assert len(outs) == len(exp), f"{what}: {len(outs)} outputs, expected {len(exp)}"
    for part, got, want in zip(("q", "scales", "residual"), outs, exp):
        assert got.dtype == want.dtype and got.shape == want.shape, (
            f"{what} {part}: {got.dtype}{tuple(got.shape)}, expected {want.dtype}{tuple(want.shape)}"
        )
    if residual:
        torch.testing.assert_close(outs[2], exp[2], rtol=0, atol=0, msg=f"{what} residual")
    own = None
    if name in ("fused", "unfused"):
        ops = torch.ops.fusion_kernels
        y = ops.fused_add_rms_norm(x, r, w, EPS)[0] if residual else ops.rms_norm(x, w, EPS)
        own = mx_spec_quant(scheme, y, s)
    elif name == "eager":
        own = mx_spec_quant(scheme, nf.rms_norm_functional(x + r if residual else x, w, EPS), s)
    if own is not None:
        for part, got, want in zip(("q", "scales"), outs, own):
            differ = int((_bytes(got) != _bytes(want)).sum())
            assert differ == 0, f"{what} {part}: {differ} of {got.numel()} bytes differ from the quantizer's spec"
    assert_mx_close(cell, what, outs[:2], exp[:2])


def _fp4_ordinal(packed: torch.Tensor) -> torch.Tensor:
    """The signed position of each packed FP4 value on the e2m1 grid (-7..7; -0 and +0 are 0)."""
    from fusion_kernels.microscaling import unpack_fp4

    codes = unpack_fp4(packed).to(torch.int64)
    return torch.where((codes & 8) != 0, -(codes & 7), codes & 7)


def assert_mx_close(cell: Cell, what: str, got, want) -> None:
    """Two microscaling (q, scales) pairs differ at most in a few blocks' scales, by one step,
    and elsewhere in a few elements, by one step of the element grid; swizzled padding is 0."""
    from fusion_kernels.microscaling import swizzle_scales_128x4, unswizzle_scales_128x4
    from fusion_kernels.testing import quant_steps

    _, scheme, _, block = cell.spec
    fmt, swizzled = MX_SCHEMES[scheme]
    (q, scales), (q_exp, scales_exp) = got, want
    hidden = q.shape[-1] * (1 if fmt == "mxfp8" else 2)
    rows, cols = q.numel() * (1 if fmt == "mxfp8" else 2) // hidden, hidden // block

    def row_major(sc):
        return unswizzle_scales_128x4(sc, rows, cols) if swizzled else sc.reshape(rows, cols)

    sc, sc_exp = row_major(scales), row_major(scales_exp)
    if swizzled:
        assert torch.equal(_bytes(swizzle_scales_128x4(sc)), _bytes(scales)), f"{what}: swizzled padding not 0"
    if fmt == "nvfp4":
        scale_steps = quant_steps(sc, sc_exp)
    else:  # E8M0: a byte is a binade
        scale_steps = (_bytes(sc).to(torch.int64) - _bytes(sc_exp).to(torch.int64)).abs()
    assert int(scale_steps.max()) <= 1, f"{what}: a scale {int(scale_steps.max())} steps from the spec's"
    flips = int((scale_steps > 0).sum())
    assert flips <= max(4, MX_SCALE_FLIPS[fmt] * scale_steps.numel()), (
        f"{what}: {flips} of {scale_steps.numel()} block scales differ from the spec's"
    )
    if fmt == "mxfp8":
        steps = quant_steps(q.reshape(rows, hidden), q_exp.reshape(rows, hidden))
    else:
        steps = (_fp4_ordinal(q.reshape(rows, -1)) - _fp4_ordinal(q_exp.reshape(rows, -1))).abs()
    steps = steps[(scale_steps == 0).repeat_interleave(block, dim=-1)]
    if steps.numel():
        assert int(steps.max()) <= 1, f"{what}: an element {int(steps.max())} steps from the spec's"
        off = float((steps > 0).float().mean())
        assert off <= MX_ELEMENT_FLIPS, f"{what}: {off:.2%} of the elements differ from the spec's"
