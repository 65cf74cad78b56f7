# SPDX-License-Identifier: Apache-2.0
"""The rule ops (``dynamic_quant``, ``rms_norm_dynamic_quant``, ``fused_add_rms_norm_dynamic_quant``):
dynamic quantization whose scale rule is given by parameters (fusion_kernels.reference.dynamic_scale).

On every device present: numerics against the reference (ordinary rows and all-zero, outlier,
NaN and Inf rows, odd H, 0 rows, strided rows, fp32/fp16/bf16), the existing per-token and group
ops as special cases bit for bit, fused == unfused bit for bit, argument errors naming the
argument (eagerly and at trace time), opcheck and torch.compile. On CUDA also: model sizes,
batch invariance of the group variants, and the scale arithmetic (runtime divisor, rounding to
the scale dtype, reciprocals of scales outside the normal range) for every 16-bit absmax.
The quantizers the presets below stand for are spelled in plain torch in test_rule_spellings.
"""

import itertools
import math
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fusion_kernels import reference
from fusion_kernels.fake import RULE_OP_NAMES
from fusion_kernels.reference import QMAX
from fusion_kernels.testing import assert_outputs_match, make_args, quant_steps, reference_of
from fusion_kernels.testing import scale_rule as rule

ops = torch.ops.fusion_kernels

FP8 = torch.float8_e4m3fn
FNUZ = torch.float8_e4m3fnuz
INT8 = torch.int8
RULE_ARGS = ("divisor", "absmax_floor", "scale_floor", "zero_scale", "scale_dtype", "scale_ue8m0")


# name: (rule of (quant dtype, input dtype), quant dtypes, group sizes)
PRESETS = {
    # torchao-style rowwise: the scale rounded to the model dtype, no floor.
    "model_dtype_scale": (lambda q, d: rule(q, scale_dtype=d), (FP8, INT8), (0,)),
    # FBGEMM-style rowwise: absmax floored at 1e-12.
    "absmax_floor_1e-12": (lambda q, d: rule(q, absmax_floor=1e-12), (FP8, FNUZ), (0,)),
    # DeepSeek-style blocks: absmax floored at 1e-4, optionally UE8M0 scales.
    "absmax_floor_1e-4": (lambda q, d: rule(q, absmax_floor=1e-4), (FP8,), (0, 128)),
    "absmax_floor_1e-4_ue8m0": (lambda q, d: rule(q, absmax_floor=1e-4, scale_ue8m0=True), (FP8, FNUZ), (128, 64)),
    # vLLM-style groups: the scale floored at 1 / (qmax * 512).
    "scale_floor": (lambda q, d: rule(q, scale_floor=1.0 / (QMAX[q] * 512)), (FP8, FNUZ), (32, 64, 128)),
    # compressed-tensors-style symmetric INT8: (max - min) / (127 - -128) = absmax / 127.5, and a
    # zero scale replaced by eps.
    "divisor_127.5_zero_eps": (
        lambda q, d: rule(q, divisor=127.5 if q == INT8 else QMAX[q], zero_scale=torch.finfo(torch.float32).eps),
        (INT8, FP8),
        (0, 128),
    ),
    # compressed-tensors as it runs in a 16-bit model: the scale in the model dtype and y / scale
    # rounded to it before the cast (round_quotient).
    "ct_model_dtype_quotient": (
        lambda q, d: rule(q, divisor=127.5 if q == INT8 else QMAX[q], scale_dtype=d,
                          zero_scale=torch.finfo(d).eps, round_quotient=True),  # fmt: skip
        (INT8, FP8),
        (0, 64),
    ),
    # Nothing: an all-zero row has scale 0 and quantizes to NaN (FP8) / 0 (INT8).
    "bare": (lambda q, d: rule(q), (FP8, INT8), (0, 64)),
    # Everything at once, in the rule's order: fp16 rounding, UE8M0, a scale floor, zero scales.
    "fp16_ue8m0_floor": (
        lambda q, d: rule(q, absmax_floor=1e-6, scale_dtype=torch.float16, scale_ue8m0=True, scale_floor=2.0**-20),
        (FP8, INT8),
        (0, 32),
    ),
}

TOKENS = [(0,), (1,), (7,), (257,), (3, 5)]
ROW_HIDDEN = [1, 64, 1025, 5128]
GROUP_HIDDEN = [128, 384, 7168]
DTYPES = [(torch.float32, None), (torch.float16, None), (torch.bfloat16, None), (torch.bfloat16, torch.float32)]


BASE_RULE_OPS = ("dynamic_quant", "rms_norm_dynamic_quant", "fused_add_rms_norm_dynamic_quant")


@pytest.fixture
def rule_ops(request):
    # The base rule ops, and the op under test (a library older than these tests may lack the
    # norm-output variants: only their tests are skipped then).
    params = getattr(request.node, "callspec", None)
    wanted = [*BASE_RULE_OPS, *([params.params["op_name"]] if params and "op_name" in params.params else [])]
    missing = [n for n in dict.fromkeys(wanted) if not hasattr(ops, n)]
    if missing:
        pytest.skip(f"the loaded library does not define {missing}")
    on_cuda = (params is not None and params.params.get("device") == "cuda") or request.node.get_closest_marker("cuda")
    if on_cuda and not torch._C._dispatch_has_kernel_for_dispatch_key("fusion_kernels::dynamic_quant", "CUDA"):
        pytest.skip("the loaded library has no CUDA kernels for the rule ops")


def _cpu(args):
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def bits(t: torch.Tensor) -> torch.Tensor:
    """An integer view of a tensor's bits (NaNs compare equal to identical NaNs)."""
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    assert a.stride() == b.stride() or a.numel() <= 1, f"{what}: strides {a.stride()} vs {b.stride()}"
    assert torch.equal(bits(a), bits(b)), f"{what}: not bit for bit equal"


def assert_equal_or_both_nan(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """Exact equality of values (any NaN equals any NaN: a NaN's sign and payload are not specified)."""
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    if a.dtype == torch.int8:
        assert torch.equal(a, b), f"{what}: differs"
        return
    fa, fb = a.float(), b.float()
    nan_a, nan_b = torch.isnan(fa), torch.isnan(fb)
    same = (nan_a & nan_b) | (~nan_a & ~nan_b & (bits(a) == bits(b)))
    if not bool(same.all()):
        i = int((~same).flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: element {i} is {fa.flatten()[i]} vs {fb.flatten()[i]} ({int((~same).sum())} differ)"
        )


def rule_cases(op_names):
    cases = []
    for op in op_names:
        for name, (_, _, groups) in PRESETS.items():
            for g in groups:
                cases.append(pytest.param(op, name, g, id=f"{op}-{name}-g{g}"))
    return cases


# --- numerics against the reference ------------------------------------------------------------


@pytest.mark.parametrize("op_name, preset, group_size", rule_cases(RULE_OP_NAMES))
def test_matches_reference(op_name, preset, group_size, device, rule_ops):
    make_rule, qdtypes, _ = PRESETS[preset]
    hiddens = ROW_HIDDEN if group_size == 0 else [h for h in GROUP_HIDDEN if h % group_size == 0]
    for (dtype, wdtype), qdtype in itertools.product(DTYPES, qdtypes):
        if wdtype is not None and "rms_norm" not in op_name:
            continue
        r = make_rule(qdtype, dtype)
        for tokens, hidden in itertools.product(TOKENS, hiddens):
            args = make_args(op_name, tokens, hidden, dtype, device, weight_dtype=wdtype, quant_dtype=qdtype,
                             group_size=group_size, **r)  # fmt: skip
            out = getattr(ops, op_name)(*args)
            expected = reference_of(op_name)(*_cpu(args))
            try:
                assert_outputs_match(op_name, _cpu(_as_tuple(out)), expected, dtype, scale_dtype=r["scale_dtype"])
            except AssertionError as exc:
                raise AssertionError(f"{dtype} w={wdtype} {qdtype} T={tokens} H={hidden}: {exc}") from None


def special_rows(hidden: int, dtype: torch.dtype, seed: int = 7) -> torch.Tensor:
    """Rows: ordinary, all zero, ~1e-3 values with one 3e4 outlier, a NaN, +Inf, -Inf, tiny
    values, all negative."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, hidden, generator=g)
    x[1] = 0.0
    x[2] = torch.randn(hidden, generator=g) * 1e-3
    x[2, hidden // 2] = 3e4
    x[3, hidden // 3] = float("nan")
    x[4, hidden - 1] = float("inf")
    x[5, 0] = float("-inf")
    x[6] = x[6] * 1e-6
    x[7] = -x[7].abs()
    return x.to(dtype)


@pytest.mark.parametrize("preset", PRESETS)
def test_quant_op_special_rows_exact(preset, device, rule_ops):
    """Without a norm the op quantizes its input exactly as the reference does, value for value,
    on all-zero, outlier, NaN, Inf and tiny rows, for every group size of the preset."""
    make_rule, qdtypes, groups = PRESETS[preset]
    for dtype, qdtype, group_size in itertools.product((torch.float32, torch.float16, torch.bfloat16), qdtypes, groups):
        for hidden in [1, 7, 1025] if group_size == 0 else [group_size, 3 * group_size]:
            x = special_rows(hidden, dtype)
            r = make_rule(qdtype, dtype)
            q, s = ops.dynamic_quant(x.to(device), qdtype, group_size, **r)
            ref_q, ref_s = reference.dynamic_quant(x, qdtype, group_size, **r)
            what = f"{dtype} {qdtype} G={group_size} H={hidden}"
            assert s.is_contiguous() and s.shape == ref_s.shape, what
            assert_equal_or_both_nan(s.cpu(), ref_s, f"scales {what}")
            assert_equal_or_both_nan(q.cpu(), ref_q, f"q {what}")


@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
@pytest.mark.parametrize("preset", PRESETS)
def test_special_rows_against_reference(op_name, preset, device, rule_ops):
    make_rule, qdtypes, groups = PRESETS[preset]
    for dtype, qdtype, group_size in itertools.product((torch.float32, torch.bfloat16), qdtypes, groups):
        hidden = 1025 if group_size == 0 else 3 * group_size
        args = list(make_args(op_name, (8,), hidden, dtype, device, quant_dtype=qdtype, group_size=group_size,
                              **make_rule(qdtype, dtype)))  # fmt: skip
        args[0] = special_rows(hidden, dtype).to(device)
        out = getattr(ops, op_name)(*args)
        expected = reference_of(op_name)(*_cpu(args))
        try:
            assert_outputs_match(
                op_name, _cpu(out), expected, dtype, scale_dtype=make_rule(qdtype, dtype)["scale_dtype"]
            )
        except AssertionError as exc:
            raise AssertionError(f"{dtype} {qdtype} G={group_size}: {exc}") from None


EXTREME_RULES = [
    (FP8, rule(FP8)),  # no floor: subnormal and zero scales
    (FP8, rule(FP8, scale_ue8m0=True)),  # UE8M0 of subnormal scales
    (INT8, rule(INT8, divisor=127.5)),
    (FNUZ, rule(FNUZ, divisor=1.0)),  # scales above 2^126: subnormal reciprocals
    (INT8, rule(INT8, divisor=3.0, scale_dtype=torch.float16, zero_scale=0.5)),
    (FP8, rule(FP8, divisor=6.0, scale_dtype=torch.bfloat16, scale_floor=2.0**-140)),
]


@pytest.mark.parametrize("qdtype, r", EXTREME_RULES, ids=[str(i) for i in range(len(EXTREME_RULES))])
@pytest.mark.parametrize("group_size", [0, 32])
def test_absmax_of_every_binade_exact(qdtype, r, group_size, device, rule_ops):
    """float32 rows whose absmax is each power of two from 2^-149 to 2^127 (and neighbours):
    scales from subnormal to above 2^126, their reciprocals, UE8M0, rounding to 16-bit scale
    dtypes, zero scales and floors give the reference's values exactly."""
    g = torch.Generator().manual_seed(2)
    exps = torch.arange(-149, 128, dtype=torch.float64)
    amax = torch.cat([torch.exp2(exps), torch.exp2(exps) * 1.7, torch.exp2(exps) * (2 - 2**-22)]).float()
    amax = amax[torch.isfinite(amax) & (amax > 0)]
    amax = amax[: amax.numel() // 2 * 2]  # an even count: two groups of 32 per row of 64
    width = 32 if group_size else 64
    x = (torch.rand(amax.numel(), width, generator=g) * 2 - 1) * amax[:, None]
    x[:, 3] = amax  # the absmax itself
    x[:, 5] = -amax / 3
    x = x.reshape(-1, 64) if group_size else x
    q, s = ops.dynamic_quant(x.to(device), qdtype, group_size, **r)
    ref_q, ref_s = reference.dynamic_quant(x, qdtype, group_size, **r)
    assert_equal_or_both_nan(s.cpu(), ref_s, "scales")
    assert_equal_or_both_nan(q.cpu(), ref_q, "q")


@pytest.mark.parametrize("qdtype", [FP8, FNUZ, INT8])
@pytest.mark.parametrize("group_size", [0, 64])
def test_zero_rows_follow_the_rule(qdtype, group_size, device, rule_ops):
    """All-zero rows: no floor gives scale 0 and q NaN (FP8) / 0 (INT8); zero_scale replaces the
    0; an absmax floor gives floor / divisor; a scale floor gives the floor."""
    hidden = 128
    x = torch.zeros(3, hidden, dtype=torch.bfloat16, device=device)
    x[1] = 1.0
    n = 1 if group_size == 0 else hidden // group_size
    q, s = ops.dynamic_quant(x, qdtype, group_size, **rule(qdtype))
    assert (s[0] == 0).all() and (s[2] == 0).all()
    if qdtype == INT8:
        assert (q[0] == 0).all()
    else:
        assert torch.isnan(q[0].float()).all(), "0 * (1 / 0) is NaN, as the plain-torch spelling computes"
    assert (s[1] == float(reference.dynamic_scale(torch.ones(1), **rule(qdtype))[0])).all()
    q, s = ops.dynamic_quant(x, qdtype, group_size, **rule(qdtype, zero_scale=1e-6))
    assert (s[0] == reference._f32(1e-6)).all() and (q[0].float() == 0).all()
    q, s = ops.dynamic_quant(x, qdtype, group_size, **rule(qdtype, divisor=2.0, absmax_floor=1e-3))
    assert (s[0] == reference._f32(1e-3) / 2).all() and (q[0].float() == 0).all()
    q, s = ops.dynamic_quant(x, qdtype, group_size, **rule(qdtype, scale_floor=0.25))
    assert s.shape == (3, n) and (s[0] == 0.25).all() and (q[0].float() == 0).all()


# --- the existing ops are special cases --------------------------------------------------------


def _inputs_for_equalities(dtype, device, rows, hidden):
    g = torch.Generator().manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, generator=g)
    specials = special_rows(hidden, torch.float32)
    x[: min(rows, 8)] = specials[: min(rows, 8)]
    r = torch.randn(rows, hidden, generator=g)
    w = torch.randn(hidden, generator=g)
    return x.to(dtype).to(device), r.to(dtype).to(device), w.to(dtype).to(device)


def sizes(device, hidden=(1025, 4096)):
    """(rows, hidden) of the equality tests: few rows, and on CUDA 2048 rows (the throughput
    variant of its kernels; the CPU kernel has one code path whatever the number of rows)."""
    out = [(7, hidden[0]), (37, hidden[1])]
    return out + ([(2048, hidden[1])] if torch.device(device).type == "cuda" else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_token_ops_are_a_special_case(dtype, device, rule_ops):
    eps = 1e-5
    for rows, hidden in sizes(device):
        x, res, w = _inputs_for_equalities(dtype, device, rows, hidden)
        for qdtype in (FP8, FNUZ, INT8):
            r = reference.per_token_rule(qdtype)
            what = f"{qdtype} {rows}x{hidden}"
            new = ops.dynamic_quant(x, qdtype, 0, **r)
            old = (
                ops.dynamic_scaled_int8_quant(x)
                if qdtype == INT8
                else ops.dynamic_per_token_scaled_fp8_quant(x, None, qdtype)
            )
            for a, b in zip(new, old):
                assert_same_bits(a, b, f"dynamic_quant {what}")
            new = ops.rms_norm_dynamic_quant(x, w, eps, qdtype, 0, **r)
            old = ops.rms_norm_dynamic_per_token_quant(x, w, eps, qdtype, None)
            for a, b in zip(new, old):
                assert_same_bits(a, b, f"rms_norm_dynamic_quant {what}")
            new = ops.fused_add_rms_norm_dynamic_quant(x, res, w, eps, qdtype, 0, **r)
            old = ops.fused_add_rms_norm_dynamic_per_token_quant(x, res, w, eps, qdtype, None)
            for a, b in zip(new, old):
                assert_same_bits(a, b, f"fused_add_rms_norm_dynamic_quant {what}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_group_ops_are_a_special_case(dtype, group_size, device, rule_ops):
    eps = 1e-5
    for rows, hidden in sizes(device, (384, 4096)):
        x, res, w = _inputs_for_equalities(dtype, device, rows, hidden)
        for qdtype, ue8m0 in itertools.product((FP8, FNUZ), (False, True)):
            r = reference.per_token_group_rule(qdtype, ue8m0)
            what = f"{qdtype} ue8m0={ue8m0} {rows}x{hidden}"
            new = ops.dynamic_quant(x, qdtype, group_size, **r)
            old = ops.per_token_group_fp8_quant(x, group_size, False, ue8m0, qdtype)
            for a, b in zip(new, old):
                assert_same_bits(a, b, f"dynamic_quant {what}")
            new = ops.rms_norm_dynamic_quant(x, w, eps, qdtype, group_size, **r)
            old = ops.rms_norm_per_token_group_quant(x, w, eps, group_size, False, ue8m0, qdtype)
            for a, b in zip(new, old):
                assert_same_bits(a, b, f"rms_norm_dynamic_quant {what}")
            new = ops.fused_add_rms_norm_dynamic_quant(x, res, w, eps, qdtype, group_size, **r)
            old = ops.fused_add_rms_norm_per_token_group_quant(x, res, w, eps, group_size, False, ue8m0, qdtype)
            for a, b in zip(new, old):
                assert_same_bits(a, b, f"fused_add_rms_norm_dynamic_quant {what}")


def test_reference_rules_of_the_existing_ops():
    """The reference of the existing dynamic ops is the rule with their constants."""
    g = torch.Generator().manual_seed(3)
    x = special_rows(256, torch.float32) * torch.rand(8, 1, generator=g)
    for qdtype in (FP8, FNUZ, INT8):
        q, s = reference.dynamic_quant(x, qdtype, 0, **reference.per_token_rule(qdtype))
        amax = x.abs().amax(-1, keepdim=True)
        expected_s = (amax / torch.full_like(amax, QMAX[qdtype])).clamp(min=reference.per_token_min_scale(qdtype))
        assert_equal_or_both_nan(s, expected_s, f"per-token {qdtype}")
    for ue8m0 in (False, True):
        q, s = reference.dynamic_quant(x, FP8, 64, **reference.per_token_group_rule(FP8, ue8m0))
        q2, s2 = reference.per_token_group_fp8_quant(x, 64, False, ue8m0, FP8)
        assert_equal_or_both_nan(s, s2)
        assert_equal_or_both_nan(q, q2)


# --- fused == unfused --------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_equals_unfused_bit_for_bit(preset, dtype, device, rule_ops):
    make_rule, qdtypes, groups = PRESETS[preset]
    eps = 1e-6
    for (rows, hidden), qdtype, group_size in itertools.product(sizes(device), qdtypes, groups):
        if group_size and hidden % group_size:
            continue
        x, res, w = _inputs_for_equalities(dtype, device, rows, hidden)
        r = make_rule(qdtype, dtype)
        what = f"{qdtype} G={group_size} {rows}x{hidden}"
        got = ops.rms_norm_dynamic_quant(x, w, eps, qdtype, group_size, **r)
        exp = ops.dynamic_quant(ops.rms_norm(x, w, eps), qdtype, group_size, **r)
        for a, b in zip(got, exp):
            assert_same_bits(a, b, f"rms_norm_dynamic_quant {what}")
        got = ops.fused_add_rms_norm_dynamic_quant(x, res, w, eps, qdtype, group_size, **r)
        y, res_out = ops.fused_add_rms_norm(x, res, w, eps)
        for a, b in zip(got, (*ops.dynamic_quant(y, qdtype, group_size, **r), res_out)):
            assert_same_bits(a, b, f"fused_add_rms_norm_dynamic_quant {what}")


@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
def test_strided_and_non_collapsible_rows(op_name, device, rule_ops):
    for group_size, qdtype in [(0, INT8), (64, FP8), (32, INT8)]:
        r = rule(qdtype, absmax_floor=1e-4, scale_dtype=torch.bfloat16)
        args = make_args(op_name, (9,), 256, torch.bfloat16, device, row_padding=8, quant_dtype=qdtype,
                         group_size=group_size, **r)  # fmt: skip
        assert args[0].stride() == (264, 1)
        assert_outputs_match(op_name, _cpu(_as_tuple(getattr(ops, op_name)(*args))), reference_of(op_name)(*_cpu(args)),
                             torch.bfloat16, scale_dtype=torch.bfloat16)  # fmt: skip
        args = make_args(op_name, (5, 3), 256, torch.float16, device, quant_dtype=qdtype, group_size=group_size, **r)
        args = tuple(a.transpose(0, 1) if isinstance(a, torch.Tensor) and a.dim() == 3 else a for a in args)
        out = _as_tuple(getattr(ops, op_name)(*args))
        assert out[1].shape == (3, 5, 1 if group_size == 0 else 256 // group_size) and out[1].is_contiguous()
        assert_outputs_match(op_name, _cpu(out), reference_of(op_name)(*_cpu(args)), torch.float16,
                             scale_dtype=torch.bfloat16)  # fmt: skip


# --- arguments ---------------------------------------------------------------------------------


BAD_RULE_ARGS = [
    ("divisor", 0.0, "divisor must be finite and > 0"),
    ("divisor", -448.0, "divisor must be finite and > 0"),
    ("divisor", float("inf"), "divisor must be finite and > 0"),
    ("divisor", float("nan"), "divisor must be finite and > 0"),
    ("divisor", 1e39, "divisor must be finite and > 0 (as float32)"),
    ("absmax_floor", -1e-3, "absmax_floor must be finite and >= 0"),
    ("absmax_floor", float("nan"), "absmax_floor must be finite and >= 0"),
    ("absmax_floor", float("inf"), "absmax_floor must be finite and >= 0"),
    ("scale_floor", -1.0, "scale_floor must be finite and >= 0"),
    ("scale_floor", 1e39, "scale_floor must be finite and >= 0"),
    ("zero_scale", float("nan"), "zero_scale must be finite and >= 0"),
    ("zero_scale", -1e-7, "zero_scale must be finite and >= 0"),
    ("scale_dtype", torch.float64, "scale_dtype must be float32, bfloat16 or float16"),
    ("scale_dtype", torch.int8, "scale_dtype must be float32, bfloat16 or float16"),
    ("scale_dtype", torch.float8_e4m3fn, "scale_dtype must be float32, bfloat16 or float16"),
    ("quant_dtype", torch.float16, "quant_dtype must be float8_e4m3fn or float8_e4m3fnuz or int8"),
    ("quant_dtype", torch.uint8, "quant_dtype must be float8_e4m3fn or float8_e4m3fnuz or int8"),
    ("group_size", 48, "group_size must be -1 (one scale for the tensor), 0 (one scale per row), 32, 64 or 128"),
    ("group_size", -2, "group_size must be -1 (one scale for the tensor), 0 (one scale per row), 32, 64 or 128"),
    ("group_size", 256, "group_size must be -1 (one scale for the tensor), 0 (one scale per row), 32, 64 or 128"),
]


@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
def test_round_quotient_needs_a_row_or_group_scale(op_name, rule_ops):
    args = make_args(op_name, (4,), 128, torch.bfloat16, group_size=-1, quant_dtype=INT8, round_quotient=True)
    message = "round_quotient needs one scale per row or per group (group_size >= 0), got group_size -1"
    assert_refused_everywhere(op_name, args, message, "round_quotient")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_quotient_is_the_division_in_the_model_dtype(dtype, device, rule_ops):
    """INT8 with round_quotient equals plain torch's ``round(clamp(y / s))`` with y and s in the
    model dtype (compressed-tensors' arithmetic) wherever y * (1 / s) and y / s round to the same
    16-bit value, and it moves values that the fp32 quotient quantizes differently."""
    g = torch.Generator().manual_seed(11)
    y = (torch.randn(64, 4096, generator=g) * 3).to(dtype).to(device)
    r = rule(INT8, divisor=127.5, scale_dtype=dtype, zero_scale=torch.finfo(dtype).eps)
    q, s = ops.dynamic_quant(y, INT8, 0, *(r[k] for k in RULE_ARGS), True)
    q32, _ = ops.dynamic_quant(y, INT8, 0, *(r[k] for k in RULE_ARGS), False)
    amax = y.abs().amax(dim=-1, keepdim=True).float()
    s16 = (amax / torch.full_like(amax, 127.5)).to(dtype)  # (a true division on every device)
    torch.testing.assert_close(s, s16.float(), rtol=0, atol=0)
    spelled = torch.round(torch.clamp(y / s16, -128, 127)).to(torch.int8)
    same16 = (y.float() * (1.0 / s16.float())).to(dtype) == (y.float() / s16.float()).to(dtype)
    assert bool(same16.float().mean() > 0.999)
    assert torch.equal(q[same16], spelled[same16])
    moved = (q != q32).float().mean().item()  # (fp16's finer grid moves fewer)
    assert moved > (0.02 if dtype == torch.bfloat16 else 0.002), f"round_quotient moved only {moved:.4f} of the values"


def _bad_args(op_name, arg, value, device="cpu", hidden=128):
    args = list(make_args(op_name, (4,), hidden, torch.bfloat16, device, group_size=64 if hidden % 64 == 0 else 0))
    names = [a.name for a in getattr(ops, op_name).default._schema.arguments]
    args[names.index(arg)] = value
    return args


@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
@pytest.mark.parametrize("arg, value, message", BAD_RULE_ARGS, ids=[f"{a}={v}" for a, v, _ in BAD_RULE_ARGS])
def test_bad_rule_argument(op_name, arg, value, message, rule_ops):
    assert_refused_everywhere(op_name, _bad_args(op_name, arg, value), message, arg)


def assert_refused_everywhere(op_name, args, message, arg):
    """The op raises ``message``; the fake function refuses the same arguments at trace time,
    naming them the same way; the reference names ``arg`` too."""
    with pytest.raises(RuntimeError, match=f"fusion_kernels.{op_name}: {re.escape(message)}"):
        getattr(ops, op_name)(*args)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=f"fusion_kernels: {re.escape(message)}"):
            getattr(ops, op_name)(*fake)
    with pytest.raises(ValueError, match=arg):
        reference_of(op_name)(*args)


@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
def test_hidden_not_divisible_by_the_group(op_name, rule_ops):
    args = _bad_args(op_name, "group_size", 64, hidden=96)
    message = "the hidden size (input.size(-1) = 96) must be divisible by group_size = 64"
    with pytest.raises(RuntimeError, match=f"fusion_kernels.{op_name}: {re.escape(message)}"):
        getattr(ops, op_name)(*args)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=re.escape(message)):
            getattr(ops, op_name)(*fake)


def test_tiny_positive_parameters_count_as_float32():
    """Parameters are float32 in the kernels: a floor that rounds to 0 there is off, in the
    reference too."""
    x = torch.zeros(2, 64)
    q, s = reference.dynamic_quant(x, FP8, 0, **rule(FP8, absmax_floor=1e-50, zero_scale=1e-50))
    assert (s == 0).all() and torch.isnan(q.float()).all()


# --- opcheck and compile -----------------------------------------------------------------------


OPCHECK_CASES = [
    (0, INT8, rule(INT8, divisor=127.5, zero_scale=1e-7)),
    (64, FP8, rule(FP8, absmax_floor=1e-4, scale_ue8m0=True)),
    (32, INT8, rule(INT8, scale_dtype=torch.bfloat16, scale_floor=1e-6)),
    (128, FNUZ, rule(FNUZ, scale_dtype=torch.float16)),
    (-1, FP8, rule(FP8, scale_dtype=torch.bfloat16)),
]


@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
def test_opcheck(op_name, device, rule_ops):
    for (group_size, qdtype, r), (tokens, dtype) in itertools.product(
        OPCHECK_CASES, [((5,), torch.bfloat16), ((2, 3), torch.float32)]
    ):
        args = make_args(op_name, tokens, 256, dtype, device, quant_dtype=qdtype, group_size=group_size, **r)
        torch.library.opcheck(getattr(ops, op_name).default, args)


def test_under_torch_compile_fullgraph(device, fresh_dynamo, rule_ops):
    cases = {}
    for op_name, (group_size, qdtype, r) in itertools.product(RULE_OP_NAMES, OPCHECK_CASES):
        cases[(op_name, group_size, qdtype)] = make_args(
            op_name, (9,), 320 if group_size in (-1, 0, 32, 64) else 384, torch.bfloat16, device,
            quant_dtype=qdtype, group_size=group_size, **r,
        )  # fmt: skip

    def run_all(cases):
        return {k: getattr(ops, k[0])(*args) for k, args in cases.items()}

    got = torch.compile(run_all, fullgraph=True)(cases)
    eager = run_all(cases)
    for k in cases:
        for a, b in zip(got[k], eager[k]):
            assert_same_bits(a, b, str(k))


# --- the quantizers the presets stand for, spelled in plain torch ------------------------------


def _spelled(y: torch.Tensor, qdtype, scale: torch.Tensor) -> torch.Tensor:
    """The plain-torch quantize step: divide by the scale, clamp, cast (INT8: round first)."""
    v = y.float() / scale.float()
    if qdtype == INT8:
        return v.round().clamp(-128, 127).to(INT8)
    return v.clamp(-QMAX[qdtype], QMAX[qdtype]).to(qdtype)


def test_rule_spellings():
    """Each preset's rule against a plain-torch spelling of that quantizer: the same scales bit
    for bit; q equal except where dividing by the scale and multiplying by its reciprocal round
    to different sides of a quantization boundary (one step, rarely)."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(64, 512, generator=g) * torch.logspace(-3, 3, 64).unsqueeze(1)).to(torch.bfloat16)
    x[0] = 0
    x[1, 5] = 3e4

    def compare(name, qdtype, group_size, r, scale, q):
        ref_q, ref_s = reference.dynamic_quant(x, qdtype, group_size, **r)
        assert torch.equal(bits(ref_s), bits(scale.reshape(ref_s.shape))), f"{name}: scales"
        d = quant_steps(ref_q, q)
        assert int(d.max()) <= 1 and float((d > 0).float().mean()) < 0.01, f"{name}: q"

    xf = x.float()
    amax = xf.abs().amax(-1, keepdim=True)
    # The scale rounded to the model dtype, no floor (zero rows: 0 / 0 = NaN in both).
    s = (amax / 448.0).to(torch.bfloat16).float()
    compare("model dtype scale", FP8, 0, rule(FP8, scale_dtype=torch.bfloat16), s, _spelled(x, FP8, s))
    # The absmax floored at 1e-12.
    s = amax.clamp(min=1e-12) / 448.0
    compare("absmax floor", FP8, 0, rule(FP8, absmax_floor=1e-12), s, _spelled(x, FP8, s))
    # Blocks of 128, absmax floored at 1e-4, UE8M0 by ceil(log2) (exact for these values).
    xb = xf.reshape(64, 4, 128)
    s = xb.abs().amax(-1, keepdim=True).clamp(min=1e-4) / 448.0
    s_ue = torch.exp2(torch.ceil(torch.log2(s.double()))).float()
    compare("blocks, absmax floor", FP8, 128, rule(FP8, absmax_floor=1e-4), s, _spelled(xb, FP8, s).reshape(64, 512))
    compare("blocks, UE8M0", FP8, 128, rule(FP8, absmax_floor=1e-4, scale_ue8m0=True), s_ue,
            _spelled(xb, FP8, s_ue).reshape(64, 512))  # fmt: skip
    # Groups of 64 with the scale floored at 1 / (448 * 512).
    xg = xf.reshape(64, 8, 64)
    s = (xg.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    compare("groups, scale floor", FP8, 64, rule(FP8, scale_floor=1.0 / (448 * 512)), s,
            _spelled(xg, FP8, s).reshape(64, 512))  # fmt: skip
    # Symmetric INT8 from min/max: (max - min) / (127 - (-128)) with min = -max = -absmax, a
    # zero scale replaced by eps.
    eps = torch.finfo(torch.float32).eps
    s = (2 * amax) / 255.0
    s = torch.where(s == 0, torch.full_like(s, eps), s)
    compare("int8 min/max", INT8, 0, rule(INT8, divisor=127.5, zero_scale=eps), s, _spelled(x, INT8, s))


def test_dynamic_scale_order():
    """The rule's steps in their order, on values chosen so that a different order differs."""
    ds = reference.dynamic_scale
    t = torch.tensor
    nan = float("nan")
    # The absmax floor applies before the division, the scale floor after it.
    assert ds(t([0.0, 1e-6]), 2.0, 1e-4, 0.0, 0.0, torch.float32, False).tolist() == [
        reference._f32(1e-4) / 2,
        reference._f32(1e-4) / 2,
    ]
    assert ds(t([0.0, 1.0]), 2.0, 0.0, 1e-4, 0.0, torch.float32, False).tolist() == [reference._f32(1e-4), 0.5]
    # NaN passes every floor.
    assert math.isnan(ds(t([nan]), 448.0, 1e-4, 1e-4, 1.0, torch.float32, True)[0])
    # Rounding to the scale dtype precedes UE8M0: 1 + 2^-10 rounds to 1 in bf16, so stays 1.
    assert ds(t([1.0 + 2.0**-10]), 1.0, 0.0, 0.0, 0.0, torch.bfloat16, True).tolist() == [1.0]
    assert ds(t([1.0 + 2.0**-10]), 1.0, 0.0, 0.0, 0.0, torch.float32, True).tolist() == [2.0]
    # fp16 rounding overflows to Inf and underflows to 0; the zero replacement comes last.
    assert ds(t([1e6, 1e-9]), 1.0, 0.0, 0.0, 0.0, torch.float16, False).tolist() == [float("inf"), 0.0]
    assert ds(t([1e-9]), 1.0, 0.0, 0.0, 0.5, torch.float16, False).tolist() == [0.5]
    # UE8M0 precedes the scale floor: the floor need not be a power of two.
    assert ds(t([0.0]), 1.0, 0.0, 0.3, 0.0, torch.float32, True).tolist() == [reference._f32(0.3)]
    # The division is correctly rounded (127.5 is not a power of two).
    a = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 100
    assert torch.equal(ds(a, 127.5, 0.0, 0.0, 0.0, torch.float32, False), (a.double() / 127.5).float())


# --- CUDA only ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
@pytest.mark.parametrize("preset", ["absmax_floor_1e-4_ue8m0", "scale_floor", "divisor_127.5_zero_eps",
                                    "fp16_ue8m0_floor", "model_dtype_scale", "ct_model_dtype_quotient"])  # fmt: skip
def test_model_sizes_on_cuda(op_name, preset, rule_ops):
    make_rule, qdtypes, groups = PRESETS[preset]
    for hidden, tokens, qdtype, group_size in itertools.product([2048, 4096, 7168, 16384], [1, 16, 1024, 8192],
                                                                qdtypes, groups):  # fmt: skip
        for dtype in (torch.bfloat16, torch.float16):
            r = make_rule(qdtype, dtype)
            args = make_args(op_name, (tokens,), hidden, dtype, "cuda", quant_dtype=qdtype, group_size=group_size, **r)
            try:
                assert_outputs_match(op_name, getattr(ops, op_name)(*args), reference_of(op_name)(*args), dtype,
                                     scale_dtype=r["scale_dtype"])  # fmt: skip
            except AssertionError as exc:
                raise AssertionError(f"{dtype} {qdtype} G={group_size} T={tokens} H={hidden}: {exc}") from None


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("op_name", RULE_OP_NAMES)
@pytest.mark.parametrize("group_size, qdtype", [(0, INT8), (32, INT8), (64, FP8), (128, INT8), (128, FP8)])
@pytest.mark.parametrize("hidden", [4096, 7168])
def test_batch_invariance_on_cuda(op_name, group_size, qdtype, hidden, rule_ops):
    """A row's outputs do not depend on how many rows the call has (different kernel variants)."""
    r = rule(qdtype, absmax_floor=1e-4, scale_dtype=torch.bfloat16, scale_ue8m0=group_size == 64)
    big = make_args(op_name, (16384,), hidden, torch.bfloat16, "cuda", quant_dtype=qdtype, group_size=group_size, **r)
    picks = [0, 3, 6]

    def take(rows):
        return tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() == 2 else a for a in big)

    def rows_of(out, rows):
        return [bits(o[rows]) for o in out]

    full = rows_of(getattr(ops, op_name)(*big), picks)
    for n in (7, 200, 4096):
        part = rows_of(getattr(ops, op_name)(*take(slice(0, n))), picks)
        for a, b in zip(full, part):
            assert torch.equal(a, b), f"{op_name}: rows depend on the batch ({n} rows vs 16384)"
    for row in picks:
        alone = rows_of(getattr(ops, op_name)(*take(slice(row, row + 1))), [0])
        for a, b in zip(full, alone):
            assert torch.equal(a[picks.index(row)], b[0]), f"{op_name}: row {row} alone differs"


def _positive_values(dtype):
    """Every positive finite value of a 16-bit float and +Inf; for float32 a spread of 2^20
    (subnormals and the largest values included)."""
    if dtype == torch.float32:
        g = torch.Generator().manual_seed(5)
        rand = torch.randint(1, 0x7F800000, (1 << 20,), generator=g, dtype=torch.int64)
        edges = torch.tensor([1, 0x007FFFFF, 0x00800000, 0x2EDBE6FF, 0x2EDBE700, 0x7E800000, 0x7F000001, 0x7F7FFFFF,
                              0x7F800000])  # fmt: skip
        return torch.cat([edges, rand]).to(torch.int32).view(torch.float32)
    inf = torch.tensor([float("inf")], dtype=dtype)
    top = 0x7F7F if dtype == torch.bfloat16 else 0x7BFF
    return torch.cat([torch.arange(1, top + 1, dtype=torch.int16).view(dtype), inf])


SCALE_MATH_RULES = {
    # a runtime divisor (not the format's maximum): the correctly rounded division
    "divisor_127.5": (INT8, 0, rule(INT8, divisor=127.5)),
    "divisor_1": (FP8, 0, rule(FP8, divisor=1.0)),  # float32 scales above 2^126
    # no floor: subnormal and zero scales, whose reciprocals are Inf or beyond the fast path
    "bare": (FP8, 64, rule(FP8)),
    "bf16_scale": (FP8, 0, rule(FP8, scale_dtype=torch.bfloat16)),
    "fp16_scale_zero": (INT8, 32, rule(INT8, scale_dtype=torch.float16, zero_scale=0.5)),
    "ue8m0_floor": (FNUZ, 128, rule(FNUZ, divisor=3.0, scale_ue8m0=True, scale_floor=2.0**-130)),
}


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", SCALE_MATH_RULES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scale_of_every_absmax_on_cuda(name, dtype, rule_ops):
    """The CUDA scale rule (division, rounding to the scale dtype, UE8M0, floors, zero scales)
    and the reciprocal give the reference's bits for every absmax a 16-bit input can have, and a
    spread of float32 ones (subnormals, the largest, Inf)."""
    qdtype, group_size, r = SCALE_MATH_RULES[name]
    values = _positive_values(dtype)
    per_scale = group_size or 4096
    if group_size == 0:
        values = values[: 1 << 15]
    width = 4096
    slots = -(-values.numel() * per_scale // width) * (width // per_scale)
    x = torch.zeros(slots, per_scale, dtype=dtype)
    x[: values.numel(), 0] = values
    x[: values.numel(), 1] = -values / 3
    x = x.reshape(-1, width)
    q, s = ops.dynamic_quant(x.cuda(), qdtype, group_size, **r)
    ref_q, ref_s = reference.dynamic_quant(x, qdtype, group_size, **r)
    assert_equal_or_both_nan(s.cpu(), ref_s, f"scales {name}")
    assert_equal_or_both_nan(q.cpu(), ref_q, f"q {name}")

