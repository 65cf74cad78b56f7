# SPDX-License-Identifier: Apache-2.0
"""Comparison helpers shared by the tests, the GPU checks and the benchmarks.

Quantized outputs are compared in quantization steps: two FP8 codes of the same sign are one
step apart when their magnitudes are adjacent codes (e4m3 encodings are monotonic in magnitude),
two INT8 values when they differ by one.
"""

from __future__ import annotations

import torch

from fusion_kernels.reference import FP8_DTYPES

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
) -> None:
    """Every element within one step of ``expected``; at most ``max_fraction`` of them off.

    ``same_scale`` (bool, broadcastable to the output) restricts the fraction bound to elements
    whose dynamic scale equals the reference's exactly: where the scale itself differs (within
    its own tolerance), every element may legitimately sit one step away.
    """
    d = quant_steps(actual, expected)
    if d.numel() == 0:
        return
    worst = int(d.max())
    assert worst <= 1, f"{what}: an element is {worst} quantization steps from the reference"
    off = d > 0
    if same_scale is not None:
        mask = same_scale.expand_as(off)
        off = off[mask]
        if off.numel() == 0:
            return
    frac = float(off.float().mean())
    assert frac <= max_fraction, f"{what}: {frac:.3%} of elements differ by one step (allowed {max_fraction:.2%})"


def scale_mask(actual_scales: torch.Tensor, expected_scales: torch.Tensor, q_shape: torch.Size) -> torch.Tensor:
    """Per quantized element: does its scale equal the reference's bit for bit?"""
    eq = (actual_scales == expected_scales) | (torch.isnan(actual_scales) & torch.isnan(expected_scales))
    groups = eq.shape[-1]
    if groups == 1:
        return eq
    return eq.repeat_interleave(q_shape[-1] // groups, dim=-1)


def assert_scales_close(
    actual: torch.Tensor, expected: torch.Tensor, input_dtype: torch.dtype, what: str = "scales"
) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert actual.stride() == expected.stride() or actual.numel() <= 1, (
        f"{what}: strides {actual.stride()} vs {expected.stride()}"
    )
    torch.testing.assert_close(
        actual, expected, rtol=SCALE_RTOL[input_dtype], atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


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
}

#: Tolerance for the normalized output: two roundings of the input dtype (relative). The row's
#: reduction order differs from torch's, so rsqrt can differ in the last fp32 bit; the first
#: rounding point can then flip one unit, which the weight multiplies before the second rounding.
ACT_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_outputs_match(op_name: str, actual, expected, input_dtype: torch.dtype, max_fraction: float = 0.01) -> None:
    """Compare an op's outputs with the reference's, each by its kind (see OUTPUT_KINDS)."""
    kinds = OUTPUT_KINDS[op_name]
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    assert len(actual) == len(expected) == len(kinds), f"{op_name}: {len(actual)} outputs, expected {len(kinds)}"
    same_scale = None
    if "scales" in kinds:
        si = kinds.index("scales")
        same_scale = scale_mask(actual[si], expected[si], expected[0].shape)
    for i, (a, e, kind) in enumerate(zip(actual, expected, kinds)):
        what = f"{op_name} output {i} ({kind})"
        assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} vs {e.dtype}"
        assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
        if kind == "q":
            assert a.is_contiguous(), f"{what} is not contiguous"
            assert_quant_close(a, e, max_fraction, what=what, same_scale=same_scale)
        elif kind == "scales":
            assert_scales_close(a, e, input_dtype, what=what)
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


def make_args(
    op_name: str,
    tokens: tuple[int, ...],
    hidden: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    *,
    weight_dtype: torch.dtype | None = None,
    quant_dtype: torch.dtype = torch.float8_e4m3fn,
    group_size: int = 128,
    column_major_scales: bool = False,
    scale_ue8m0: bool = False,
    with_scale_ub: bool = False,
    row_padding: int = 0,
    value_scale: float = 1.0,
    epsilon: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple:
    """Arguments for ``torch.ops.fusion_kernels.<op_name>`` in schema order.

    ``row_padding`` > 0 makes input and residual row-strided views (each row followed by
    ``row_padding`` unused elements). The static scale is chosen so that most values land inside
    the format's range and a few saturate.
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
        "group_size": lambda: group_size,
        "column_major_scales": lambda: column_major_scales,
        "scale_ue8m0": lambda: scale_ue8m0,
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
