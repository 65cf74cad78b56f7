# SPDX-License-Identifier: Apache-2.0
"""Every op against its pure-torch reference (fusion_kernels.reference), on every device present.

Tolerances: outputs in the input dtype within one rounding of that dtype; quantized outputs
within one quantization step of the reference, on at most 1% of the elements (the kernels reduce
the row in a different order than torch, so the normalized value can differ by one rounding and
land on the other side of a quantization boundary); scales within SCALE_RTOL (one rounding of
the input dtype, relative).
"""

import itertools

import pytest
import torch

from fusion_kernels import OP_NAMES, reference
from fusion_kernels.fake import RULE_OP_NAMES
from fusion_kernels.testing import assert_outputs_match, make_args, quant_steps, reference_of, to_cpu

ops = torch.ops.fusion_kernels

TOKENS = [(0,), (1,), (7,), (257,), (3, 5)]
HIDDEN = [1, 64, 1025, 5128]
GROUP_HIDDEN = [128, 384, 7168]
DTYPES = [
    (torch.float32, None),
    (torch.float16, None),
    (torch.bfloat16, None),
    (torch.bfloat16, torch.float32),  # fp32 weight with a bf16 model
]
GROUP_OPS = [n for n in OP_NAMES if "group" in n]
PLAIN_OPS = [n for n in OP_NAMES if "group" not in n]


def dtype_id(p):
    dtype, wdtype = p
    return str(dtype).split(".")[-1] + ("-w32" if wdtype is not None else "")


def quant_dtypes_for(op_name):
    if "int8" in op_name:
        return [torch.int8]
    if "dynamic_per_token_quant" in op_name or op_name in RULE_OP_NAMES:  # FP8 and INT8
        return [torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8]
    if "quant" in op_name:
        return [torch.float8_e4m3fn, torch.float8_e4m3fnuz]
    return [torch.float8_e4m3fn]


def run_and_compare(op_name, device, tokens, hidden, dtype, wdtype, **kw):
    args = make_args(op_name, tokens, hidden, dtype, device, weight_dtype=wdtype, **kw)
    out = getattr(ops, op_name)(*args)
    cpu_args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    expected = reference_of(op_name)(*cpu_args)
    out = to_cpu(out)
    assert_outputs_match(op_name, out, expected, dtype, group_size=kw.get("group_size") or 128)


def op_dtype_cases(op_names):
    # An fp32 weight only exists for ops with a norm.
    return [
        pytest.param(op, dt, id=f"{op}-{dtype_id(dt)}")
        for op in op_names
        for dt in DTYPES
        if dt[1] is None or "rms_norm" in op
    ]


@pytest.mark.parametrize("op_name, dt", op_dtype_cases(PLAIN_OPS))
def test_op_matches_reference(op_name, dt, device):
    dtype, wdtype = dt
    for qdtype in quant_dtypes_for(op_name):
        for tokens, hidden in itertools.product(TOKENS, HIDDEN):
            run_and_compare(op_name, device, tokens, hidden, dtype, wdtype, quant_dtype=qdtype)


@pytest.mark.parametrize("op_name, dt", op_dtype_cases(GROUP_OPS))
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_group_op_matches_reference(op_name, dt, group_size, device):
    dtype, wdtype = dt
    for qdtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        for tokens, hidden in itertools.product(TOKENS, GROUP_HIDDEN):
            if hidden % group_size:
                continue
            run_and_compare(op_name, device, tokens, hidden, dtype, wdtype, quant_dtype=qdtype, group_size=group_size)


@pytest.mark.parametrize("op_name", [n for n in GROUP_OPS if not n.endswith("_packed")])
@pytest.mark.parametrize("column_major, ue8m0, tma", [(True, False, False), (False, True, False), (True, True, False),
                                                      (True, False, True), (True, True, True)])  # fmt: skip
def test_group_scale_layouts_element_by_element(op_name, column_major, ue8m0, tma, device):
    for tokens in [(1,), (7,), (33,)]:
        args = make_args(op_name, tokens, 512, torch.bfloat16, device, group_size=128,
                         column_major_scales=column_major, scale_ue8m0=ue8m0, tma_aligned_scales=tma)  # fmt: skip
        q, scales = getattr(ops, op_name)(*args)[:2]
        ref_q, ref_scales = reference_of(op_name)(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))[:2]
        assert scales.shape == (tokens[0], 4)
        if tma:  # DeepGEMM's sm_90 layout: the columns padded to 4 rows, the padding written 0
            padded = (tokens[0] + 3) // 4 * 4
            assert scales.stride() == (1, padded)
            storage = torch.as_strided(scales, (padded, 4), (1, padded)).cpu()
            assert not bool(storage[tokens[0]:].any()), "the padding rows must hold 0"
        elif column_major:
            assert scales.stride() == (1, tokens[0]), "scales must be the transpose of a contiguous [groups, tokens]"
            assert scales.t().is_contiguous()
        else:
            assert scales.is_contiguous()
        assert scales.stride() == ref_scales.stride()
        s = scales.cpu()
        if ue8m0:
            mantissa, _ = torch.frexp(s)
            assert bool((mantissa == 0.5).all()), "UE8M0 scales must be powers of two"
        for t in range(tokens[0]):
            for grp in range(4):
                torch.testing.assert_close(s[t, grp], ref_scales[t, grp], rtol=1e-2, atol=0)
        assert int(quant_steps(q.cpu(), ref_q).max()) <= 1


def test_ue8m0_is_exact_at_powers_of_two():
    s = torch.tensor([0.25, 0.25000003, 0.49999997, 1.0, 3.0, 2.0**-20 * 1.0000001], dtype=torch.float32)
    expected = torch.tensor([0.25, 0.5, 0.5, 1.0, 4.0, 2.0**-19])
    torch.testing.assert_close(reference.ue8m0_ceil(s), expected, rtol=0, atol=0)


@pytest.mark.parametrize("op_name", [n for n in OP_NAMES if "rms_norm" in n or "quant" in n])
def test_strided_rows_and_non_collapsible_leading_dims(op_name, device):
    kw = {"group_size": 64} if "group" in op_name else {}
    # Row-strided input (a slice of wider rows), and a [3, 5, H] view whose leading dims were
    # transposed (cannot be flattened into one stride: the op copies).
    run_and_compare(op_name, device, (9,), 256, torch.bfloat16, None, row_padding=8, **kw)
    args = make_args(op_name, (5, 3), 256, torch.float16, device, **kw)
    args = tuple(a.transpose(0, 1) if isinstance(a, torch.Tensor) and a.dim() == 3 else a for a in args)
    out = getattr(ops, op_name)(*args)
    expected = reference_of(op_name)(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    out = to_cpu(out)
    assert_outputs_match(op_name, out, expected, torch.float16, group_size=kw.get("group_size", 128))


def test_per_token_scale_ub_and_all_zero_rows(device):
    x = torch.zeros(4, 256, dtype=torch.bfloat16, device=device)
    x[1] = 100.0
    w = torch.ones(256, dtype=torch.bfloat16, device=device)
    ub = torch.tensor(2.0, device=device)
    q, s = ops.rms_norm_dynamic_per_token_quant(x, w, 1e-6, torch.float8_e4m3fn, ub)
    min_scale = reference.per_token_min_scale(torch.float8_e4m3fn)
    assert s[0].item() == pytest.approx(min_scale) and torch.isfinite(s).all()
    assert (q[0].float() == 0).all()
    # Row 1 normalizes to 1.0 everywhere; amax=1 < ub, so scale = 1/448.
    assert s[1].item() == pytest.approx(1 / 448)
    q2, s2 = ops.dynamic_per_token_scaled_fp8_quant(x, ub, torch.float8_e4m3fn)
    assert s2[1].item() == pytest.approx(2.0 / 448), "the absmax is clamped to scale_ub"
    assert (q2[1].float() == 448).all(), "values above the clamped absmax saturate"


def test_fused_equals_unfused_bit_for_bit(device):
    """The fused ops compute exactly the composition of the unfused ones (same device), with few
    rows and with enough rows for the CUDA kernels' throughput variant (2048 x 4096)."""
    g = torch.Generator().manual_seed(1)
    for dtype, hidden, rows in [(torch.bfloat16, 4096, 37), (torch.bfloat16, 4096, 2048),
                                (torch.float16, 1025, 37), (torch.float32, 384, 37)]:  # fmt: skip
        x = torch.randn(rows, hidden, generator=g).to(dtype).to(device)
        r = torch.randn(rows, hidden, generator=g).to(dtype).to(device)
        w = torch.randn(hidden, generator=g).to(dtype).to(device)
        s = torch.tensor(0.02, device=device)
        y = ops.rms_norm(x, w, 1e-5)
        y2, r2 = ops.fused_add_rms_norm(x, r, w, 1e-5)
        fp8 = torch.float8_e4m3fn

        def same(a, b):
            assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                               b.view(torch.uint8) if b.element_size() == 1 else b)  # fmt: skip

        same(ops.rms_norm_static_fp8_quant(x, w, s, 1e-5, fp8), ops.static_scaled_fp8_quant(y, s, fp8))
        q, rr = ops.fused_add_rms_norm_static_fp8_quant(x, r, w, s, 1e-5, fp8)
        same(q, ops.static_scaled_fp8_quant(y2, s, fp8))
        same(rr, r2)
        for a, b in zip(ops.rms_norm_dynamic_per_token_quant(x, w, 1e-5, fp8, None),
                        ops.dynamic_per_token_scaled_fp8_quant(y, None, fp8)):  # fmt: skip
            same(a, b)
        for a, b in zip(ops.rms_norm_dynamic_per_token_quant(x, w, 1e-5, torch.int8, None),
                        ops.dynamic_scaled_int8_quant(y)):  # fmt: skip
            same(a, b)
        got = ops.fused_add_rms_norm_dynamic_per_token_quant(x, r, w, 1e-5, fp8, None)
        for a, b in zip(got, (*ops.dynamic_per_token_scaled_fp8_quant(y2, None, fp8), r2)):
            same(a, b)
        same(ops.rms_norm_static_int8_quant(x, w, s, 1e-5), ops.static_scaled_int8_quant(y, s))
        if hidden % 128 == 0:
            got = ops.fused_add_rms_norm_per_token_group_quant(x, r, w, 1e-5, 128, True, True, fp8)
            exp = ops.per_token_group_fp8_quant(y2, 128, True, True, fp8)
            same(got[0], exp[0])
            same(got[1], exp[1])
            assert got[1].stride() == exp[1].stride()
            same(got[2], r2)
            for group in (64, 128):
                got = ops.rms_norm_per_token_group_quant(x, w, 1e-5, group, False, False, fp8)
                exp = ops.per_token_group_fp8_quant(y, group, False, False, fp8)
                same(got[0], exp[0])
                same(got[1], exp[1])


def test_comparison_of_groups_whose_ue8m0_scale_flipped():
    """A group whose absmax / qmax sits at a power of two may round its UE8M0 scale up one binade
    in one implementation and not in the other (both within the scale tolerance): its q values
    are then a binade (8 FP8 steps) apart and are compared dequantized. A q that does not follow
    its scale, or a flip where the group is not at the boundary, is still caught."""
    from fusion_kernels.testing import assert_outputs_match

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, generator=g).to(torch.bfloat16)
    x[1, :128] = x[1, :128].clamp(-50, 50)
    x[1, 7] = 56.0  # absmax 56 = 448 / 8: scale exactly 2^-3
    name = "per_token_group_fp8_quant"
    args = (x, 128, False, True, torch.float8_e4m3fn)
    q, s = reference_of(name)(*args)
    assert s[1, 0] == 0.125
    flipped_s = s.clone()
    flipped_s[1, 0] = 0.25  # an absmax a hair above 56 elsewhere: one binade up
    flipped_q = q.clone()
    flipped_q[1, :128] = (x[1, :128].float() / 0.25).to(torch.float8_e4m3fn)
    assert_outputs_match(name, (flipped_q, flipped_s), (q, s), torch.bfloat16)
    with pytest.raises(AssertionError, match="dequantized"):  # the scale flipped, q did not follow
        assert_outputs_match(name, (q.clone(), flipped_s), (q, s), torch.bfloat16)
    off_boundary_s = s.clone()
    off_boundary_s[2, 1] *= 2  # a group far from the boundary: not a rounding flip
    off_boundary_q = q.clone()
    off_boundary_q[2, 128:] = (x[2, 128:].float() / off_boundary_s[2, 1]).to(torch.float8_e4m3fn)
    with pytest.raises(AssertionError, match="scales"):
        assert_outputs_match(name, (off_boundary_q, off_boundary_s), (q, s), torch.bfloat16)


def test_int8_tolerance_of_a_normalized_row():
    """The kernel's rsqrt may differ from torch's in the last fp32 bit (another reduction order):
    a product at a bf16 tie then rounds the other way, and the weight carries that unit over a
    second rounding: the normalized value moves two bf16 units (ACT_TOL). Near |q| = 127 the INT8
    grid is finer than bf16's, so q moves two steps: accepted for a normalizing op (the case a
    GPU stress run found: row value 2^-10, rsqrt 70.25, weight -0.51953125, scale 0.01 * 4 / 127),
    never for a plain quant op, never three steps, never two where the grid is coarse."""
    bf16 = torch.bfloat16
    r, w = torch.tensor(2.0**-10, dtype=bf16), torch.tensor(-0.51953125, dtype=bf16)
    inv = torch.tensor(70.25)
    inv_up = torch.nextafter(inv, torch.tensor(float("inf")))
    scale = torch.tensor(0.01 * 4.0 / 127.0)

    def q_of(rsqrt):  # the spec's rounding points (fusion_kernels.reference)
        y = ((r.float() * rsqrt).to(bf16).float() * w.float()).to(bf16)
        return reference_of("static_scaled_int8_quant")(y.reshape(1, 1), scale)

    q_ref, q_alt = q_of(inv), q_of(inv_up)
    assert int(quant_steps(q_alt, q_ref).max()) == 2
    name = "fused_add_rms_norm_static_int8_quant"
    many = torch.full((64, 64), int(q_ref), dtype=torch.int8)  # one element off among many
    res = torch.zeros(64, 64, dtype=bf16)
    actual = many.clone()
    actual[3, 5] = q_alt.reshape(())
    assert_outputs_match(name, (actual, res), (many, res), bf16)
    actual[3, 5] = int(q_ref) - 3 if int(q_alt) < int(q_ref) else int(q_ref) + 3
    with pytest.raises(AssertionError, match="3 quantization steps"):
        assert_outputs_match(name, (actual, res), (many, res), bf16)
    actual[3, 5] = q_alt.reshape(())
    with pytest.raises(AssertionError, match="2 quantization steps"):
        assert_outputs_match("static_scaled_int8_quant", actual, many, bf16)
    coarse = torch.full((64, 64), 40, dtype=torch.int8)
    actual = coarse.clone()
    actual[3, 5] = 42
    with pytest.raises(AssertionError, match="2 quantization steps"):
        assert_outputs_match(name, (actual, res), (coarse, res), bf16)
