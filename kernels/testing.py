# SPDX-License-Identifier: Apache-2.0
"""Comparison helpers shared by the tests, the GPU checks and the benchmarks.

Quantized outputs are compared in quantization steps: two FP8 codes of the same sign are one
step apart when their magnitudes are adjacent codes (e4m3 encodings are monotonic in magnitude),
two INT8 values when they differ by one.
"""

from __future__ import annotations

import torch

from fusion_kernels.reference import FP8_DTYPES

#: Relative tolerance for fp32 scales computed from a row that may differ from the reference
#: by one rounding of the input dtype (the kernels reduce in a different order).
SCALE_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


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


def assert_quant_close(actual: torch.Tensor, expected: torch.Tensor, max_fraction: float, what: str = "q") -> None:
    """Every element within one step of ``expected``, and at most ``max_fraction`` of them off."""
    d = quant_steps(actual, expected)
    if d.numel() == 0:
        return
    worst = int(d.max())
    frac = float((d > 0).float().mean())
    assert worst <= 1, f"{what}: an element is {worst} quantization steps from the reference"
    assert frac <= max_fraction, f"{what}: {frac:.3%} of elements differ by one step (allowed {max_fraction:.2%})"


def assert_scales_close(actual: torch.Tensor, expected: torch.Tensor, input_dtype: torch.dtype, what: str = "scales") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert actual.stride() == expected.stride() or actual.numel() <= 1, (
        f"{what}: strides {actual.stride()} vs {expected.stride()}"
    )
    torch.testing.assert_close(actual, expected, rtol=SCALE_RTOL[input_dtype], atol=0, equal_nan=True, msg=what)


#: What each output of each op is: "act" (a tensor in the input dtype), "q" (quantized),
#: "scales" (fp32 scales).
OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "rms_norm": ("act",),
    "fused_add_rms_norm": ("act", "act"),
    "static_scaled_fp8_quant": ("q",),
    "dynamic_per_token_scaled_fp8_quant": ("q", "scales"),
    "per_token_group_fp8_quant": ("q", "scales"),
    "static_scaled_int8_quant": ("q",),
    "dynamic_scaled_int8_quant": ("q", "scales"),
    "rms_norm_static_fp8_quant": ("q",),
    "fused_add_rms_norm_static_fp8_quant": ("q", "act"),
    "rms_norm_dynamic_per_token_quant": ("q", "scales"),
    "fused_add_rms_norm_dynamic_per_token_quant": ("q", "scales", "act"),
    "rms_norm_per_token_group_quant": ("q", "scales"),
    "fused_add_rms_norm_per_token_group_quant": ("q", "scales", "act"),
    "rms_norm_static_int8_quant": ("q",),
    "fused_add_rms_norm_static_int8_quant": ("q", "act"),
}

#: Tolerance for outputs in the input dtype: one rounding of that dtype.
ACT_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_outputs_match(op_name: str, actual, expected, input_dtype: torch.dtype, max_fraction: float = 0.01) -> None:
    """Compare an op's outputs with the reference's, each by its kind (see OUTPUT_KINDS)."""
    kinds = OUTPUT_KINDS[op_name]
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    assert len(actual) == len(expected) == len(kinds), f"{op_name}: {len(actual)} outputs, expected {len(kinds)}"
    for i, (a, e, kind) in enumerate(zip(actual, expected, kinds)):
        what = f"{op_name} output {i} ({kind})"
        assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} vs {e.dtype}"
        assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
        if kind == "q":
            assert a.is_contiguous(), f"{what} is not contiguous"
            assert_quant_close(a, e, max_fraction, what=what)
        elif kind == "scales":
            assert_scales_close(a, e, input_dtype, what=what)
        else:
            assert a.is_contiguous(), f"{what} is not contiguous"
            tol = ACT_TOL[input_dtype]
            torch.testing.assert_close(a, e, rtol=tol, atol=tol, equal_nan=True, msg=what)


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
            value_scale * 4.0 / (127.0 if "int8" in op_name else {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0}[fp8]),
            dtype=torch.float32,
            device=device,
        ),
        "scale_ub": lambda: (torch.tensor(value_scale * 2.5, dtype=torch.float32, device=device) if with_scale_ub else None),
        "fp8_dtype": lambda: fp8,
        "quant_dtype": lambda: qdtype,
        "group_size": lambda: group_size,
        "column_major_scales": lambda: column_major_scales,
        "scale_ue8m0": lambda: scale_ue8m0,
    }
    return tuple(values[a.name]() for a in schema.arguments)


def reference_of(op_name: str):
    from fusion_kernels import reference

    return getattr(reference, op_name)
