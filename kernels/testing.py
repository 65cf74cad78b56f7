# SPDX-License-Identifier: Apache-2.0
"""Comparison helpers shared by the tests, the GPU checks and the benchmarks.

Quantized outputs are compared in quantization steps: two FP8 codes of the same sign are one
step apart when their magnitudes are adjacent codes (e4m3 encodings are monotonic in magnitude),
two INT8 values when they differ by one.
"""

from __future__ import annotations

import torch

from fusion_kernels.reference import FP8_DTYPES, QMAX, ue8m0_ceil

#: Relative tolerance for fp32 dynamic scales: the absmax is taken of the normalized row, which
#: may differ from the reference's by two roundings of the input dtype (see ACT_TOL).
SCALE_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def quant_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise distance in quantization steps between two FP8 or INT8 tensors (int64).

    NaN vs NaN is distance 0; NaN vs a number is a large distance.
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        raise AssertionError(f"quant_steps: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
    if a.dtype == torch.int8:
        return (a.to(torch.int64) - b.to(torch.int64)).abs()
    if a.dtype not in FP8_DTYPES:
        raise AssertionError(f"quant_steps: not a quantized dtype: {a.dtype}")

    def ordinal(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bits = t.contiguous().view(torch.uint8).to(torch.int64)
        nan = torch.isnan(t.float())
        mag = bits & 0x7F
        sign = torch.where((bits & 0x80) != 0, -1, 1)
        return torch.where(nan, torch.zeros_like(mag), sign * mag), nan

    oa, na = ordinal(a)
    ob, nb = ordinal(b)
    d = (oa - ob).abs()
    d = torch.where(na & nb, torch.zeros_like(d), d)
    return torch.where(na ^ nb, torch.full_like(d, 1 << 20), d)


def assert_quant_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    max_fraction: float,
    what: str = "q",
    same_scale: torch.Tensor | None = None,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    value_rtol: float = 0.0,
) -> None:
    """Every element within one step of ``expected``; at most ``max_fraction`` of them off.

    ``value_rtol``: how far (relative) the values that were quantized may legitimately differ
    from the reference's (a normalized row: ACT_TOL). On the INT8 grid, whose steps near 127 are
    finer than a 16-bit float's, that is ``floor(value_rtol * (|q| + 1))`` steps more; FP8 steps
    (2^-4 to 2^-3 relative) are coarser than ACT_TOL, so one step still bounds them.

    ``scales`` (actual, expected; broadcastable to the output): elements whose dynamic scales
    differ are compared dequantized, within a step of each grid (see below); ``same_scale``
    then defaults to where they are equal.

    ``same_scale`` (bool, broadcastable to the output) restricts the fraction bound to elements
    whose dynamic scale equals the reference's exactly: where the scale itself differs (within
    its own tolerance), every element may legitimately sit one step away.
    """
    d = quant_steps(actual, expected)
    if d.numel() == 0:
        return
    if scales is not None:
        if same_scale is None:
            same_scale = _equal_or_both_nan(*scales)
        # Where the scales differ the two q grids differ (with UE8M0 scales by a factor of two:
        # a whole binade of FP8 steps), so those elements are compared dequantized instead: each
        # is within half a step of its own grid from (almost) the same value.
        sa, se = (t.float().expand(actual.shape) for t in scales)
        differ = ~_equal_or_both_nan(sa, se)
        if bool(differ.any()):
            qa, qe = actual[differ].float(), expected[differ].float()
            da, de = qa * sa[differ], qe * se[differ]
            bound = _grid_step(qa, actual.dtype) * sa[differ] + _grid_step(qe, expected.dtype) * se[differ]
            if value_rtol and expected.dtype == torch.int8:
                # the quantized values' own legitimate difference (as ``allowed`` below, in value)
                bound = bound + value_rtol * (de.abs() + se[differ])
            gap = (da - de).abs()
            ok = (gap <= bound) | (torch.isnan(da) & torch.isnan(de))
            assert bool(ok.all()), (
                f"{what}: where the scale differs from the reference's, a dequantized value is "
                f"{float((gap / bound)[~ok].max()):.1f} grid steps away"
            )
            d = d.masked_fill(differ, 0)
    allowed = 1
    if value_rtol and expected.dtype == torch.int8:
        allowed = 1 + torch.floor(value_rtol * (expected.to(torch.float32).abs() + 1)).to(torch.int64)
    excess = d - allowed
    if int(excess.max()) > 0:
        worst = int(d.flatten()[int(excess.flatten().argmax())])
        raise AssertionError(f"{what}: an element is {worst} quantization steps from the reference")
    off = d > 0
    if same_scale is not None:
        mask = same_scale.expand_as(off)
        off = off[mask]
        if off.numel() == 0:
            return
    frac = float(off.float().mean())
    assert frac <= max_fraction, f"{what}: {frac:.3%} of elements differ by one step (allowed {max_fraction:.2%})"


def _scale_per_element(scales: torch.Tensor, q_shape: torch.Size) -> torch.Tensor:
    """[..., 1] or [..., G] scales, broadcastable to (or expanded to) the q shape."""
    groups = scales.shape[-1] if scales.dim() else 1
    if groups == 1:
        rows = 1
        for n in q_shape[:-1]:
            rows *= n
        return scales.reshape(*q_shape[:-1], 1) if scales.numel() == rows else scales.reshape([1] * len(q_shape))
    return scales.repeat_interleave(q_shape[-1] // groups, dim=-1)


def _grid_step(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s grid at the (float) values ``q``."""
    if dtype == torch.int8:
        return torch.ones_like(q)
    fi = torch.finfo(dtype)
    return torch.exp2(torch.floor(torch.log2(q.abs().clamp(min=fi.smallest_normal)))) * fi.eps


def _equal_or_both_nan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a == b) | (torch.isnan(a) & torch.isnan(b))


def scale_mask(actual_scales: torch.Tensor, expected_scales: torch.Tensor, q_shape: torch.Size) -> torch.Tensor:
    """Per quantized element: does its scale equal the reference's bit for bit?"""
    return _equal_or_both_nan(*(_scale_per_element(t, q_shape) for t in (actual_scales, expected_scales)))


def _is_pow2(t: torch.Tensor) -> torch.Tensor:
    """Positive finite powers of two: the values UE8M0 rounding leaves alone."""
    return torch.isfinite(t) & (t > 0) & (ue8m0_ceil(t) == t)


def _accept_ue8m0_flips(
    a: torch.Tensor, e: torch.Tensor, qa: torch.Tensor, qe: torch.Tensor, input_dtype: torch.dtype
) -> torch.Tensor:
    """UE8M0 scales (powers of two, rounded up) of two implementations whose exact scales agree
    within tolerance can still sit a factor of two apart, where the exact scale is within that
    tolerance of a power of two. Such a group shows it: on the side with the smaller scale its
    largest |q| is within the tolerance of the format's maximum. Returns ``a`` with those groups
    set to the reference's value, so the ordinary comparison checks the rest."""
    if a.shape != e.shape or a.dim() == 0 or not bool((_is_pow2(e) | (e == 0)).all()):
        return a
    ratio = a.float() / e.float()
    flip = ((ratio == 2.0) | (ratio == 0.5)) & _is_pow2(a) & _is_pow2(e)
    if not bool(flip.any()):
        return a
    groups = a.shape[-1]
    qmax = 127.0 if qa.dtype == torch.int8 else torch.finfo(qa.dtype).max

    def group_max(q: torch.Tensor) -> torch.Tensor:
        return q.float().abs().reshape(*q.shape[:-1], groups, q.shape[-1] // groups).amax(-1)

    finer_max = torch.where(a.float() < e.float(), group_max(qa), group_max(qe))
    legit = flip & (finer_max >= qmax * (1 - SCALE_RTOL[input_dtype]))
    return torch.where(legit, e, a)


def assert_scales_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    input_dtype: torch.dtype,
    what: str = "scales",
    scale_dtype: torch.dtype = torch.float32,
) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert actual.stride() == expected.stride() or actual.numel() <= 1, (
        f"{what}: strides {actual.stride()} vs {expected.stride()}"
    )
    rtol, atol = SCALE_RTOL[input_dtype], 0.0
    if scale_dtype != torch.float32:  # one rounding of the scale dtype, its subnormals included
        fi = torch.finfo(scale_dtype)
        rtol, atol = rtol + fi.eps, fi.smallest_normal * fi.eps
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


#: What each output of each op is: "act" (the normalized output, in the input dtype), "res"
#: (the new residual, in the input dtype), "q" (quantized), "scales" (fp32 scales).
OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "rms_norm": ("act",),
    "fused_add_rms_norm": ("act", "res"),
    "static_scaled_fp8_quant": ("q",),
    "dynamic_per_token_scaled_fp8_quant": ("q", "scales"),
    "per_token_group_fp8_quant": ("q", "scales"),
    "static_scaled_int8_quant": ("q",),
    "dynamic_scaled_int8_quant": ("q", "scales"),
    "rms_norm_static_fp8_quant": ("q",),
    "fused_add_rms_norm_static_fp8_quant": ("q", "res"),
    "rms_norm_dynamic_per_token_quant": ("q", "scales"),
    "fused_add_rms_norm_dynamic_per_token_quant": ("q", "scales", "res"),
    "rms_norm_per_token_group_quant": ("q", "scales"),
    "fused_add_rms_norm_per_token_group_quant": ("q", "scales", "res"),
    "rms_norm_static_int8_quant": ("q",),
    "fused_add_rms_norm_static_int8_quant": ("q", "res"),
    "per_token_group_fp8_quant_packed": ("q", "packed_scales"),
    "rms_norm_per_token_group_quant_packed": ("q", "packed_scales"),
    "fused_add_rms_norm_per_token_group_quant_packed": ("q", "packed_scales", "res"),
    "dynamic_quant": ("q", "scales"),
    "rms_norm_dynamic_quant": ("q", "scales"),
    "fused_add_rms_norm_dynamic_quant": ("q", "scales", "res"),
    "rms_norm_dynamic_quant_with_norm_out": ("q", "scales", "act"),
    "fused_add_rms_norm_dynamic_quant_with_norm_out": ("q", "scales", "res", "act"),
}


def to_cpu(t):
    """A CPU copy of an op's output with its strides kept (a tensor, or a tuple of them).

    ``Tensor.cpu()`` keeps the strides of a dense tensor only: the narrowed transposes of the
    padded scale layouts (the packed and TMA-aligned ones) come back with other strides, which
    the layout checks would then reject."""
    if isinstance(t, (tuple, list)):
        return tuple(to_cpu(x) for x in t)
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
    return out.copy_(t)


def unpack_ue8m0_scales(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """The fp32 scales ``[rows, groups]`` that DeepGEMM-packed UE8M0 scales hold (their bytes by
    ``deepgemm_unpack_ue8m0_scales``, valued by ``e8m0_to_f32``; 0xFF is NaN)."""
    from fusion_kernels.microscaling import deepgemm_unpack_ue8m0_scales, e8m0_to_f32

    return e8m0_to_f32(deepgemm_unpack_ue8m0_scales(packed, groups))


#: Tolerance for the normalized output: two roundings of the input dtype (relative). The row's
#: reduction order differs from torch's, so rsqrt can differ in the last fp32 bit; the first
#: rounding point can then flip one unit, which the weight multiplies before the second rounding.
ACT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_outputs_match(
    op_name: str,
    actual,
    expected,
    input_dtype: torch.dtype,
    max_fraction: float = 0.01,
    scale_dtype: torch.dtype = torch.float32,
    group_size: int | None = None,
) -> None:
    """Compare an op's outputs with the reference's, each by its kind (see OUTPUT_KINDS).

    ``group_size``: the packed ops' group size, required for them (their packed scales are
    compared as the fp32 scales they hold, after both layouts are checked; the packed columns do
    not say how many groups they hold).

    ``scale_dtype``: what a rule op rounded its scales to; a scale within tolerance of the
    reference's before that rounding may round to the neighbouring value of that dtype, so the
    scale tolerance grows by one of its roundings."""
    kinds = OUTPUT_KINDS[op_name]
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    assert len(actual) == len(expected) == len(kinds), f"{op_name}: {len(actual)} outputs, expected {len(kinds)}"
    scales = None
    if "packed_scales" in kinds:  # compared as the fp32 scales they pack (both layouts checked first)
        si = kinds.index("packed_scales")
        if group_size is None:
            raise ValueError(f"{op_name}: comparing packed scales needs the call's group_size")
        groups = expected[0].shape[-1] // group_size
        for t, name in ((actual[si], "actual"), (expected[si], "expected")):
            assert t.dtype == torch.int32 and t.stride() == expected[si].stride() or t.shape[0] == 0, (
                f"{op_name}: {name} packed scales {t.dtype} strides {t.stride()}"
            )
        assert actual[si].shape == expected[si].shape, f"{op_name}: packed scales {tuple(actual[si].shape)}"
        actual, expected = list(actual), list(expected)
        # (unpacked over the flattened rows, shaped like the unpacked ops' [..., groups] scales)
        actual[si], expected[si] = (
            unpack_ue8m0_scales(t, groups).reshape(*expected[0].shape[:-1], groups) for t in (actual[si], expected[si])
        )
        kinds = tuple("scales" if k == "packed_scales" else k for k in kinds)
    if "scales" in kinds:
        si = kinds.index("scales")
        scales = tuple(_scale_per_element(t, expected[0].shape) for t in (actual[si], expected[si]))
    for i, (a, e, kind) in enumerate(zip(actual, expected, kinds)):
        what = f"{op_name} output {i} ({kind})"
        assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} vs {e.dtype}"
        assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
        if kind == "q":
            assert a.is_contiguous(), f"{what} is not contiguous"
            # A normalizing op quantizes its own normalized row, which may differ from the
            # reference's by ACT_TOL (two roundings of the input dtype).
            value_rtol = ACT_TOL[input_dtype] if "rms_norm" in op_name else 0.0
            assert_quant_close(a, e, max_fraction, what=what, scales=scales, value_rtol=value_rtol)
        elif kind == "scales":
            a = _accept_ue8m0_flips(a, e, actual[0], expected[0], input_dtype)
            assert_scales_close(a, e, input_dtype, what=what, scale_dtype=scale_dtype)
        elif kind == "res":
            # The new residual is one rounding of x + residual everywhere: exact.
            assert a.is_contiguous(), f"{what} is not contiguous"
            torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True, msg=lambda m, what=what: f"{what}: {m}")
        else:
            assert a.is_contiguous(), f"{what} is not contiguous"
            tol = ACT_TOL[input_dtype]
            torch.testing.assert_close(
                a, e, rtol=tol, atol=tol, equal_nan=True, msg=lambda m, what=what: f"{what}: {m}"
            )


# --- inputs -------------------------------------------------------------------------------------


def scale_rule(quant_dtype: torch.dtype, **overrides) -> dict:
    """A rule op's scale rule as keyword arguments (``divisor`` ... ``scale_ue8m0``, the reference's
    ``dynamic_scale``): ``absmax / qmax`` with nothing else, unless overridden."""
    rule = dict(divisor=QMAX[quant_dtype], absmax_floor=0.0, scale_floor=0.0, zero_scale=0.0,
                scale_dtype=torch.float32, scale_ue8m0=False)  # fmt: skip
    rule.update(overrides)
    return rule


def make_args(
    op_name: str,
    tokens: tuple[int, ...],
    hidden: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    *,
    weight_dtype: torch.dtype | None = None,
    quant_dtype: torch.dtype = torch.float8_e4m3fn,
    group_size: int | None = None,
    column_major_scales: bool = False,
    tma_aligned_scales: bool = False,
    scale_ue8m0: bool = False,
    divisor: float | None = None,
    absmax_floor: float = 1e-12,
    scale_floor: float = 0.0,
    zero_scale: float = 0.0,
    scale_dtype: torch.dtype = torch.float32,
    round_quotient: bool = False,
    with_scale_ub: bool = False,
    row_padding: int = 0,
    value_scale: float = 1.0,
    epsilon: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple:
    """Arguments for ``torch.ops.fusion_kernels.<op_name>`` in schema order.

    ``row_padding`` > 0 makes input and residual row-strided views (each row followed by
    ``row_padding`` unused elements). The static scale is chosen so that most values land inside
    the format's range and a few saturate. ``group_size`` defaults to 128 for the group ops and
    to 0 (one scale per row) for the rule ops, whose scale rule defaults to ``absmax / qmax``
    with the absmax floored at 1e-12 (``divisor`` None: the quant dtype's maximum).
    """
    schema = getattr(torch.ops.fusion_kernels, op_name).default._schema
    device = torch.device(device)
    g = generator or torch.Generator(device=device).manual_seed(0)

    def act() -> torch.Tensor:
        full = torch.randn(*tokens, hidden + row_padding, generator=g, device=device) * value_scale
        return full.to(dtype)[..., :hidden]

    fp8 = quant_dtype if quant_dtype != torch.int8 else torch.float8_e4m3fn
    qdtype = quant_dtype
    values = {
        "input": act,
        "residual": act,
        "weight": lambda: (1.0 + 0.5 * torch.randn(hidden, generator=g, device=device)).to(weight_dtype or dtype),
        "epsilon": lambda: epsilon,
        "scale": lambda: torch.tensor(
            value_scale
            * 4.0
            / (127.0 if "int8" in op_name else {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0}[fp8]),
            dtype=torch.float32,
            device=device,
        ),
        "scale_ub": lambda: (
            torch.tensor(value_scale * 2.5, dtype=torch.float32, device=device) if with_scale_ub else None
        ),
        "fp8_dtype": lambda: fp8,
        "quant_dtype": lambda: qdtype,
        "group_size": lambda: group_size if group_size is not None else (128 if "group" in op_name else 0),
        "column_major_scales": lambda: column_major_scales,
        "tma_aligned_scales": lambda: tma_aligned_scales,
        "scale_ue8m0": lambda: scale_ue8m0,
        "divisor": lambda: divisor if divisor is not None else QMAX[qdtype],
        "absmax_floor": lambda: absmax_floor,
        "scale_floor": lambda: scale_floor,
        "zero_scale": lambda: zero_scale,
        "scale_dtype": lambda: scale_dtype,
        "round_quotient": lambda: round_quotient,
    }
    return tuple(values[a.name]() for a in schema.arguments)


def op_counts(graph_module) -> dict[str, int]:
    """How many nodes of each fusion_kernels op a (rewritten) graph holds."""
    out: dict[str, int] = {}
    for n in graph_module.graph.nodes:
        schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
        if schema is not None and schema.name.startswith("fusion_kernels::"):
            name = schema.name.split("::")[1]
            out[name] = out.get(name, 0) + 1
    return out


def reference_of(op_name: str):
    from fusion_kernels import reference

    return getattr(reference, op_name)
