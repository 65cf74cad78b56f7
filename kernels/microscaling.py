# SPDX-License-Identifier: Apache-2.0
"""Pure-torch references of the microscaling (block-scaled) formats: the spec the kernels are
tested against, on any device.

Formats (blocks run along the last dim, ``H`` must be a multiple of the block size; every block
is scaled independently, from the exact absmax of its values in fp32):

* MXFP8: blocks of 32, one E8M0 scale per block, elements ``float8_e4m3fn`` (or ``float8_e5m2``);
* MXFP4: blocks of 32, one E8M0 scale per block, elements FP4 e2m1 packed two per byte;
* NVFP4: blocks of 16, one ``float8_e4m3fn`` scale per block and one fp32 per-tensor global scale.

E8M0 (``torch.float8_e8m0fnu``, one byte): the power of two ``2 ** (byte - 127)``; byte 0 is
``2 ** -127``, 254 is ``2 ** 127``, 255 is NaN; there is no zero.

FP4 e2m1 (one nibble, ``sign << 3 | exponent << 1 | mantissa``): codes 0..7 are 0, 0.5, 1, 1.5,
2, 3, 4, 6 and 8..15 their negatives (8 is -0). Conversions round to nearest even and saturate
to +-6 (:func:`f32_to_e2m1`). Packed FP4 (``uint8``, ``[..., H / 2]``, row-major): element ``2i``
of a row is the low nibble of byte ``i`` and element ``2i + 1`` the high nibble (torchao's
``pack_uint4`` order). PTX ``cvt.rn.satfinite.e2m1x2.f32 d, a, b`` puts ``a`` in the high
nibble, so a kernel packs byte ``i`` with ``a = x[2i + 1]``, ``b = x[2i]``.

Which convention each quantizer follows:

* MX block scales: torchao's ``to_mx`` with its ``ScaleCalculationMode`` (``"floor"``,
  ``"rceil"``, ``"ceil"``, ``"even"``), bit for bit, see :func:`mx_block_scale`; RCEIL rounds up
  exactly as PTX ``cvt.rp.satfinite.ue8m0x2.f32`` does (:func:`f32_to_ue8m0`).
* NVFP4: the global scale is an input and ``scale_convention`` says what it is: ``"divisor"``
  (torchao: ``per_tensor_scale = amax / (448 * 6)``, values are divided by it) or
  ``"multiplier"`` (vLLM / FlashInfer: ``global_scale = 448 * 6 / amax``, values are multiplied
  by it); see :func:`nvfp4_quantize`.

Scale layouts: ``"row_major"`` (``[..., H / block]``, contiguous) or ``"swizzled"`` (the 128x4
tile layout cuBLAS / CUTLASS block-scaled GEMMs read, :func:`swizzle_scales_128x4`). The
DeepGEMM sm_100 packed-UE8M0 layout of per-group FP8 scales is :func:`deepgemm_pack_ue8m0_scales`.

The fused references compose :func:`fusion_kernels.reference.rms_norm` /
:func:`fusion_kernels.reference.fused_add_rms_norm` (whose output is rounded to the input dtype
where the Hugging Face RMSNorm rounds) with the quantizers here.
"""

from __future__ import annotations

import torch

MX_BLOCK_SIZE = 32
NVFP4_BLOCK_SIZE = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
#: The amax a NVFP4 global scale maps to the largest representable value: 448 * 6.
NVFP4_AMAX_DIVISOR = E4M3_MAX * E2M1_MAX
E8M0_BIAS = 127
E8M0_NAN = 255
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MXFP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_MODES = ("floor", "rceil", "ceil", "even")
SCALE_LAYOUTS = ("row_major", "swizzled")
NVFP4_CONVENTIONS = ("divisor", "multiplier")
#: The dtypes packed FP4 may be returned as (``float4_e2m1fn_x2`` where this torch has it).
FP4_DTYPES = (torch.uint8,) + ((torch.float4_e2m1fn_x2,) if hasattr(torch, "float4_e2m1fn_x2") else ())
#: Smallest normal float8_e4m3fn, the lower clamp of torchao's NVFP4 block scales.
E4M3_MIN_NORMAL = 2.0**-6
#: Smallest normal fp32, the lower clamp of the divisor in the non-RCEIL MX modes.
F32_MIN_NORMAL = 2.0**-126

__all__ = [
    "MX_BLOCK_SIZE",
    "NVFP4_BLOCK_SIZE",
    "NVFP4_AMAX_DIVISOR",
    "SCALE_MODES",
    "SCALE_LAYOUTS",
    "NVFP4_CONVENTIONS",
    "f32_to_e2m1",
    "e2m1_to_f32",
    "cvt_rn_satfinite_e2m1x2_f32",
    "f32_to_ue8m0",
    "cvt_rp_satfinite_ue8m0x2_f32",
    "e8m0_to_f32",
    "pack_fp4",
    "unpack_fp4",
    "mx_block_scale",
    "mxfp8_quantize",
    "mxfp4_quantize",
    "mxfp8_dequantize",
    "mxfp4_dequantize",
    "nvfp4_global_scale",
    "nvfp4_quantize",
    "nvfp4_dequantize",
    "swizzle_scales_128x4",
    "unswizzle_scales_128x4",
    "deepgemm_pack_ue8m0_scales",
    "deepgemm_unpack_ue8m0_scales",
    "rms_norm_mxfp8_quant",
    "fused_add_rms_norm_mxfp8_quant",
    "rms_norm_mxfp4_quant",
    "fused_add_rms_norm_mxfp4_quant",
    "rms_norm_nvfp4_quant",
    "fused_add_rms_norm_nvfp4_quant",
]

# (largest value, floor(log2(largest value)), mantissa bits) of each element format.
_ELEM_FORMATS = {
    torch.float8_e4m3fn: (448.0, 8, 3),
    torch.float8_e5m2: (57344.0, 15, 2),
    "e2m1": (6.0, 2, 1),
}


# --- checks ------------------------------------------------------------------------------------


def _check_f32(name: str, x: torch.Tensor) -> None:
    if x.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")


def _check_input(input: torch.Tensor, block_size: int) -> None:
    if input.dtype not in INPUT_DTYPES:
        raise ValueError(f"input must be float32, bfloat16 or float16, got {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input must have at least one dimension (the blocks run along the last)")
    if input.shape[-1] % block_size != 0:
        raise ValueError(f"hidden size {input.shape[-1]} is not divisible by the block size {block_size}")


def _scale_mode(scale_mode) -> str:
    # torchao's ScaleCalculationMode members carry these strings as their value.
    mode = getattr(scale_mode, "value", scale_mode)
    if mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    return mode


def _check_layout(scale_layout: str) -> None:
    if scale_layout not in SCALE_LAYOUTS:
        raise ValueError(f"scale_layout must be one of {SCALE_LAYOUTS}, got {scale_layout!r}")


def _check_fp4_dtype(fp4_dtype: torch.dtype) -> None:
    if fp4_dtype not in FP4_DTYPES:
        raise ValueError(f"fp4_dtype must be one of {FP4_DTYPES}, got {fp4_dtype}")


def _check_convention(scale_convention: str) -> None:
    if scale_convention not in NVFP4_CONVENTIONS:
        raise ValueError(f"scale_convention must be one of {NVFP4_CONVENTIONS}, got {scale_convention!r}")


def _check_global_scale(global_scale: torch.Tensor) -> None:
    if not isinstance(global_scale, torch.Tensor) or global_scale.dtype != torch.float32:
        raise ValueError(f"global_scale must be a float32 tensor, got {getattr(global_scale, 'dtype', global_scale)}")
    if global_scale.numel() != 1:
        raise ValueError(f"global_scale must hold one element, got shape {tuple(global_scale.shape)}")


# --- bit-level conversions (models of the PTX cvt instructions) --------------------------------


def f32_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """The FP4 e2m1 code (``uint8`` 0..15) of each float32: round to nearest even, saturating.

    The per-element model of PTX ``cvt.rn.satfinite.e2m1x2.f32``, computed on the int32 bits.
    With ``E`` the biased exponent field and ``sig = 0x800000 | mantissa`` the 24-bit
    significand of ``|x|``, the e2m1 spacing around ``|x|`` is ``2 ** u``,
    ``u = max(E - 127, 0) - 1``, so ``n = |x| / 2 ** u = sig >> s`` with
    ``s = clamp(149 - E, 22, 30)``; ``n`` is rounded to nearest even by adding
    ``2 ** (s - 1) - 1 + (n & 1)`` before the shift, and the code is
    ``min(n + 2 * max(E - 127, 0), 7)``. So ``|x| <= 0.25`` (fp32 zeros and subnormals included)
    gives 0 and ``|x| > 5`` (Inf included) gives 7 (6.0). Bit 31 of ``x`` becomes bit 3: -0.0
    and negatives that round to zero give 0x8 (-0).

    e2m1 has no NaN: NaN gives 7 with NaN's sign bit (sign-preserved MAX_NORM, as CUTLASS's
    software conversion does; the PTX ISA states no NaN result for e2m1). Any shape.
    """
    _check_f32("x", x)
    bits = x.view(torch.int32)
    sign = (bits >> 28) & 8
    mag = bits & 0x7FFFFFFF
    exp_field = mag >> 23
    shift = (149 - exp_field).clamp(min=22, max=30)
    sig = (mag & 0x7FFFFF) | 0x800000
    n = (sig + ((1 << shift) >> 1) - 1 + ((sig >> shift) & 1)) >> shift
    code = (n + 2 * (exp_field - 127).clamp(min=0)).clamp(max=7)
    return (code | sign).to(torch.uint8)


def e2m1_to_f32(codes: torch.Tensor) -> torch.Tensor:
    """The float32 value of each e2m1 code (the low nibble of ``codes``, any integer dtype)."""
    magnitudes = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], device=codes.device)
    table = torch.cat([magnitudes, -magnitudes])
    return table[codes.to(torch.int64) & 15]


def cvt_rn_satfinite_e2m1x2_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Model of PTX ``cvt.rn.satfinite.e2m1x2.f32 d, a, b``: ``d = e2m1(a) << 4 | e2m1(b)``
    (``uint8``; ``a`` in the high nibble, ``b`` in the low), elementwise over float32 ``a``, ``b``."""
    return (f32_to_e2m1(a) << 4) | f32_to_e2m1(b)


def f32_to_ue8m0(x: torch.Tensor) -> torch.Tensor:
    """The E8M0 byte (``uint8``) of each non-negative float32, rounded up to a power of two.

    The per-element model of PTX ``cvt.rp.satfinite.ue8m0x2.f32``, computed on the int32 bits
    (``E`` the biased exponent field, ``m`` the 23 mantissa bits):

    * normal ``x``: ``E + (m != 0)`` (the next power of two at or above ``x``), at most 254 -
      values above ``2 ** 127`` saturate to ``2 ** 127`` (``.satfinite``);
    * subnormal or zero ``x`` (``E == 0``): 0 (``2 ** -127``) when ``x <= 2 ** -127``
      (``m <= 0x400000``), else 1 (``2 ** -126``);
    * +Inf: 254 (saturated); NaN: 255.

    Negative inputs are outside the model (scales are magnitudes): ValueError. -0.0 is zero.
    """
    _check_f32("x", x)
    if bool((x < 0).any()):
        raise ValueError("x must be >= 0 or NaN (E8M0 has no sign)")
    mag = x.view(torch.int32) & 0x7FFFFFFF
    exp_field = mag >> 23
    mantissa = mag & 0x7FFFFF
    normal = exp_field + (mantissa != 0).to(torch.int32)
    subnormal = (mantissa > 0x400000).to(torch.int32)
    byte = torch.where(exp_field == 0, subnormal, normal).clamp(max=254)
    byte = torch.where(mag > 0x7F800000, torch.full_like(byte, E8M0_NAN), byte)
    return byte.to(torch.uint8)


def cvt_rp_satfinite_ue8m0x2_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Model of PTX ``cvt.rp.satfinite.ue8m0x2.f32 d, a, b``: the 16-bit
    ``d = ue8m0(a) << 8 | ue8m0(b)`` (``a`` in the high byte), held in an int32 tensor."""
    return (f32_to_ue8m0(a).to(torch.int32) << 8) | f32_to_ue8m0(b).to(torch.int32)


def e8m0_to_f32(scales: torch.Tensor) -> torch.Tensor:
    """The float32 value of each E8M0 byte (``float8_e8m0fnu`` or ``uint8``), exactly:
    ``2 ** (byte - 127)``; byte 0 is the fp32 subnormal ``2 ** -127``; 255 is NaN."""
    if scales.dtype not in (torch.float8_e8m0fnu, torch.uint8):
        raise ValueError(f"scales must be float8_e8m0fnu or uint8, got {scales.dtype}")
    byte = scales.view(torch.uint8).to(torch.int32)
    bits = torch.where(byte == 0, torch.full_like(byte, 0x00400000), byte << 23)
    bits = torch.where(byte == E8M0_NAN, torch.full_like(byte, 0x7FC00000), bits)
    return bits.view(torch.float32)


def pack_fp4(codes: torch.Tensor, fp4_dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Pack e2m1 codes (``uint8`` 0..15, ``[..., H]``, H even) two per byte: ``[..., H / 2]``,
    element ``2i`` in the low nibble of byte ``i``, ``2i + 1`` in the high nibble; contiguous."""
    _check_fp4_dtype(fp4_dtype)
    if codes.dim() == 0 or codes.shape[-1] % 2 != 0:
        raise ValueError(f"codes must have an even last dimension, got shape {tuple(codes.shape)}")
    pairs = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    packed = ((pairs[..., 1] << 4) | (pairs[..., 0] & 15)).contiguous()
    return packed if fp4_dtype == torch.uint8 else packed.view(fp4_dtype)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_fp4`: ``[..., H / 2]`` bytes to ``[..., 2 * (H / 2)]`` codes."""
    if packed.dtype not in FP4_DTYPES:
        raise ValueError(f"packed must be one of {FP4_DTYPES}, got {packed.dtype}")
    b = packed.view(torch.uint8)
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


# --- MX block scales ---------------------------------------------------------------------------


def mx_block_scale(amax: torch.Tensor, elem_dtype, scale_mode) -> torch.Tensor:
    """The E8M0 byte (``uint8``) of each block, from its absmax (float32, >= 0 or NaN), as
    torchao's ``to_mx`` computes it. ``elem_dtype``: ``float8_e4m3fn``, ``float8_e5m2`` or
    ``"e2m1"``; with its largest value ``qmax`` (448, 57344, 6), ``p = floor(log2(qmax))``
    (8, 15, 2) and mantissa bits ``mb`` (3, 2, 1); ``E`` is the biased exponent field of
    ``amax`` (0 for zero and fp32 subnormals):

    * ``"floor"`` (OCP MX): ``E - p``, i.e. ``s = 2 ** (floor(log2(amax)) - p)``;
    * ``"ceil"``: ``E + (mantissa(amax) != 0) - p``;
    * ``"even"``: ``E' - p`` with ``E'`` the exponent field of ``amax`` rounded to ``mb``
      mantissa bits (``bits + (1 << (22 - mb))``, ties away from zero);
    * ``"rceil"``: ``f32_to_ue8m0(amax / qmax)`` - the fp32 quotient (correctly rounded) rounded
      up to a power of two, as ``cvt.rp.satfinite.ue8m0x2.f32`` does (cuBLAS's recipe).

    floor/ceil/even clamp the byte to [0, 254] (the ``E`` of +Inf gives a finite scale, e.g.
    ``2 ** 120`` for e4m3); NaN ``amax`` gives 255 in every mode, +Inf 254 in rceil.
    """
    mode = _scale_mode(scale_mode)
    if elem_dtype not in _ELEM_FORMATS:
        raise ValueError(f"elem_dtype must be float8_e4m3fn, float8_e5m2 or 'e2m1', got {elem_dtype}")
    _check_f32("amax", amax)
    qmax, pow2, mbits = _ELEM_FORMATS[elem_dtype]
    if mode == "rceil":
        return f32_to_ue8m0(amax / torch.full_like(amax, qmax))
    bits = amax.view(torch.int32)
    if mode == "even":
        bits = (bits + (1 << (22 - mbits))) & 0x7F800000
    exp_field = (bits >> 23) & 0xFF
    if mode == "ceil":
        exp_field = exp_field + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    byte = (exp_field - pow2).clamp(min=0, max=254)
    byte = torch.where(torch.isnan(amax), torch.full_like(byte, E8M0_NAN), byte)
    return byte.to(torch.uint8)


def _mx_scaled(x: torch.Tensor, byte: torch.Tensor, mode: str) -> torch.Tensor:
    """``x`` (fp32 blocks) brought into the element range by its block's scale, as torchao does."""
    b = byte.to(torch.int32)
    if mode == "rceil":
        # x * 2 ** (127 - byte), exact; byte 0 multiplies by 1 and byte 255 (NaN) gives NaN.
        rcp = e8m0_to_f32((254 - b.clamp(max=254)).to(torch.uint8))
        rcp = torch.where(b == 0, torch.ones_like(rcp), rcp)
        rcp = torch.where(b == E8M0_NAN, torch.full_like(rcp, float("nan")), rcp)
        return x * rcp
    # x / max(2 ** (byte - 127), 2 ** -126); byte 255 divides by +Inf.
    divisor = (b << 23).view(torch.float32).clamp(min=F32_MIN_NORMAL)
    return x / divisor


def _mx_quantize(input, elem, scale_mode, scale_layout):
    _check_input(input, MX_BLOCK_SIZE)
    mode = _scale_mode(scale_mode)
    _check_layout(scale_layout)
    hidden = input.shape[-1]
    x = input.float().reshape(*input.shape[:-1], hidden // MX_BLOCK_SIZE, MX_BLOCK_SIZE)
    amax = x.abs().amax(dim=-1, keepdim=True)
    byte = mx_block_scale(amax, elem, mode)
    scaled = _mx_scaled(x, byte, mode).reshape(input.shape)
    scales = byte.squeeze(-1).contiguous().view(torch.float8_e8m0fnu)
    if scale_layout == "swizzled":
        scales = swizzle_scales_128x4(scales.reshape(-1, hidden // MX_BLOCK_SIZE))
    return scaled, scales


def mxfp8_quantize(
    input: torch.Tensor,
    scale_mode,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    scale_layout: str = "row_major",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8: blocks of 32 along the last dim, one E8M0 scale per block (torchao's ``to_mx``).

    ``scale_mode``: ``"floor"``, ``"rceil"``, ``"ceil"`` or ``"even"`` (or torchao's
    ``ScaleCalculationMode``), see :func:`mx_block_scale`. Per block, in fp32:

    * rceil: ``q = x * 2 ** (127 - byte)`` (exact; byte 0 multiplies by 1, byte 255 gives NaN);
    * floor/ceil/even: ``q = x / max(2 ** (byte - 127), 2 ** -126)`` (byte 255 divides by Inf);

    then ``q`` is clamped to +-qmax (NaN stays NaN) and cast to ``fp8_dtype`` (round to nearest
    even). So NaN in a block makes its scale NaN (255) and, in rceil, every element NaN; +-Inf
    saturates to +-qmax.

    Returns ``(q, scales)``: ``q`` ``fp8_dtype``, the input's shape, contiguous; ``scales``
    ``float8_e8m0fnu``: ``[..., H / 32]`` contiguous (``"row_major"``), or swizzled over the
    rows ``T = prod(input.shape[:-1])`` by :func:`swizzle_scales_128x4` (``"swizzled"``).
    """
    if fp8_dtype not in MXFP8_DTYPES:
        raise ValueError(f"fp8_dtype must be float8_e4m3fn or float8_e5m2, got {fp8_dtype}")
    scaled, scales = _mx_quantize(input, fp8_dtype, scale_mode, scale_layout)
    qmax = _ELEM_FORMATS[fp8_dtype][0]
    return scaled.clamp(-qmax, qmax).to(fp8_dtype).contiguous(), scales


def mxfp4_quantize(
    input: torch.Tensor,
    scale_mode,
    scale_layout: str = "row_major",
    fp4_dtype: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4: blocks of 32 along the last dim, one E8M0 scale per block, e2m1 elements
    (torchao's ``to_mx`` with ``float4_e2m1fn_x2``).

    Scales and scaling as :func:`mxfp8_quantize` with qmax 6; each scaled value is converted by
    :func:`f32_to_e2m1` (round to nearest even, saturating to +-6). NaN gives code 7 with the
    sign of the scaled NaN (e2m1 has no NaN; torchao's software conversion encodes it
    differently): in floor/ceil/even the element's own NaN; in rceil a block holding a NaN has
    scale 255 and a NaN factor, and every element of it takes the factor's (positive) NaN.

    Returns ``(q, scales)``: ``q`` packed FP4, ``[..., H / 2]`` contiguous (element ``2i`` in the
    low nibble of byte ``i``), as ``uint8`` or ``float4_e2m1fn_x2`` (``fp4_dtype``); ``scales``
    as in :func:`mxfp8_quantize`.
    """
    _check_fp4_dtype(fp4_dtype)
    scaled, scales = _mx_quantize(input, "e2m1", scale_mode, scale_layout)
    return pack_fp4(f32_to_e2m1(scaled), fp4_dtype), scales


def _check_row_major_scales(q_hidden: int, scales: torch.Tensor, block_size: int, dtype) -> None:
    if scales.dtype != dtype:
        raise ValueError(f"scales must be {dtype}, got {scales.dtype}")
    if scales.dim() == 0 or scales.shape[-1] * block_size != q_hidden:
        raise ValueError(f"scales must be row-major [..., {q_hidden // block_size}], got shape {tuple(scales.shape)}")


def mxfp8_dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``float(q) * 2 ** (byte - 127)`` in fp32 (NaN where the scale is 255); row-major scales."""
    if q.dtype not in MXFP8_DTYPES:
        raise ValueError(f"q must be float8_e4m3fn or float8_e5m2, got {q.dtype}")
    _check_row_major_scales(q.shape[-1], scales, MX_BLOCK_SIZE, torch.float8_e8m0fnu)
    x = q.float().reshape(*q.shape[:-1], -1, MX_BLOCK_SIZE)
    return (x * e8m0_to_f32(scales).unsqueeze(-1)).reshape(q.shape)


def mxfp4_dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``e2m1(q) * 2 ** (byte - 127)`` in fp32, ``[..., H]`` from packed ``[..., H / 2]``."""
    values = e2m1_to_f32(unpack_fp4(q))
    _check_row_major_scales(values.shape[-1], scales, MX_BLOCK_SIZE, torch.float8_e8m0fnu)
    x = values.reshape(*values.shape[:-1], -1, MX_BLOCK_SIZE)
    return (x * e8m0_to_f32(scales).unsqueeze(-1)).reshape(values.shape)


# --- NVFP4 -------------------------------------------------------------------------------------


def nvfp4_global_scale(amax: torch.Tensor, scale_convention: str) -> torch.Tensor:
    """The per-tensor global scale of a tensor whose absmax is ``amax``, in fp32:
    ``"divisor"`` (torchao): ``amax / (448 * 6)``; ``"multiplier"`` (vLLM / FlashInfer):
    ``(448 * 6) / amax``; both correctly rounded fp32 quotients."""
    _check_convention(scale_convention)
    a = amax.float()
    c = torch.full_like(a, NVFP4_AMAX_DIVISOR)
    return a / c if scale_convention == "divisor" else c / a


def nvfp4_quantize(
    input: torch.Tensor,
    global_scale: torch.Tensor,
    scale_convention: str,
    scale_layout: str = "row_major",
    fp4_dtype: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4: blocks of 16 along the last dim, one ``float8_e4m3fn`` scale per block and the
    per-tensor fp32 ``global_scale`` (an input, one element). Per block, in fp32 with correctly
    rounded divisions and reciprocals, ``amax`` its absmax:

    * ``scale_convention="divisor"`` (torchao's ``nvfp4_quantize``, ``global_scale`` is
      ``per_tensor_scale = amax_tensor / (448 * 6)``)::

          s = e4m3(clamp((amax / 6) / global_scale, 2 ** -6, 448))
          q = e2m1(clamp(x * ((1 / global_scale) / s), -6, 6))

      dequantized as ``q * s * global_scale``; an all-zero block gets ``s = 2 ** -6``.
    * ``scale_convention="multiplier"`` (vLLM / FlashInfer ``scaled_fp4_quant``, ``global_scale``
      is ``448 * 6 / amax_tensor``)::

          s = e4m3(min(global_scale * (amax * fp32(1 / 6)), 448))
          r = 1 / (s * (1 / global_scale))      (0 where s * (1 / global_scale) is 0)
          q = e2m1(clamp(x * r, -6, 6))

      dequantized as ``q * s / global_scale``; an all-zero block gets ``s = 0`` and ``q = 0``.
      The CUDA kernels use approximate reciprocals (``rcp.approx.ftz``); this uses exact ones.

    ``e4m3`` rounds to nearest even (NaN stays NaN); ``e2m1`` is :func:`f32_to_e2m1`. NaN in a
    block makes its scale NaN and its codes 7 | sign; +-Inf saturates the scale to 448.

    Returns ``(q, scales)``: ``q`` packed FP4 ``[..., H / 2]`` (as :func:`mxfp4_quantize`),
    ``scales`` ``float8_e4m3fn``: ``[..., H / 16]`` contiguous (``"row_major"``) or swizzled over
    the rows ``T = prod(input.shape[:-1])`` by :func:`swizzle_scales_128x4` (``"swizzled"``).
    """
    _check_input(input, NVFP4_BLOCK_SIZE)
    _check_global_scale(global_scale)
    _check_convention(scale_convention)
    _check_layout(scale_layout)
    _check_fp4_dtype(fp4_dtype)
    hidden = input.shape[-1]
    x = input.float().reshape(*input.shape[:-1], hidden // NVFP4_BLOCK_SIZE, NVFP4_BLOCK_SIZE)
    amax = x.abs().amax(dim=-1, keepdim=True)
    g = global_scale.reshape(())
    one = torch.ones_like(g)
    if scale_convention == "divisor":
        block = (amax / torch.full_like(amax, E2M1_MAX)) / g
        s = block.clamp(min=E4M3_MIN_NORMAL, max=E4M3_MAX).to(torch.float8_e4m3fn)
        rcp = (one / g) / s.float()
    else:
        inv6 = torch.tensor(1.0 / E2M1_MAX, dtype=torch.float32, device=amax.device)
        s = (g * (amax * inv6)).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
        inv_g = torch.where(g == 0, torch.zeros_like(g), one / g)
        d = s.float() * inv_g
        rcp = torch.where(d == 0, torch.zeros_like(d), torch.ones_like(d) / d)
    scaled = (x * rcp).clamp(-E2M1_MAX, E2M1_MAX).reshape(input.shape)
    scales = s.squeeze(-1).contiguous()
    if scale_layout == "swizzled":
        scales = swizzle_scales_128x4(scales.reshape(-1, hidden // NVFP4_BLOCK_SIZE))
    return pack_fp4(f32_to_e2m1(scaled), fp4_dtype), scales


def nvfp4_dequantize(
    q: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor, scale_convention: str
) -> torch.Tensor:
    """fp32 ``[..., H]`` from packed ``q`` and row-major ``scales``: ``e2m1(q) * (s * global_scale)``
    (``"divisor"``) or ``e2m1(q) * (s / global_scale)`` (``"multiplier"``)."""
    _check_global_scale(global_scale)
    _check_convention(scale_convention)
    values = e2m1_to_f32(unpack_fp4(q))
    _check_row_major_scales(values.shape[-1], scales, NVFP4_BLOCK_SIZE, torch.float8_e4m3fn)
    g = global_scale.reshape(())
    s = scales.float() * g if scale_convention == "divisor" else scales.float() / g
    x = values.reshape(*values.shape[:-1], -1, NVFP4_BLOCK_SIZE)
    return (x * s.unsqueeze(-1)).reshape(values.shape)


# --- scale layouts -----------------------------------------------------------------------------

_ONE_BYTE_SCALES = (torch.float8_e8m0fnu, torch.float8_e4m3fn, torch.uint8)


def swizzle_scales_128x4(scales: torch.Tensor) -> torch.Tensor:
    """The 128x4 tile layout block-scaled GEMMs (cuBLAS, CUTLASS sm_100) read, as torchao's
    ``to_blocked`` builds it, from row-major scales ``[R, C]`` (one byte each: E8M0, E4M3, uint8).

    The scales are zero-padded to ``[128 * ceil(R / 128), 4 * ceil(C / 4)]`` and cut into
    128x4 tiles, stored one after another in row-major tile order (tile ``(rb, cb)`` is number
    ``rb * ceil(C / 4) + cb``, 512 bytes each). Inside a tile, the scale of row ``r = 32 * i + j``
    (``i < 4``, ``j < 32``) and column ``c`` sits at byte ``16 * j + 4 * i + c``. So scale
    ``[r, c]`` is at byte offset::

        512 * ((r // 128) * ceil(C / 4) + c // 4) + 16 * (r % 32) + 4 * ((r % 128) // 32) + c % 4

    Returns a contiguous ``[32 * ceil(R / 128), 16 * ceil(C / 4)]`` tensor of the input's dtype
    (strides ``(16 * ceil(C / 4), 1)``) whose row-major bytes are that buffer; padding is 0.
    """
    if scales.dtype not in _ONE_BYTE_SCALES:
        raise ValueError(f"scales must be float8_e8m0fnu, float8_e4m3fn or uint8, got {scales.dtype}")
    if scales.dim() != 2:
        raise ValueError(f"scales must be 2-D [rows, scale columns], got shape {tuple(scales.shape)}")
    rows, cols = scales.shape
    row_tiles, col_tiles = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros((row_tiles * 128, col_tiles * 4), dtype=torch.uint8, device=scales.device)
    padded[:rows, :cols] = scales.view(torch.uint8)
    # (rb, i, j, cb, c) -> (rb, cb, j, i, c)
    tiles = padded.reshape(row_tiles, 4, 32, col_tiles, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(row_tiles * 32, col_tiles * 16).contiguous().view(scales.dtype)


def unswizzle_scales_128x4(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The inverse of :func:`swizzle_scales_128x4`: row-major ``[rows, cols]`` (contiguous) from
    the swizzled buffer (any shape holding ``512 * ceil(rows / 128) * ceil(cols / 4)`` bytes)."""
    if swizzled.dtype not in _ONE_BYTE_SCALES:
        raise ValueError(f"swizzled must be float8_e8m0fnu, float8_e4m3fn or uint8, got {swizzled.dtype}")
    row_tiles, col_tiles = -(-rows // 128), -(-cols // 4)
    if swizzled.numel() != row_tiles * col_tiles * 512:
        needed = row_tiles * col_tiles * 512
        raise ValueError(f"swizzled holds {swizzled.numel()} scales, [{rows}, {cols}] needs {needed}")
    tiles = swizzled.contiguous().view(torch.uint8).reshape(row_tiles, col_tiles, 32, 4, 4)
    padded = tiles.permute(0, 3, 2, 1, 4).reshape(row_tiles * 128, col_tiles * 4)
    return padded[:rows, :cols].contiguous().view(swizzled.dtype)


def _e8m0_bytes(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes of scales given as bytes, or as float32 powers of two in [2 ** -127, 2 ** 127]."""
    if scales.dtype in (torch.float8_e8m0fnu, torch.uint8):
        return scales.view(torch.uint8)
    if scales.dtype != torch.float32:
        raise ValueError(f"scales must be float32 (powers of two), float8_e8m0fnu or uint8, got {scales.dtype}")
    byte = ((scales.view(torch.int32) >> 23) & 0xFF).to(torch.uint8)
    if not bool((e8m0_to_f32(byte) == scales).all()):
        raise ValueError("float32 scales must be powers of two in [2**-127, 2**127] (UE8M0-representable)")
    return byte


def deepgemm_pack_ue8m0_scales(scales: torch.Tensor) -> torch.Tensor:
    """DeepGEMM's sm_100 layout of per-group FP8 scales (e.g. per-token-group-128 with
    ``scale_ue8m0``), as ``get_mn_major_tma_aligned_packed_ue8m0_tensor`` builds it.

    ``scales``: ``[MN, G]`` or ``[B, MN, G]``, float32 powers of two (their E8M0 byte is the fp32
    exponent field) or E8M0 bytes (``float8_e8m0fnu`` / ``uint8``). With ``G4 = ceil(G / 4)`` and
    ``MNa = 4 * ceil(MN / 4)`` (TMA alignment: 16 bytes of int32):

    * four consecutive groups' bytes form one int32, group ``4k + t`` in byte ``t`` (bits
      ``8t..8t+7``; byte ``t`` of the little-endian word), groups past ``G`` are 0;
    * MN-major: the result is ``[MN, G4]`` (``[B, MN, G4]``) int32 with strides ``(1, MNa)``
      (``(G4 * MNa, 1, MNa)``) - a view of a contiguous ``[G4, MNa]`` (``[B, G4, MNa]``) buffer
      whose rows ``MN..MNa-1`` are 0.

    So the E8M0 byte of ``[m, g]`` is at byte offset ``4 * ((g // 4) * MNa + m) + g % 4`` of the
    batch's buffer.
    """
    byte = _e8m0_bytes(scales)
    if byte.dim() not in (2, 3):
        raise ValueError(f"scales must be [MN, G] or [B, MN, G], got shape {tuple(scales.shape)}")
    squeeze = byte.dim() == 2
    byte = byte.unsqueeze(0) if squeeze else byte
    batch, mn, groups = byte.shape
    g4, mn_aligned = -(-groups // 4), -(-mn // 4) * 4
    padded = torch.zeros((batch, mn_aligned, g4 * 4), dtype=torch.int64, device=byte.device)
    padded[:, :mn, :groups] = byte.to(torch.int64)
    quads = padded.reshape(batch, mn_aligned, g4, 4)
    words = quads[..., 0] | (quads[..., 1] << 8) | (quads[..., 2] << 16) | (quads[..., 3] << 24)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # two's complement
    buffer = torch.empty((batch, g4, mn_aligned), dtype=torch.int32, device=byte.device)
    buffer.copy_(words.transpose(1, 2))
    out = buffer.transpose(1, 2)[:, :mn, :]
    return out.squeeze(0) if squeeze else out


def deepgemm_unpack_ue8m0_scales(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`deepgemm_pack_ue8m0_scales`: the E8M0 bytes ``[..., MN, groups]``
    (``uint8``, contiguous) of a packed ``[..., MN, ceil(groups / 4)]`` int32 tensor."""
    if packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32, got {packed.dtype}")
    if packed.dim() not in (2, 3) or packed.shape[-1] != -(-groups // 4):
        raise ValueError(f"packed must be [..., MN, ceil({groups} / 4)], got shape {tuple(packed.shape)}")
    w = packed.to(torch.int64) & 0xFFFFFFFF
    quads = torch.stack([(w >> (8 * t)) & 0xFF for t in range(4)], dim=-1)
    return quads.reshape(*packed.shape[:-1], 4 * packed.shape[-1])[..., :groups].to(torch.uint8).contiguous()


# --- fused ops: the composition of reference.rms_norm / fused_add_rms_norm and the quantizers --


def _norms():
    # Imported at call time: fusion_kernels.reference re-exports this module's names.
    from fusion_kernels import reference

    return reference


def rms_norm_mxfp8_quant(
    input, weight, epsilon, scale_mode, fp8_dtype=torch.float8_e4m3fn, scale_layout="row_major"
):
    """``mxfp8_quantize(rms_norm(input, weight, epsilon), ...)``: ``(q, scales)``."""
    return mxfp8_quantize(_norms().rms_norm(input, weight, epsilon), scale_mode, fp8_dtype, scale_layout)


def fused_add_rms_norm_mxfp8_quant(
    input, residual, weight, epsilon, scale_mode, fp8_dtype=torch.float8_e4m3fn, scale_layout="row_major"
):
    """``(q, scales, residual_out)``: ``residual_out = input + residual`` (in the input dtype),
    then :func:`rms_norm_mxfp8_quant` of it."""
    y, residual_out = _norms().fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = mxfp8_quantize(y, scale_mode, fp8_dtype, scale_layout)
    return q, scales, residual_out


def rms_norm_mxfp4_quant(input, weight, epsilon, scale_mode, scale_layout="row_major", fp4_dtype=torch.uint8):
    """``mxfp4_quantize(rms_norm(input, weight, epsilon), ...)``: ``(q, scales)``."""
    return mxfp4_quantize(_norms().rms_norm(input, weight, epsilon), scale_mode, scale_layout, fp4_dtype)


def fused_add_rms_norm_mxfp4_quant(
    input, residual, weight, epsilon, scale_mode, scale_layout="row_major", fp4_dtype=torch.uint8
):
    """``(q, scales, residual_out)``, the MXFP4 counterpart of :func:`fused_add_rms_norm_mxfp8_quant`."""
    y, residual_out = _norms().fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = mxfp4_quantize(y, scale_mode, scale_layout, fp4_dtype)
    return q, scales, residual_out


def rms_norm_nvfp4_quant(
    input, weight, epsilon, global_scale, scale_convention, scale_layout="row_major", fp4_dtype=torch.uint8
):
    """``nvfp4_quantize(rms_norm(input, weight, epsilon), global_scale, scale_convention, ...)``:
    ``(q, scales)``; ``global_scale`` is a given input (calibrated), not derived from this output."""
    y = _norms().rms_norm(input, weight, epsilon)
    return nvfp4_quantize(y, global_scale, scale_convention, scale_layout, fp4_dtype)


def fused_add_rms_norm_nvfp4_quant(
    input, residual, weight, epsilon, global_scale, scale_convention, scale_layout="row_major", fp4_dtype=torch.uint8
):
    """``(q, scales, residual_out)``, the NVFP4 counterpart of :func:`fused_add_rms_norm_mxfp8_quant`."""
    y, residual_out = _norms().fused_add_rms_norm(input, residual, weight, epsilon)
    q, scales = nvfp4_quantize(y, global_scale, scale_convention, scale_layout, fp4_dtype)
    return q, scales, residual_out
