# SPDX-License-Identifier: Apache-2.0
"""Pure-torch references of every op: the spec the kernels are tested against.

Each function takes the op's arguments and returns what the op returns (same dtypes, shapes and
strides). Rounding points, the same in every kernel:

* ``residual_out = to_input_dtype(input + residual)`` (computed in fp32); the norm reads it;
* ``y = to_input_dtype(to_input_dtype(x * rsqrt(mean(x**2) + eps)) * weight)``
  (fp32 arithmetic, the Hugging Face order);
* the quantizers read ``y`` and compute ``y * (1 / scale)`` in fp32 (the scale's correctly
  rounded reciprocal, as FP8 kernels apply it), clamp to the format's range and cast (round to
  nearest even). Code that divides by the scale instead differs only where ``y / scale`` lies
  within one fp32 rounding of a quantization boundary.

Scales:

* static: the given fp32 scale;
* per-token: ``max(min(amax, scale_ub) / qmax, 1 / (qmax * 512))`` - the floor keeps an all-zero
  row's scale finite and positive (vLLM's per-token convention);
* per-token-group: ``max(amax, 1e-10) / qmax``, optionally rounded up to a power of two
  (``scale_ue8m0``) - the per_token_group_quant convention of DeepGEMM-style FP8 GEMMs;
* the rule ops (``dynamic_quant``, ``rms_norm_dynamic_quant``, ``fused_add_rms_norm_dynamic_quant``):
  the scale rule given by parameters, see :func:`dynamic_scale`, per row, per group or (group
  size -1) one scale for the whole tensor from the absmax of all of it. Both rules above are special
  cases of it (:func:`per_token_rule`, :func:`per_token_group_rule`).

Special values: NaN propagates (a NaN in a row makes that row's dynamic scale NaN); +-Inf
saturates to +-qmax when quantized; a row holding Inf normalizes to NaN at the Inf and 0
elsewhere (Inf * rsqrt(Inf) = Inf * 0). INT8 has no NaN: NaN quantizes to 0.
"""

from __future__ import annotations

import math

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
QMAX = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0, torch.int8: 127.0}
PER_TOKEN_MIN_SCALE_FACTOR = 512.0
GROUP_ABSMAX_FLOOR = 1e-10
#: Group sizes of the group quant (the rule ops also take 0: one scale per row).
GROUP_SIZES = (32, 64, 128)
#: The dtypes a rule op may round its scales to (float32: no rounding).
SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

__all__ = [
    "rms_norm",
    "fused_add_rms_norm",
    "static_scaled_fp8_quant",
    "dynamic_per_token_scaled_fp8_quant",
    "per_token_group_fp8_quant",
    "static_scaled_int8_quant",
    "dynamic_scaled_int8_quant",
    "rms_norm_static_fp8_quant",
    "fused_add_rms_norm_static_fp8_quant",
    "rms_norm_dynamic_per_token_quant",
    "fused_add_rms_norm_dynamic_per_token_quant",
    "rms_norm_per_token_group_quant",
    "fused_add_rms_norm_per_token_group_quant",
    "rms_norm_static_int8_quant",
    "fused_add_rms_norm_static_int8_quant",
    "per_token_group_fp8_quant_packed",
    "rms_norm_per_token_group_quant_packed",
    "fused_add_rms_norm_per_token_group_quant_packed",
    "dynamic_quant",
    "rms_norm_dynamic_quant",
    "fused_add_rms_norm_dynamic_quant",
    "rms_norm_dynamic_quant_with_norm_out",
    "fused_add_rms_norm_dynamic_quant_with_norm_out",
    "dynamic_scale",
    "check_scale_rule",
    "per_token_rule",
    "per_token_group_rule",
    "per_token_min_scale",
    "ue8m0_ceil",
]


# --- building blocks -------------------------------------------------------------------------


def rms_norm(input: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
    x = input.float()
    inv = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    normed = (x * inv).to(input.dtype)
    return (normed.float() * weight.float()).to(input.dtype).contiguous()


def fused_add_rms_norm(
    input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual_out = (input.float() + residual.float()).to(input.dtype).contiguous()
    return rms_norm(residual_out, weight, epsilon), residual_out


def _clamp_cast(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.int8:
        v = v.clamp(-128.0, 127.0).round()
        return torch.where(torch.isnan(v), torch.zeros_like(v), v).to(torch.int8).contiguous()
    qmax = QMAX[dtype]
    return v.clamp(-qmax, qmax).to(dtype).contiguous()


def _f32(v: float) -> float:
    """``v`` rounded to float32 (the kernels receive every float parameter as one)."""
    return float(torch.tensor(v, dtype=torch.float64).to(torch.float32))


def _check_qdtype(dtype: torch.dtype, allow_int8: bool) -> None:
    ok = dtype in FP8_DTYPES or (allow_int8 and dtype == torch.int8)
    if not ok:
        raise ValueError(
            f"quant dtype must be float8_e4m3fn/float8_e4m3fnuz{'/int8' if allow_int8 else ''}, got {dtype}"
        )


def per_token_min_scale(dtype: torch.dtype) -> float:
    """The floor of per-token scales, as the kernels compute it in fp32."""
    return float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(QMAX[dtype] * PER_TOKEN_MIN_SCALE_FACTOR))


def ue8m0_ceil(s: torch.Tensor) -> torch.Tensor:
    """Round positive finite fp32 scales up to a power of two, exactly (frexp, not log2)."""
    mantissa, exponent = torch.frexp(s)
    up = torch.where(mantissa == 0.5, s, torch.ldexp(torch.ones_like(s), exponent))
    return torch.where(torch.isfinite(s) & (s > 0), up, s)


def check_scale_rule(
    divisor: float, absmax_floor: float, scale_floor: float, zero_scale: float, scale_dtype: torch.dtype
) -> None:
    """Raise ValueError naming the first bad parameter of a scale rule (see :func:`dynamic_scale`).

    Every float is judged as the float32 the kernels receive."""
    d = _f32(divisor)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"divisor must be finite and > 0 (as float32), got {divisor}")
    for name, v in (("absmax_floor", absmax_floor), ("scale_floor", scale_floor), ("zero_scale", zero_scale)):
        f = _f32(v)
        if not (math.isfinite(f) and f >= 0):
            raise ValueError(f"{name} must be finite and >= 0 (as float32; 0 turns it off), got {v}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be float32, bfloat16 or float16, got {scale_dtype}")


def dynamic_scale(
    amax: torch.Tensor,
    divisor: float,
    absmax_floor: float,
    scale_floor: float,
    zero_scale: float,
    scale_dtype: torch.dtype,
    scale_ue8m0: bool,
) -> torch.Tensor:
    """The dynamic scale of each absmax (fp32 tensor, exact absmax of the values quantized), in
    this order; every float parameter is first rounded to float32, as the kernels receive it:

    1. ``absmax_floor > 0``: ``a = max(a, absmax_floor)`` (NaN stays NaN);
    2. ``s = a / divisor``, the correctly rounded fp32 quotient;
    3. ``s = float(s.to(scale_dtype))``, round to nearest even (float32: nothing; float16 may
       overflow to Inf or underflow to 0, as plain torch code rounding there does);
    4. ``scale_ue8m0``: ``s = ue8m0_ceil(s)``, rounded up to a power of two, exactly;
    5. ``scale_floor > 0``: ``s = max(s, scale_floor)`` (NaN stays NaN);
    6. ``zero_scale > 0``: a scale equal to 0 becomes ``zero_scale``.

    The quantizer then computes ``y * (1 / s)`` with the correctly rounded reciprocal. Without a
    floor or a zero replacement an all-zero row or group has ``s = 0``: ``1 / s = Inf`` and
    ``0 * Inf = NaN``, so it quantizes to NaN (FP8) or 0 (INT8) with a scale of 0, which is what
    the plain-torch spellings without a floor compute.
    """
    a = amax.float()
    if _f32(absmax_floor) > 0:
        a = a.clamp(min=_f32(absmax_floor))
    # A correctly rounded quotient on every device: on CUDA, torch divides a tensor by a Python
    # number by multiplying with its reciprocal, which rounds differently.
    s = a / torch.full_like(a, _f32(divisor))
    if scale_dtype != torch.float32:
        s = s.to(scale_dtype).float()
    if scale_ue8m0:
        s = ue8m0_ceil(s)
    if _f32(scale_floor) > 0:
        s = s.clamp(min=_f32(scale_floor))
    if _f32(zero_scale) > 0:
        s = torch.where(s == 0, torch.full_like(s, _f32(zero_scale)), s)
    return s


def per_token_rule(quant_dtype: torch.dtype) -> dict:
    """The scale rule of the per-token ops (``dynamic_per_token_scaled_fp8_quant``,
    ``dynamic_scaled_int8_quant``, ``[fused_add_]rms_norm_dynamic_per_token_quant`` without
    ``scale_ub``), as keyword arguments of the rule ops."""
    return {
        "divisor": QMAX[quant_dtype],
        "absmax_floor": 0.0,
        "scale_floor": per_token_min_scale(quant_dtype),
        "zero_scale": 0.0,
        "scale_dtype": torch.float32,
        "scale_ue8m0": False,
    }


def per_token_group_rule(quant_dtype: torch.dtype, scale_ue8m0: bool) -> dict:
    """The scale rule of the per-token-group ops, as keyword arguments of the rule ops."""
    return {
        "divisor": QMAX[quant_dtype],
        "absmax_floor": GROUP_ABSMAX_FLOOR,
        "scale_floor": 0.0,
        "zero_scale": 0.0,
        "scale_dtype": torch.float32,
        "scale_ue8m0": scale_ue8m0,
    }


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.float() * (1.0 / scale.float())


def static_scaled_fp8_quant(input: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    _check_qdtype(fp8_dtype, allow_int8=False)
    return _clamp_cast(_scaled(input, scale.reshape(())), fp8_dtype)


def static_scaled_int8_quant(input: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _clamp_cast(_scaled(input, scale.reshape(())), torch.int8)


def _per_token(input: torch.Tensor, dtype: torch.dtype, scale_ub: torch.Tensor | None):
    x = input.float()
    amax = x.abs().amax(dim=-1, keepdim=True)
    if scale_ub is not None:
        amax = torch.clamp(amax, max=scale_ub.float().reshape(()))
    scales = dynamic_scale(amax, **per_token_rule(dtype))
    return _clamp_cast(_scaled(x, scales), dtype), scales.contiguous()


def dynamic_per_token_scaled_fp8_quant(
    input: torch.Tensor, scale_ub: torch.Tensor | None, fp8_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_qdtype(fp8_dtype, allow_int8=False)
    return _per_token(input, fp8_dtype, scale_ub)


def dynamic_scaled_int8_quant(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _per_token(input, torch.int8, None)


def per_token_group_fp8_quant(
    input: torch.Tensor,
    group_size: int,
    column_major_scales: bool,
    scale_ue8m0: bool,
    fp8_dtype: torch.dtype,
    tma_aligned_scales: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group FP8. Scales ``[..., H / G]`` row-major; column-major (2-D input): the
    transpose of a contiguous ``[H / G, T]``; with ``tma_aligned_scales`` too, of a contiguous
    ``[H / G, 4 * ceil(T / 4)]`` narrowed to the ``T`` rows (strides ``(1, 4 * ceil(T / 4))``,
    DeepGEMM's sm_90 layout; the padding rows of the storage hold 0)."""
    _check_qdtype(fp8_dtype, allow_int8=False)
    hidden = input.shape[-1]
    if hidden % group_size != 0:
        raise ValueError(f"hidden size {hidden} is not divisible by group_size {group_size}")
    q, scales = _rule_quant(input, fp8_dtype, group_size, **per_token_group_rule(fp8_dtype, scale_ue8m0))
    if tma_aligned_scales and not column_major_scales:
        raise ValueError("tma_aligned_scales needs column_major_scales")
    if column_major_scales:
        if input.dim() != 2:
            raise ValueError("column_major_scales needs a 2-D input")
        # The transpose of a contiguous [groups, tokens (padded to 4 with TMA alignment)] tensor.
        rows = scales.shape[0]
        padded = (rows + 3) // 4 * 4 if tma_aligned_scales else rows
        col = torch.zeros((scales.shape[1], padded), dtype=scales.dtype, device=scales.device).t()[:rows]
        scales = col.copy_(scales)
    return q, scales


def per_token_group_fp8_quant_packed(
    input: torch.Tensor, group_size: int, fp8_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_token_group_fp8_quant` with UE8M0 scales, the scales packed for DeepGEMM
    (``deepgemm_pack_ue8m0_scales``, microscaling.py) over the rows of the flattened input
    ``[numel / H, H]``. Each scale's byte is its fp32 exponent field (the scales are powers of
    two; a NaN or infinite scale gives 0xFF, the UE8M0 NaN)."""
    q, scales = per_token_group_fp8_quant(input, group_size, False, True, fp8_dtype)
    byte = ((scales.reshape(-1, scales.shape[-1]).view(torch.int32) >> 23) & 0xFF).to(torch.uint8)
    return q, deepgemm_pack_ue8m0_scales(byte)  # noqa: F405 (from .microscaling, below)


def _rule_quant(
    input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0,
    round_quotient=False,
):
    if group_size < 0:  # one scale for the tensor: the absmax of all of it (0 for no elements)
        x = input.float()
        amax = x.abs().amax() if x.numel() else x.new_zeros(())
        scale = dynamic_scale(amax, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0)
        return _clamp_cast(_scaled(x, scale), quant_dtype), scale.reshape((1,) * input.dim())
    hidden = input.shape[-1]
    groups, size = (1, hidden) if group_size == 0 else (hidden // group_size, group_size)
    x = input.float().reshape(*input.shape[:-1], groups, size)
    amax = x.abs().amax(dim=-1, keepdim=True)
    scales = dynamic_scale(amax, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0)
    v = _scaled(x, scales)
    if round_quotient:  # rounded to the input's dtype first, as `y / scale` in a 16-bit model
        v = v.to(input.dtype).float()
    q = _clamp_cast(v, quant_dtype).reshape(input.shape)
    return q, scales.squeeze(-1).contiguous()


def dynamic_quant(
    input: torch.Tensor,
    quant_dtype: torch.dtype,
    group_size: int,
    divisor: float,
    absmax_floor: float,
    scale_floor: float,
    zero_scale: float,
    scale_dtype: torch.dtype,
    scale_ue8m0: bool,
    round_quotient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic quantization with the scale rule given by parameters (:func:`dynamic_scale`):
    one scale for the whole tensor (``group_size`` -1, scales ``[1, ..., 1]``: the absmax of
    every element, 0 for an empty tensor), one scale per row (``group_size`` 0, scales
    ``[..., 1]``) or per ``group_size`` elements (32, 64 or 128; scales
    ``[..., H / group_size]``, row-major), FP8 or INT8.

    ``round_quotient``: the quotient ``y * (1 / s)`` is rounded to the input's dtype (to nearest
    even) before the cast, as plain torch computes ``y / scale`` in a 16-bit model
    (compressed-tensors' quantizer: its INT8 values then differ from the fp32 quotient's on about
    a quarter of the elements above 64). Per row or per group only."""
    if quant_dtype not in QMAX:
        raise ValueError(f"quant_dtype must be float8_e4m3fn or float8_e4m3fnuz or int8, got {quant_dtype}")
    if group_size not in (-1, 0) and group_size not in GROUP_SIZES:
        raise ValueError(
            f"group_size must be -1 (one scale for the tensor), 0 (one scale per row), 32, 64 or 128, got {group_size}"
        )
    if group_size > 0 and input.shape[-1] % group_size != 0:
        raise ValueError(f"hidden size {input.shape[-1]} is not divisible by group_size {group_size}")
    check_scale_rule(divisor, absmax_floor, scale_floor, zero_scale, scale_dtype)
    if round_quotient and group_size < 0:
        raise ValueError(f"round_quotient needs one scale per row or per group (group_size >= 0), got {group_size}")
    return _rule_quant(
        input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0,
        round_quotient,
    )


# --- fused ops: the composition of the building blocks ----------------------------------------


def rms_norm_static_fp8_quant(input, weight, scale, epsilon, fp8_dtype):
    return static_scaled_fp8_quant(rms_norm(input, weight, epsilon), scale, fp8_dtype)


def fused_add_rms_norm_static_fp8_quant(input, residual, weight, scale, epsilon, fp8_dtype):
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    return static_scaled_fp8_quant(y, scale, fp8_dtype), residual_out


def rms_norm_dynamic_per_token_quant(input, weight, epsilon, quant_dtype, scale_ub):
    _check_qdtype(quant_dtype, allow_int8=True)
    return _per_token(rms_norm(input, weight, epsilon), quant_dtype, scale_ub)


def fused_add_rms_norm_dynamic_per_token_quant(input, residual, weight, epsilon, quant_dtype, scale_ub):
    _check_qdtype(quant_dtype, allow_int8=True)
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = _per_token(y, quant_dtype, scale_ub)
    return q, scales, residual_out


def rms_norm_per_token_group_quant(input, weight, epsilon, group_size, column_major_scales, scale_ue8m0, fp8_dtype,
                                   tma_aligned_scales=False):  # fmt: skip
    return per_token_group_fp8_quant(
        rms_norm(input, weight, epsilon), group_size, column_major_scales, scale_ue8m0, fp8_dtype, tma_aligned_scales
    )


def fused_add_rms_norm_per_token_group_quant(
    input, residual, weight, epsilon, group_size, column_major_scales, scale_ue8m0, fp8_dtype, tma_aligned_scales=False
):
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = per_token_group_fp8_quant(y, group_size, column_major_scales, scale_ue8m0, fp8_dtype,
                                          tma_aligned_scales)  # fmt: skip
    return q, scales, residual_out


def rms_norm_static_int8_quant(input, weight, scale, epsilon):
    return static_scaled_int8_quant(rms_norm(input, weight, epsilon), scale)


def fused_add_rms_norm_static_int8_quant(input, residual, weight, scale, epsilon):
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    return static_scaled_int8_quant(y, scale), residual_out


def rms_norm_dynamic_quant(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor, scale_floor,
                           zero_scale, scale_dtype, scale_ue8m0, round_quotient=False):  # fmt: skip
    return dynamic_quant(rms_norm(input, weight, epsilon), quant_dtype, group_size, divisor, absmax_floor,
                         scale_floor, zero_scale, scale_dtype, scale_ue8m0, round_quotient)  # fmt: skip


def fused_add_rms_norm_dynamic_quant(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                     absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0,
                                     round_quotient=False):  # fmt: skip
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = dynamic_quant(y, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                              scale_dtype, scale_ue8m0, round_quotient)  # fmt: skip
    return q, scales, residual_out


def rms_norm_dynamic_quant_with_norm_out(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor,
                                         scale_floor, zero_scale, scale_dtype, scale_ue8m0,
                                         round_quotient=False):  # fmt: skip
    """:func:`rms_norm_dynamic_quant` that also returns the normalised output ``y`` (last)."""
    y = rms_norm(input, weight, epsilon)
    return (*dynamic_quant(y, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
                           scale_ue8m0, round_quotient), y)  # fmt: skip


def fused_add_rms_norm_dynamic_quant_with_norm_out(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                                   absmax_floor, scale_floor, zero_scale, scale_dtype,
                                                   scale_ue8m0, round_quotient=False):  # fmt: skip
    """:func:`fused_add_rms_norm_dynamic_quant` that also returns the normalised output ``y`` (last)."""
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = dynamic_quant(y, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale,
                              scale_dtype, scale_ue8m0, round_quotient)  # fmt: skip
    return q, scales, residual_out, y


from .microscaling import *  # noqa: E402,F401,F403  (the microscaling formats: MXFP8, MXFP4, NVFP4)


def rms_norm_per_token_group_quant_packed(input, weight, epsilon, group_size, fp8_dtype):
    return per_token_group_fp8_quant_packed(rms_norm(input, weight, epsilon), group_size, fp8_dtype)


def fused_add_rms_norm_per_token_group_quant_packed(input, residual, weight, epsilon, group_size, fp8_dtype):
    y, residual_out = fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = per_token_group_fp8_quant_packed(y, group_size, fp8_dtype)
    return q, scales, residual_out
