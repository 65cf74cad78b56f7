# SPDX-License-Identifier: Apache-2.0
"""The per-token-group ops with UE8M0 scales packed for DeepGEMM (``*_per_token_group_quant_packed``).

Their FP8 output is the UE8M0 group op's, bit for bit; their scales are the same scales in the
layout DeepGEMM's sm_100 FP8 GEMMs read (int32 ``[rows, ceil(groups / 4)]``, four exponents per
int32, MN-major, rows padded to 4). The layout is checked three ways: against the reference's
byte-wise packing, against DeepGEMM's own arithmetic re-stated here (an OR of shifted fp32 bit
patterns over the transposed scales), and byte by byte over the whole storage (the padding is 0).
"""

from __future__ import annotations

import pytest
import torch

from fusion_kernels import reference
from fusion_kernels.testing import unpack_ue8m0_scales

ops = torch.ops.fusion_kernels
F8 = torch.float8_e4m3fn
SHAPES = [(1, 128, 128), (3, 256, 128), (5, 640, 128), (7, 96, 32), (4, 192, 64), (9, 7168, 128), (33, 1536, 128)]


def _padded(rows):
    return (rows + 3) // 4 * 4


def _storage(scales: torch.Tensor) -> torch.Tensor:
    """Every int32 of the scales' storage: [padded rows, packed columns] (the padding rows too)."""
    return torch.as_strided(scales, (_padded(scales.shape[0]), scales.shape[1]), (1, _padded(scales.shape[0])))


def _deepgemm_pack(scales: torch.Tensor) -> torch.Tensor:
    """DeepGEMM's transpose-and-pack of fp32 [rows, groups] power-of-two scales, re-stated from its
    definition (returned as [padded rows, k]): int32 [k, m] = bits(s[m, 4k]) >> 23 | bits(s[m, 4k+1]) >> 15 | bits(s[m, 4k+2]) >> 7
    | bits(s[m, 4k+3]) << 1 (missing groups 0), stored at k * padded + m."""
    rows, groups = scales.shape
    bits = scales.contiguous().view(torch.int32).to(torch.int64)
    packed_k = (groups + 3) // 4
    out = torch.zeros((packed_k, _padded(rows)), dtype=torch.int64)
    shifts = (lambda v: v >> 23, lambda v: v >> 15, lambda v: v >> 7, lambda v: v << 1)
    for k in range(packed_k):
        for j in range(4):
            if 4 * k + j < groups:
                out[k, :rows] |= shifts[j](bits[:, 4 * k + j]) & (0xFF << (8 * j))
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32).t()  # the int32 bit patterns, [m, k]


def _inputs(rows, hidden, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, hidden, generator=g) * torch.logspace(-3, 3, rows).unsqueeze(1)).to(dtype)
    r = torch.randn(rows, hidden, generator=g).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype)
    return x, r, w


@pytest.mark.parametrize("rows, hidden, group", SHAPES)
def test_packed_is_the_ue8m0_group_op_in_deepgemms_layout(rows, hidden, group):
    x, r, w = _inputs(rows, hidden)
    q, packed = ops.per_token_group_fp8_quant_packed(x, group, F8)
    q0, s0 = ops.per_token_group_fp8_quant(x, group, False, True, F8)
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
    packed_k = (hidden // group + 3) // 4
    assert packed.dtype == torch.int32 and packed.shape == (rows, packed_k)
    assert packed.stride() == (1, _padded(rows)), "MN-major, 16-byte aligned columns"
    assert torch.equal(packed, reference.deepgemm_pack_ue8m0_scales(s0))
    assert torch.equal(_storage(packed), _deepgemm_pack(s0)), "DeepGEMM's packing of the same scales"
    assert torch.equal(unpack_ue8m0_scales(packed, hidden // group), s0)


@pytest.mark.parametrize("rows, hidden, group", SHAPES[:5])
def test_fused_forms_equal_norm_then_packed_quant(rows, hidden, group):
    x, r, w = _inputs(rows, hidden, seed=1)
    q, packed = ops.rms_norm_per_token_group_quant_packed(x, w, 1e-6, group, F8)
    eq, ep = ops.per_token_group_fp8_quant_packed(ops.rms_norm(x, w, 1e-6), group, F8)
    assert torch.equal(q.view(torch.uint8), eq.view(torch.uint8)) and torch.equal(_storage(packed), _storage(ep))
    q, packed, res = ops.fused_add_rms_norm_per_token_group_quant_packed(x, r, w, 1e-6, group, F8)
    y, eres = ops.fused_add_rms_norm(x, r, w, 1e-6)
    eq, ep = ops.per_token_group_fp8_quant_packed(y, group, F8)
    assert torch.equal(res, eres)
    assert torch.equal(q.view(torch.uint8), eq.view(torch.uint8)) and torch.equal(_storage(packed), _storage(ep))


def test_padding_bytes_are_zero_and_special_scales():
    # 6 rows (2 padding rows), 5 groups (3 unused bytes in the second int32); row 1 all zero
    # (the floor: 1e-10 / 448 rounds up to 2^-42), row 2 holds inf, row 3 a NaN.
    x = torch.randn(6, 5 * 128, dtype=torch.bfloat16)
    x[1] = 0
    x[2, 130] = float("inf")
    x[3, 300] = float("nan")
    _, packed = ops.per_token_group_fp8_quant_packed(x, 128, F8)
    full = _storage(packed)
    assert torch.equal(full[6:], torch.zeros_like(full[6:]))
    assert bool(((full[:, 1] >> 8) == 0).all()), "bytes of the groups past the last are 0"
    byte = lambda row, grp: int((packed[row, grp // 4] >> (8 * (grp % 4))) & 0xFF)  # noqa: E731
    assert all(byte(1, grp) == 127 - 42 for grp in range(5))
    assert byte(2, 1) == 0xFF and byte(3, 2) == 0xFF, "an infinite or NaN scale is the UE8M0 NaN"


def test_leading_dims_flatten_into_the_scale_rows():
    x, r, w = _inputs(6, 256)
    q, packed = ops.rms_norm_per_token_group_quant_packed(x.view(2, 3, 256), w, 1e-6, 128, F8)
    q2, packed2 = ops.rms_norm_per_token_group_quant_packed(x, w, 1e-6, 128, F8)
    assert q.shape == (2, 3, 256) and packed.shape == (6, 1)
    assert torch.equal(q.view(6, 256).view(torch.uint8), q2.view(torch.uint8)) and torch.equal(packed, packed2)


def test_under_torch_compile_the_fake_matches_the_kernel(fresh_dynamo):
    x, r, w = _inputs(5, 384)

    def fn(x, r, w):
        q, s, res = ops.fused_add_rms_norm_per_token_group_quant_packed(x, r, w, 1e-6, 128, F8)
        return q, s, res

    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, r, w)
    exp = fn(x, r, w)
    for a, b in zip(got, exp):
        assert a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
        assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a, b.view(torch.uint8) if b.element_size() == 1 else b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows, hidden, group", SHAPES + [(0, 256, 128), (1000, 4096, 128), (130, 7168, 128)])
def test_cuda_packed_ops_are_the_cuda_ue8m0_group_ops_in_deepgemms_layout(rows, hidden, group):
    """On CUDA, each packed op's q is its UE8M0 group op's, byte for byte, and every int32 of its
    scales' storage (the padding too) is DeepGEMM's packing of that op's scales. The quantizer
    alone also equals the CPU op byte for byte (an absmax does not depend on the reduction
    order); the normalizing ops reduce the row in another order than the CPU kernels, so against
    the CPU they agree within test_numerics' tolerance (checked there against the reference)."""
    x, r, w = _inputs(rows, hidden, seed=2)
    junk = torch.full((64 * 2**20,), 255, dtype=torch.uint8, device="cuda")
    del junk  # the caching allocator hands these bytes to the next allocations: all must be written
    xc, rc, wc = x.cuda(), r.cuda(), w.cuda()
    for name, packed_args, ue8m0_name, ue8m0_args in (
        ("per_token_group_fp8_quant_packed", (xc, group, F8), "per_token_group_fp8_quant", (xc, group, False, True, F8)),
        (
            "rms_norm_per_token_group_quant_packed",
            (xc, wc, 1e-6, group, F8),
            "rms_norm_per_token_group_quant",
            (xc, wc, 1e-6, group, False, True, F8),
        ),
        (
            "fused_add_rms_norm_per_token_group_quant_packed",
            (xc, rc, wc, 1e-6, group, F8),
            "fused_add_rms_norm_per_token_group_quant",
            (xc, rc, wc, 1e-6, group, False, True, F8),
        ),
    ):
        got = getattr(ops, name)(*packed_args)
        exp = getattr(ops, ue8m0_name)(*ue8m0_args)
        torch.cuda.synchronize()
        assert got[1].stride() == (1, _padded(rows)) or rows == 0, name
        assert torch.equal(got[0].view(torch.uint8), exp[0].view(torch.uint8)), f"{name}: q"
        if rows:
            assert torch.equal(_storage(got[1]).cpu(), _deepgemm_pack(exp[1].cpu())), f"{name}: packed scales (padding included)"
        if len(got) == 3:
            assert torch.equal(got[2], exp[2]), f"{name}: residual_out"
    cpu = ops.per_token_group_fp8_quant_packed(x, group, F8)
    gpu = ops.per_token_group_fp8_quant_packed(xc, group, F8)
    assert gpu[1].stride() == cpu[1].stride()  # (0 rows included)
    assert torch.equal(gpu[0].cpu().view(torch.uint8), cpu[0].view(torch.uint8))
    if rows:
        assert torch.equal(_storage(gpu[1]).cpu(), _storage(cpu[1]))
    # The new residual is one rounding of x + residual on both devices: equal.
    res_cpu = ops.fused_add_rms_norm_per_token_group_quant_packed(x, r, w, 1e-6, group, F8)[2]
    res_gpu = ops.fused_add_rms_norm_per_token_group_quant_packed(xc, rc, wc, 1e-6, group, F8)[2]
    assert torch.equal(res_gpu.cpu(), res_cpu)
