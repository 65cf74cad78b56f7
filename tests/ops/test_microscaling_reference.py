# SPDX-License-Identifier: Apache-2.0
"""The microscaling references (fusion_kernels.microscaling, re-exported by
fusion_kernels.reference) against torchao's quantizers, and the bit-level conversion models
against independent definitions (exhaustively over the fp32 patterns where the result changes).

torchao is optional: the tests that compare with it are skipped when it is absent. The CPU
comparisons are bit for bit, with two documented exceptions: NaN elements of FP4 (torchao's
software e2m1 conversion has no NaN rule; ours gives sign-preserved MAX_NORM) and RCEIL where
torchao's CPU fallback rounds up with ``ceil(log2(x))`` in fp32, which is one exponent low for
values a few ulps above a power of two (ours rounds exactly, as ``cvt.rp.satfinite.ue8m0x2``).
"""

import sys

import pytest
import torch

from fusion_kernels import microscaling as mx
from fusion_kernels import reference
from fusion_kernels.testing_mx import edge_rows

MODES = ["floor", "rceil", "ceil", "even"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def library():
    """These references are plain torch: no compiled library is needed (overrides the session one)."""
    return None


def _torchao():
    pytest.importorskip("torchao.prototype.mx_formats", reason="torchao (the convention matched) is not installed")
    from torchao.prototype.mx_formats import kernels, mx_tensor, nvfp4_tensor, utils
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    return kernels, mx_tensor, nvfp4_tensor, utils, ScaleCalculationMode


def _u8(t):
    return t.contiguous().view(torch.uint8)


def _f32(bits):
    return torch.as_tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


# --- independent definitions of the two PTX conversions (float64, no bit tricks) ----------------


def _e2m1_definition(x: torch.Tensor) -> torch.Tensor:
    """Nearest of the 8 magnitudes, a tie going to the even code; >= 6 saturates; sign kept."""
    v = x.double().abs()
    mids = (E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2
    below = torch.searchsorted(mids, v)  # how many midpoints lie strictly below v
    tie = (below < 7) & (mids[below.clamp(max=6)] == v)
    code = torch.where(tie & (below % 2 == 1), below + 1, below)
    code = torch.where(torch.isnan(v), torch.full_like(code, 7), code)
    sign = (x.view(torch.int32) < 0).to(torch.int64) << 3
    return (code | sign).to(torch.uint8)


def _ue8m0_definition(x: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= x (frexp in float64), biased by 127, within [0, 254]; NaN 255."""
    v = x.double()
    mantissa, exponent = torch.frexp(v)
    k = exponent - (mantissa == 0.5).to(exponent.dtype)  # v = 2**k exactly: k = exponent - 1
    byte = (k.to(torch.int64) + 127).clamp(0, 254)
    byte = torch.where(v == 0, torch.zeros_like(byte), byte)
    byte = torch.where(torch.isinf(v), torch.full_like(byte, 254), byte)
    byte = torch.where(torch.isnan(v), torch.full_like(byte, 255), byte)
    return byte.to(torch.uint8)


def _binade(exp_field: int, sign: int = 0) -> torch.Tensor:
    """Every float32 with this biased exponent field (2**23 values)."""
    bits = (sign << 31) | (exp_field << 23)
    return (torch.arange(1 << 23, dtype=torch.int64) + bits).to(torch.int32).view(torch.float32)


def _sampled_patterns() -> torch.Tensor:
    """Every exponent field and both signs, with the mantissas where rounding changes (0, 1, the
    half-way points of 1, 2 and 3 dropped bits and their neighbours, all ones) and random ones."""
    g = torch.Generator().manual_seed(0)
    special = [0, 1, 2, 0x7FFFFF, 0x7FFFFE]
    for half in (0x200000, 0x400000, 0x100000):
        special += [half - 1, half, half + 1, 3 * half - 1, 3 * half, 3 * half + 1]
    mantissas = torch.cat([torch.tensor(special), torch.randint(0, 1 << 23, (200,), generator=g)])
    exps = torch.arange(256, dtype=torch.int64)
    bits = (exps[:, None] << 23) | mantissas[None, :]
    bits = torch.cat([bits.flatten(), bits.flatten() | (1 << 31)])
    return bits.to(torch.int32).view(torch.float32)


# --- e2m1: cvt.rn.satfinite.e2m1x2.f32 ---------------------------------------------------------


@pytest.mark.parametrize("exp_field", range(125, 130))  # [0.25, 8): every rounding and saturation
def test_e2m1_exhaustive_where_rounding_happens(exp_field):
    x = _binade(exp_field)
    assert torch.equal(mx.f32_to_e2m1(x), _e2m1_definition(x))
    neg = -x[::97]
    assert torch.equal(mx.f32_to_e2m1(neg), _e2m1_definition(neg))


def test_e2m1_every_exponent_and_sign():
    x = _sampled_patterns()
    assert torch.equal(mx.f32_to_e2m1(x), _e2m1_definition(x))


def test_e2m1_special_values_and_decode():
    x = torch.tensor([0.0, -0.0, 0.25, 0.2500001, -0.1, 0.75, 5.0, 5.0000005, 1e30, float("inf"), -float("inf")])
    assert mx.f32_to_e2m1(x).tolist() == [0, 8, 0, 1, 8, 2, 6, 7, 7, 7, 15]
    nan = _f32([0x7FC00000, 0xFFC00000, 0x7F800001])
    assert mx.f32_to_e2m1(nan).tolist() == [7, 15, 7]  # sign-preserved MAX_NORM
    codes = torch.arange(16, dtype=torch.uint8)
    values = mx.e2m1_to_f32(codes)
    assert values[:8].tolist() == E2M1_GRID.tolist() and values[8:].tolist() == (-E2M1_GRID).tolist()
    assert torch.equal(mx.f32_to_e2m1(values), codes)  # every code round-trips (-0 included)


def test_e2m1_matches_torchao_software_conversion_off_nan():
    kernels = _torchao()[0]
    x = torch.cat([_sampled_patterns(), _binade(127)[::5], _binade(129, sign=1)[::5]])
    x = x[~torch.isnan(x)]
    assert torch.equal(mx.f32_to_e2m1(x), kernels.f32_to_f4_unpacked(x))


def test_e2m1x2_puts_a_in_the_high_nibble():
    a = torch.tensor([6.0, -0.5, 1.0])
    b = torch.tensor([0.5, 3.0, -0.0])
    assert mx.cvt_rn_satfinite_e2m1x2_f32(a, b).tolist() == [0x71, 0x95, 0x28]


# --- ue8m0: cvt.rp.satfinite.ue8m0x2.f32 --------------------------------------------------------


@pytest.mark.parametrize("exp_field", [0, 254])  # subnormals (round up to 2**-127 or 2**-126), saturation
def test_ue8m0_exhaustive_binades(exp_field):
    x = _binade(exp_field)
    assert torch.equal(mx.f32_to_ue8m0(x), _ue8m0_definition(x))


def test_ue8m0_every_exponent():
    x = _sampled_patterns()
    x = x[~(x < 0)]  # non-negative, NaN of either sign kept
    assert torch.equal(mx.f32_to_ue8m0(x), _ue8m0_definition(x))
    edge = torch.tensor([0.0, -0.0, 2.0**-127, 2.0**-126, 1.0, 1.0000001, 2.0**127, float("inf"), float("nan")])
    assert mx.f32_to_ue8m0(edge).tolist() == [0, 0, 0, 1, 127, 128, 254, 254, 255]


def test_ue8m0_rejects_negative_and_packs_a_high():
    with pytest.raises(ValueError, match="x must be >= 0"):
        mx.f32_to_ue8m0(torch.tensor([1.0, -2.0]))
    d = mx.cvt_rp_satfinite_ue8m0x2_f32(torch.tensor([1.0, float("nan")]), torch.tensor([3.0, 0.0]))
    assert d.tolist() == [(127 << 8) | 129, (255 << 8) | 0]


def test_e8m0_decode_is_exact():
    byte = torch.arange(256, dtype=torch.uint8)
    values = mx.e8m0_to_f32(byte.view(torch.float8_e8m0fnu))
    expected = [2.0 ** (b - 127) for b in range(255)]
    assert values[:255].double().tolist() == expected and torch.isnan(values[255])
    assert torch.equal(mx.f32_to_ue8m0(values[:255]), byte[:255])  # powers of two round-trip


# --- MX quantizers against torchao's to_mx -----------------------------------------------------


def _mx_input(dtype, rows=48, hidden=256, seed=0):
    """Blocks of very different magnitudes (1e-30 .. 1e30 in fp32, the dtype's range otherwise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=g)
    lo, hi = (-30, 30) if dtype == torch.float32 else ((-12, 4) if dtype == torch.float16 else (-30, 30))
    mags = 10.0 ** torch.empty(rows, hidden // 32).uniform_(lo, hi, generator=g)
    return (x * mags.repeat_interleave(32, dim=1)).to(dtype)


def _to_mx(x, elem, mode):
    _, mx_tensor, _, _, mode_enum = _torchao()
    x_ao = x if x.dtype != torch.float16 else x.float()  # torchao takes bf16/fp32; fp16 is exact in fp32
    scales, data = mx_tensor.to_mx(x_ao, elem, 32, mode_enum(mode))
    return _u8(scales), _u8(data)


def _nan_blocks(x, block):
    return torch.isnan(x.float().reshape(*x.shape[:-1], -1, block)).any(-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fp8_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_mxfp8_matches_torchao(fp8_dtype, mode, dtype):
    for x in (_mx_input(dtype), edge_rows(dtype)):
        q, scales = mx.mxfp8_quantize(x, mode, fp8_dtype)
        ao_scales, ao_q = _to_mx(x, fp8_dtype, mode)
        assert q.dtype == fp8_dtype and q.shape == x.shape and q.is_contiguous()
        assert scales.dtype == torch.float8_e8m0fnu and scales.shape == (x.shape[0], x.shape[1] // 32)
        assert torch.equal(_u8(scales), ao_scales)
        assert torch.equal(_u8(q), ao_q)
    # a NaN makes its block's scale NaN; +-Inf saturates
    edge = edge_rows(dtype)
    q, scales = mx.mxfp8_quantize(edge, mode, fp8_dtype)
    assert _u8(scales)[9, 0] == 255 and _u8(scales)[9, 1] != 255
    assert q[7, 5].float() == torch.finfo(fp8_dtype).max and q[8, 40].float() == -torch.finfo(fp8_dtype).max


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_mxfp4_matches_torchao(mode, dtype):
    for x in (_mx_input(dtype), edge_rows(dtype)):
        q, scales = mx.mxfp4_quantize(x, mode)
        ao_scales, ao_q = _to_mx(x, torch.float4_e2m1fn_x2, mode)
        assert q.dtype == torch.uint8 and q.shape == (x.shape[0], x.shape[1] // 2)
        assert torch.equal(_u8(scales), ao_scales)
        # Off NaN blocks, bit for bit; torchao's e2m1 conversion has no NaN rule.
        keep = ~_nan_blocks(x, 32).repeat_interleave(16, dim=1)
        assert torch.equal(q[keep], ao_q[keep])
    edge = edge_rows(dtype)
    codes = mx.unpack_fp4(mx.mxfp4_quantize(edge, mode)[0])
    nan_row, x_row = codes[9], edge[9].float()
    if mode == "rceil":  # the NaN scale multiplies every element of the block: all NaN -> 7
        assert (nan_row[:32] & 7 == 7).all()
    else:  # x / Inf: the NaN stays NaN (-> 7), the others become +-0
        assert nan_row[7] & 7 == 7
        others = torch.arange(32) != 7
        assert torch.equal(nan_row[:32][others], ((x_row[:32] < 0).to(torch.uint8) << 3)[others])
    assert codes[7, 5] == 7 and codes[8, 40] == 15  # +-Inf saturate to +-6


def test_rceil_rounds_up_exactly_where_torchao_log2_does_not():
    """RCEIL is ``cvt.rp.satfinite.ue8m0x2(amax / qmax)``. torchao's CPU fallback computes
    ``ceil(log2(.))`` in fp32, which rounds values a few ulps above a power of two down to it:
    every disagreement must be one of those, and ours must be the exact round-up."""
    _, mx_tensor, _, _, mode_enum = _torchao()
    qmax = 448.0
    base = torch.tensor([qmax * 2.0**k for k in range(-40, 40)])
    steps = torch.arange(0, 48, dtype=torch.int32)
    amax = (base.view(torch.int32)[:, None] + steps[None, :]).view(torch.float32).flatten()
    x = torch.zeros(amax.numel(), 32)
    x[:, 3] = amax
    ours = _u8(mx.mxfp8_quantize(x, "rceil")[1]).flatten()
    descale = amax / torch.full_like(amax, qmax)
    assert torch.equal(ours, _ue8m0_definition(descale))
    theirs = _u8(mx_tensor.to_mx(x, torch.float8_e4m3fn, 32, mode_enum.RCEIL)[0]).flatten()
    log2_exact = torch.ceil(torch.log2(descale)).double() + 127 == _ue8m0_definition(descale).double()
    assert torch.equal(ours[log2_exact], theirs[log2_exact])
    assert (ours[~log2_exact].int() - theirs[~log2_exact].int() == 1).all()


def test_mx_block_scale_modes_on_chosen_amax():
    # amax = 3 * 2**10 (e4m3: p = 8): floor 2**(11 - 8), ceil 2**(12 - 8), even keeps 1.5 (it has
    # 3 mantissa bits) -> 2**(11 - 8), rceil: 3072 / 448 = 6.86 -> 8 = 2**3.
    amax = torch.tensor([3.0 * 2**10, 0.0, float("inf"), float("nan")])
    got = {m: mx.mx_block_scale(amax, torch.float8_e4m3fn, m).tolist() for m in MODES}
    assert got["floor"] == [127 + 3, 0, 247, 255]
    assert got["ceil"] == [127 + 4, 0, 247, 255]
    assert got["even"] == [127 + 3, 0, 247, 255]
    assert got["rceil"] == [127 + 3, 0, 254, 255]
    # even rounds the mantissa to the element's bits, half-way away from zero: at 3 bits 1.875
    # stays, 1.9375 (the half-way point) and above go to 2; at 1 bit (e2m1) 1.5 stays, 1.75 goes.
    amax = torch.tensor([1.875, 1.9375, 1.9374999]) * 2**10  # exponent field 137
    assert mx.mx_block_scale(amax, torch.float8_e4m3fn, "even").tolist() == [129, 130, 129]
    amax = torch.tensor([1.5, 1.75, 1.7499999])  # exponent field 127, e2m1: p = 2
    assert mx.mx_block_scale(amax, "e2m1", "even").tolist() == [125, 126, 125]


def test_mx_accepts_torchao_enum_and_3d_input():
    mode_enum = _torchao()[4]
    x = _mx_input(torch.bfloat16, rows=6, hidden=96).reshape(2, 3, 96)
    q, scales = mx.mxfp8_quantize(x, mode_enum.RCEIL)
    q2, scales2 = mx.mxfp8_quantize(x.reshape(6, 96), "rceil")
    assert q.shape == (2, 3, 96) and scales.shape == (2, 3, 3)
    assert torch.equal(_u8(q).reshape(6, 96), _u8(q2)) and torch.equal(_u8(scales).reshape(6, 3), _u8(scales2))


def test_mx_round_trips_representable_values():
    # Blocks of e2m1 grid values times 2**k with amax 6 * 2**k: floor, even and rceil pick 2**k
    # (ceil picks 2**(k + 1): 6 is not a power of two), so the codes come back exactly.
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
    codes[:, ::32] = 7
    k = torch.arange(-6, 10, 2).float()[:, None]
    x = mx.e2m1_to_f32(codes) * torch.exp2(k)
    for mode in ("floor", "even", "rceil"):
        q, scales = mx.mxfp4_quantize(x, mode)
        assert torch.equal(mx.unpack_fp4(q), codes)
        assert torch.equal(mx.mxfp4_dequantize(q, scales), x)
    q8, s8 = mx.mxfp8_quantize(x, "rceil")
    assert torch.equal(mx.mxfp8_dequantize(q8, s8), x)


def test_float4_e2m1fn_x2_output():
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    x = _mx_input(torch.float32, rows=4, hidden=64)
    q, _ = mx.mxfp4_quantize(x, "floor", fp4_dtype=torch.float4_e2m1fn_x2)
    assert q.dtype == torch.float4_e2m1fn_x2 and q.shape == (4, 32)
    assert torch.equal(q.view(torch.uint8), mx.mxfp4_quantize(x, "floor")[0])
    g = torch.tensor([1.0], dtype=torch.float32)
    qn, _ = mx.nvfp4_quantize(x, g, "divisor", fp4_dtype=torch.float4_e2m1fn_x2)
    assert qn.dtype == torch.float4_e2m1fn_x2


# --- NVFP4 -------------------------------------------------------------------------------------


def _nvfp4_rows(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 128, generator=g) * 10.0 ** torch.empty(40, 1).uniform_(-3, 3, generator=g)
    x[0] = 0.0
    x[1, :16] = 0.0  # one all-zero block
    x[2] *= 1e-6  # blocks whose scale clamps at 2**-6 (divisor convention)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_divisor_matches_torchao(dtype):
    _, _, nvfp4_tensor, _, _ = _torchao()
    x = _nvfp4_rows(dtype)
    x_ao = x if dtype != torch.float16 else x.float()
    amax = x.float().abs().amax()
    per_tensor = nvfp4_tensor.per_tensor_amax_to_scale(amax)
    assert torch.equal(mx.nvfp4_global_scale(amax, "divisor"), per_tensor)
    for p_ours, p_ao in ((per_tensor, per_tensor), (torch.tensor(1.0), None), (torch.tensor(0.3), torch.tensor(0.3))):
        q, scales = mx.nvfp4_quantize(x, p_ours, "divisor")
        ao_scales, ao_q = nvfp4_tensor.nvfp4_quantize(x_ao, 16, p_ao)
        assert scales.dtype == torch.float8_e4m3fn and scales.shape == (40, 8)
        assert torch.equal(_u8(scales), _u8(ao_scales))
        assert torch.equal(q, ao_q)
    # an all-zero block gets the smallest normal e4m3 scale and zero codes
    q, scales = mx.nvfp4_quantize(x, per_tensor, "divisor")
    assert scales[1, 0].float() == 2.0**-6 and (q[1, :8] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_divisor_edge_rows_match_torchao(dtype):
    _, _, nvfp4_tensor, _, _ = _torchao()
    x = edge_rows(dtype)
    finite_amax = x.float().abs().nan_to_num(0.0, posinf=0.0).amax()
    p = nvfp4_tensor.per_tensor_amax_to_scale(finite_amax)
    q, scales = mx.nvfp4_quantize(x, p, "divisor")
    ao_scales, ao_q = nvfp4_tensor.nvfp4_quantize(x, 16, p)
    assert torch.equal(_u8(scales), _u8(ao_scales))
    keep = ~_nan_blocks(x, 16).repeat_interleave(8, dim=1)
    assert torch.equal(q[keep], ao_q[keep])
    assert torch.isnan(scales[9, 0].float()) and scales[7, 0].float() == 448.0


def test_nvfp4_multiplier_convention():
    """vLLM / FlashInfer: ``global_scale = 448 * 6 / amax`` multiplies. With a power-of-two global
    scale the two conventions differ only where ``amax / 6`` and ``amax * fp32(1 / 6)`` round to
    different e4m3 scales; wherever the scales agree the codes agree bit for bit."""
    x = _nvfp4_rows(torch.bfloat16)[3:]  # no zero or clamped blocks
    g = torch.tensor(2.0**9)
    q_m, s_m = mx.nvfp4_quantize(x, g, "multiplier")
    q_d, s_d = mx.nvfp4_quantize(x, 1.0 / g, "divisor")
    same = _u8(s_m) == _u8(s_d)
    assert same.float().mean() > 0.99
    assert ((_u8(s_m).int() - _u8(s_d).int()).abs()[~same] == 1).all()  # one e4m3 step apart
    codes_m, codes_d = mx.unpack_fp4(q_m), mx.unpack_fp4(q_d)
    keep = same.repeat_interleave(16, dim=1)
    assert torch.equal(codes_m[keep], codes_d[keep])
    # the scale is e4m3(global_scale * amax * fp32(1/6)), dequantized by dividing by global_scale
    amax = x.float().reshape(-1, 8, 16).abs().amax(-1)
    inv6 = torch.tensor(1 / 6, dtype=torch.float32)
    assert torch.equal(_u8(s_m), _u8((g * (amax * inv6)).to(torch.float8_e4m3fn)))
    # an amax where amax * fp32(1/6) and amax / 6 round to different e4m3 scales: vLLM multiplies
    a = torch.tensor([1.7812498807907104])
    z = torch.zeros(1, 16)
    z[0, 3] = a
    s_z = _u8(mx.nvfp4_quantize(z, torch.tensor(1.0), "multiplier")[1]).item()
    e4m3 = torch.float8_e4m3fn
    assert s_z == _u8((a * inv6).to(e4m3)).item() != _u8((a / 6).to(e4m3)).item()
    # a global scale from the tensor's amax (vLLM's): the largest block gets scale 448; blocks
    # with a normal e4m3 scale dequantize (q * s / g) within 1.4 * s / g (the e2m1 half-step, 1,
    # plus the saturation the scale's rounding allows); an all-zero block: scale 0, codes 0
    y = x.clone()
    y[0, :16] = 0
    gs = mx.nvfp4_global_scale(y.float().abs().amax(), "multiplier")
    assert torch.equal(gs, torch.tensor(2688.0) / y.float().abs().amax())
    q, s = mx.nvfp4_quantize(y, gs, "multiplier")
    assert s[0, 0].float() == 0 and (q[0, :8] == 0).all() and s.float().max() == 448.0
    deq = mx.nvfp4_dequantize(q, s, gs, "multiplier")
    step = (s.float() / gs).repeat_interleave(16, dim=1)
    normal = (s.float() >= 2.0**-6).repeat_interleave(16, dim=1)
    assert normal.float().mean() > 0.5
    assert ((deq - y.float()).abs()[normal] <= 1.4 * step[normal]).all()


# --- scale layouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (128, 4), (130, 9), (300, 64)])
def test_swizzle_matches_torchao_and_round_trips(shape):
    utils = _torchao()[3]
    g = torch.Generator().manual_seed(3)
    plain = torch.randint(1, 256, shape, generator=g, dtype=torch.uint8)  # no zero: padding shows
    sw = mx.swizzle_scales_128x4(plain.view(torch.float8_e8m0fnu))
    rows, cols = shape
    rt, ct = -(-rows // 128), -(-cols // 4)
    assert sw.dtype == torch.float8_e8m0fnu and sw.shape == (32 * rt, 16 * ct) and sw.is_contiguous()
    flat = _u8(sw).flatten()
    assert torch.equal(flat, utils.to_blocked(plain))
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    offset = 512 * ((r // 128) * ct + c // 4) + 16 * (r % 32) + 4 * ((r % 128) // 32) + c % 4
    assert torch.equal(flat[offset], plain)  # the docstring's byte offset
    assert (flat == 0).sum() == flat.numel() - rows * cols  # everything else is zero padding
    assert torch.equal(_u8(mx.unswizzle_scales_128x4(sw, rows, cols)), plain)


def test_quantizers_swizzled_scales_match_torchao():
    _, mx_tensor, nvfp4_tensor, _, mode_enum = _torchao()
    x = _mx_input(torch.bfloat16, rows=200, hidden=160)
    q, sw = mx.mxfp8_quantize(x, "rceil", scale_layout="swizzled")
    ao_scales, ao_q = mx_tensor.to_mx(x, torch.float8_e4m3fn, 32, mode_enum.RCEIL, is_swizzled_scales=True)
    assert torch.equal(_u8(sw).flatten(), _u8(ao_scales).flatten()) and torch.equal(_u8(q), _u8(ao_q))
    plain = mx.mxfp8_quantize(x, "rceil")[1]
    assert torch.equal(_u8(mx.unswizzle_scales_128x4(sw, 200, 5)), _u8(plain))
    q4, sw4 = mx.mxfp4_quantize(x, "floor", scale_layout="swizzled")
    ao4 = mx_tensor.to_mx(x, torch.float4_e2m1fn_x2, 32, mode_enum.FLOOR, is_swizzled_scales=True)[0]
    assert torch.equal(_u8(sw4).flatten(), _u8(ao4).flatten())
    p = torch.tensor(0.05)
    qn, swn = mx.nvfp4_quantize(x, p, "divisor", scale_layout="swizzled")
    ao = nvfp4_tensor.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=p, is_swizzled_scales=True)
    assert swn.dtype == torch.float8_e4m3fn and swn.shape == ao.scale.shape
    assert torch.equal(_u8(swn).flatten(), _u8(ao.scale).flatten()) and torch.equal(qn, _u8(ao.qdata))


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (8, 4), (130, 56), (3, 6, 9)])
def test_deepgemm_packed_ue8m0_layout(shape):
    if sys.byteorder != "little":
        pytest.skip("the byte offsets below are those of a little-endian int32")
    g = torch.Generator().manual_seed(4)
    byte = torch.randint(1, 255, shape, generator=g, dtype=torch.uint8)
    packed = mx.deepgemm_pack_ue8m0_scales(byte.view(torch.float8_e8m0fnu))
    *batch, mn, groups = shape
    g4, mna = -(-groups // 4), -(-mn // 4) * 4
    assert packed.dtype == torch.int32 and packed.shape == (*batch, mn, g4)
    assert packed.stride() == ((g4 * mna, 1, mna) if batch else (1, mna))
    memory = _storage_bytes(packed)
    assert memory.numel() == (batch[0] if batch else 1) * g4 * mna * 4
    b3 = byte.reshape(-1, mn, groups)
    for b in range(b3.shape[0]):
        for m in range(mn):
            for k in range(groups):
                assert memory[b * g4 * mna * 4 + 4 * ((k // 4) * mna + m) + k % 4] == b3[b, m, k]
    assert (memory == 0).sum() == memory.numel() - byte.numel()  # padding groups and rows are 0
    assert torch.equal(mx.deepgemm_unpack_ue8m0_scales(packed, groups), byte)


def test_deepgemm_layout_of_per_token_group_scales():
    """The per-token-group-128 FP8 quant with UE8M0 scales feeds the packed layout directly."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 128 * 9, generator=g, dtype=torch.float32).to(torch.bfloat16)
    _, scales = reference.per_token_group_fp8_quant(x, 128, False, True, torch.float8_e4m3fn)
    packed = mx.deepgemm_pack_ue8m0_scales(scales)
    exponent = torch.log2(scales).round().to(torch.int64) + 127
    assert torch.equal(mx.deepgemm_unpack_ue8m0_scales(packed, 9).to(torch.int64), exponent)
    assert torch.equal(packed, mx.deepgemm_pack_ue8m0_scales(exponent.to(torch.uint8)))
    with pytest.raises(ValueError, match="powers of two"):
        mx.deepgemm_pack_ue8m0_scales(scales * 1.5)


# --- fused references --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_forms_compose_the_hf_rounded_norm(dtype):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 256, generator=g).to(dtype)
    res = torch.randn(7, 256, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(256, generator=g)).to(dtype)
    eps = 1e-6
    y = reference.rms_norm(x, w, eps)
    y_add, res_out = reference.fused_add_rms_norm(x, res, w, eps)
    gs = torch.tensor(0.01)
    cases = [
        (mx.rms_norm_mxfp8_quant(x, w, eps, "rceil"), mx.mxfp8_quantize(y, "rceil")),
        (mx.rms_norm_mxfp4_quant(x, w, eps, "floor"), mx.mxfp4_quantize(y, "floor")),
        (mx.rms_norm_nvfp4_quant(x, w, eps, gs, "divisor"), mx.nvfp4_quantize(y, gs, "divisor")),
    ]
    fused_add = [
        (mx.fused_add_rms_norm_mxfp8_quant(x, res, w, eps, "even"), mx.mxfp8_quantize(y_add, "even")),
        (mx.fused_add_rms_norm_mxfp4_quant(x, res, w, eps, "ceil"), mx.mxfp4_quantize(y_add, "ceil")),
        (
            mx.fused_add_rms_norm_nvfp4_quant(x, res, w, eps, gs, "multiplier"),
            mx.nvfp4_quantize(y_add, gs, "multiplier"),
        ),
    ]
    for got, want in cases:
        assert all(torch.equal(_u8(a), _u8(b)) for a, b in zip(got, want))
    for (q, s, r), want in fused_add:
        assert torch.equal(_u8(q), _u8(want[0])) and torch.equal(_u8(s), _u8(want[1])) and torch.equal(r, res_out)
    if dtype != torch.float32:
        # the quantizers read the norm rounded to the input dtype, not the fp32 normalized value
        unrounded = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps) * w.float()
        fused = _u8(mx.rms_norm_mxfp8_quant(x, w, eps, "rceil")[0])
        assert not torch.equal(fused, _u8(mx.mxfp8_quantize(unrounded, "rceil")[0]))


def test_fused_matches_torchao_on_the_norm_output():
    _, mx_tensor, nvfp4_tensor, _, mode_enum = _torchao()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(9, 512, generator=g).to(torch.bfloat16)
    w = torch.rand(512, generator=g).to(torch.bfloat16)
    y = reference.rms_norm(x, w, 1e-5)
    q, s = mx.rms_norm_mxfp8_quant(x, w, 1e-5, "rceil")
    ao_s, ao_q = mx_tensor.to_mx(y, torch.float8_e4m3fn, 32, mode_enum.RCEIL)
    assert torch.equal(_u8(q), _u8(ao_q)) and torch.equal(_u8(s), _u8(ao_s))
    p = torch.tensor(0.002)
    q4, s4 = mx.rms_norm_nvfp4_quant(x, w, 1e-5, p, "divisor")
    ao_s4, ao_q4 = nvfp4_tensor.nvfp4_quantize(y, 16, p)
    assert torch.equal(q4, ao_q4) and torch.equal(_u8(s4), _u8(ao_s4))


def test_reference_reexports_the_microscaling_names():
    for name in mx.__all__:
        assert getattr(reference, name) is getattr(mx, name)


# --- argument checks ---------------------------------------------------------------------------


def test_bad_arguments_raise_naming_the_argument():
    x = torch.randn(2, 64)
    gs = torch.tensor(1.0)
    cases = [
        (lambda: mx.mxfp8_quantize(torch.randn(2, 48), "floor"), "not divisible by the block size 32"),
        (lambda: mx.nvfp4_quantize(torch.randn(2, 24), gs, "divisor"), "not divisible by the block size 16"),
        (lambda: mx.mxfp8_quantize(x.double(), "floor"), "input must be"),
        (lambda: mx.mxfp8_quantize(torch.tensor(1.0), "floor"), "input must have"),
        (lambda: mx.mxfp8_quantize(x, "round"), "scale_mode"),
        (lambda: mx.mxfp8_quantize(x, "floor", torch.float8_e4m3fnuz), "fp8_dtype"),
        (lambda: mx.mxfp4_quantize(x, "floor", "tiled"), "scale_layout"),
        (lambda: mx.mxfp4_quantize(x, "floor", fp4_dtype=torch.int8), "fp4_dtype"),
        (lambda: mx.nvfp4_quantize(x, gs, "inverse"), "scale_convention"),
        (lambda: mx.nvfp4_quantize(x, gs.double(), "divisor"), "global_scale must be a float32"),
        (lambda: mx.nvfp4_quantize(x, torch.ones(2), "divisor"), "global_scale must hold one"),
        (lambda: mx.f32_to_e2m1(x.half()), "x must be float32"),
        (lambda: mx.mx_block_scale(torch.ones(1), torch.int8, "floor"), "elem_dtype"),
        (lambda: mx.swizzle_scales_128x4(torch.ones(2, 2, 2, dtype=torch.uint8)), "scales must be 2-D"),
        (lambda: mx.swizzle_scales_128x4(torch.ones(2, 2)), "scales must be float8_e8m0fnu"),
        (lambda: mx.unswizzle_scales_128x4(torch.ones(100, dtype=torch.uint8), 5, 5), "swizzled holds"),
        (lambda: mx.deepgemm_pack_ue8m0_scales(torch.ones(4, dtype=torch.uint8)), r"\[MN, G\]"),
        (lambda: mx.mxfp8_dequantize(torch.zeros(2, 64, dtype=torch.float8_e4m3fn), torch.ones(2)), "scales must be"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = _mx_input(torch.bfloat16, rows=64, hidden=512)
    gs = torch.tensor(0.01)
    for mode in MODES:
        for fn in (mx.mxfp8_quantize, mx.mxfp4_quantize):
            cpu = fn(x, mode)
            cuda = fn(x.cuda(), mode)
            assert all(torch.equal(_u8(a), _u8(b).cpu()) for a, b in zip(cpu, cuda))
    for conv in mx.NVFP4_CONVENTIONS:
        cpu = mx.nvfp4_quantize(x, gs, conv, "swizzled")
        cuda = mx.nvfp4_quantize(x.cuda(), gs.cuda(), conv, "swizzled")
        assert all(torch.equal(_u8(a), _u8(b).cpu()) for a, b in zip(cpu, cuda))
    bits = _binade(128).cuda()
    assert torch.equal(mx.f32_to_e2m1(bits).cpu(), mx.f32_to_e2m1(bits.cpu()))
