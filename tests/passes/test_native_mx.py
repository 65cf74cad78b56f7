# SPDX-License-Identifier: Apache-2.0
"""torchao's microscaling quantizers after an RMSNorm, in plain torch: the spellings our MXFP8 op
reproduces byte for byte are fused (the rewritten graph's outputs equal the spelling's on ordinary,
all-zero, outlier, subnormal-block, NaN and Inf rows), the others are refused with a reason that
names the difference. Captured post-grad graphs, run eagerly (no Inductor code generation)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree

from fusion_kernels.testing import op_counts
from fusion_passes import FusionPass
from fusion_passes.patterns.native.mx import cast_saturates

_spec = importlib.util.spec_from_file_location("fusion_corpus", Path(__file__).with_name("corpus.py"))
corpus = sys.modules.get("fusion_corpus")
if corpus is None:
    corpus = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = corpus
    _spec.loader.exec_module(corpus)

FP8 = torch.float8_e4m3fn


def mx_inputs(dtype, rows=16, hidden=256, seed=0):
    """corpus.inputs (row 0 all zero, row 1 an outlier among tiny values) and four more rows:
    a huge element beside values whose normalised blocks are fp32 subnormals (byte 0), a NaN,
    an Inf (which normalises to NaN at the Inf and 0 elsewhere), a row of mixed magnitudes."""
    x, r, w, s = corpus.inputs(dtype, rows, hidden, seed)
    x, r = x.float(), r.float()
    x[2] = 1e-20
    x[2, 0] = 1e22
    r[2] = 0.0
    x[3, 5] = float("nan")
    x[4, 9] = float("inf")
    x[5] = x[5] * torch.logspace(-8, 8, hidden)
    return x.to(dtype), r.to(dtype), w, s


def _bytes(t):
    """The bytes of a tensor, every NaN as one canonical NaN (a NaN's sign is not arithmetic)."""
    if t.is_floating_point():
        nan = torch.isnan(t.float())
        t = torch.where(nan, torch.zeros((), dtype=t.dtype), t) if t.dtype.itemsize > 1 or not nan.any() else t
        b = t.contiguous().view(torch.uint8).clone() if t.dtype.itemsize == 1 else t.contiguous().view(torch.uint8)
        if t.dtype.itemsize == 1 and t.dtype != torch.float8_e8m0fnu:
            b[nan] = 0x7F
        return b, nan
    return t, None


def assert_same_bytes(got, expected):
    got, expected = pytree.tree_leaves(got), pytree.tree_leaves(expected)
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, (i, a.dtype, e.dtype, a.shape, e.shape)
        (ba, na), (be, ne) = _bytes(a), _bytes(e)
        if na is not None:
            assert torch.equal(na, ne), f"output {i}: NaN at other places"
        assert torch.equal(ba, be), f"output {i}: {(ba != be).sum().item()} bytes differ"


def _run(fn, args, native="always"):
    p = FusionPass(native=native)
    gm, got = corpus.run_pass(fn, args, p)
    return p, gm, got


FUSED = [c for c in corpus.MX_CASES if c.id not in corpus.MX_REFUSED]
#: every fused spelling in bf16, the plain and residual FLOOR ones in an fp32 model too (an fp32
#: F.rms_norm without a weight, one product and no cast, is not read as a norm)
FUSED_RUNS = [(c, torch.bfloat16) for c in FUSED] + [
    (c, torch.float32) for c in FUSED if c.quant == "torchao_mxfp8_floor" and c.consumers == 1 and c.norm == "llama"
]


@pytest.mark.parametrize("case, dtype", FUSED_RUNS, ids=lambda v: getattr(v, "id", str(v).split(".")[-1]))
def test_mxfp8_spelling_fuses_bit_for_bit(case, dtype):
    fn = case.fn()
    args = mx_inputs(dtype)
    p, gm, got = _run(fn, args)
    if not cast_saturates(FP8):  # torch < 2.12: the spelling's unclamped cast gives NaN beyond 448
        assert op_counts(gm) == {} and p.report.refusals_per_reason() == {"no_clamp": 1}, p.report
        return
    name = ("fused_add_" if case.residual else "") + "rms_norm_mxfp8_quant"
    assert op_counts(gm) == {name: 1}, p.report
    assert p.report.fused == 1 and p.report.refused == 0, p.report
    assert not any(n.target is torch.ops.aten.rsqrt.default for n in gm.graph.nodes)
    assert_same_bytes(got, fn(*args))


@pytest.mark.parametrize("case", [c for c in corpus.MX_CASES if c.id in corpus.MX_REFUSED], ids=lambda c: c.id)
def test_other_microscaling_spellings_are_refused_with_the_difference(case):
    fn = case.fn()
    args = mx_inputs(torch.bfloat16)
    p, gm, got = _run(fn, args)
    assert op_counts(gm) == {}, p.report
    assert p.report.refusals_per_reason() == {corpus.MX_REFUSED[case.id]: 1}, p.report
    assert_same_bytes(got, fn(*args))  # left computing what it computes


def test_rceil_via_log2_differs_from_exact_rounding():
    """Why RCEIL of an fp32 absmax is refused: amax / 448 one ulp above 2 ** 10. log2 of it is
    10 + 1.7e-7, which fp32 rounds to 10 (its ulp there is 9.5e-7): the spelling keeps 2 ** 10 and
    the elements beyond 448 * 2 ** 10 saturate, where an exact round-up gives 2 ** 11."""
    from fusion_kernels import microscaling as M

    amax = torch.nextafter(torch.tensor(448.0 * 2**10), torch.tensor(float("inf")))
    assert (amax / 448.0).item() == 2**10 * (1 + 2**-23)
    y = torch.cat([amax.reshape(1), torch.zeros(31)]).reshape(1, 32)
    _, spelled = corpus.q_torchao_mxfp8_rceil(y, None)
    exact = M.mx_block_scale(amax.reshape(1, 1), FP8, "rceil")
    assert spelled.view(torch.uint8).item() == 127 + 10 and exact.item() == 127 + 11


def test_mxfp8_quantizer_equals_ours_on_our_norms_output():
    """The quantizer alone (no reduction-order question): the fused op's bytes equal the spelling
    applied to our own norm's output, on larger random rows too."""
    p = FusionPass(native="always")  # loads the library
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 2048, generator=g) * torch.logspace(-3, 3, 2048)).to(torch.bfloat16)
    r = torch.randn(64, 2048, generator=g).to(torch.bfloat16)
    w = (1 + 0.3 * torch.randn(2048, generator=g)).to(torch.bfloat16)
    x[0] = 0
    r[0] = 0
    ops = torch.ops.fusion_kernels
    for mode, quant in (("floor", corpus.q_torchao_mxfp8_floor), ("ceil", corpus.q_torchao_mxfp8_ceil)):
        q, sc = ops.rms_norm_mxfp8_quant(x, w, 1e-6, FP8, mode, False)
        assert_same_bytes((q, sc), quant(ops.rms_norm(x, w, 1e-6), None))
        q, sc, res = ops.fused_add_rms_norm_mxfp8_quant(x, r, w, 1e-6, FP8, mode, False)
        y, res2 = ops.fused_add_rms_norm(x, r, w, 1e-6)
        assert_same_bytes((q, sc, res), (*quant(y, None), res2))
    assert p is not None


# --- near misses ---------------------------------------------------------------------------------


def _mx_near_miss(**changes):
    """corpus._to_mx's arithmetic with one thing changed."""

    def quant(y):
        shape = y.shape
        blocks = y.reshape(*shape[:-1], shape[-1] // 32, 32)
        amax = torch.amax(torch.abs(blocks), -1).unsqueeze(-1).to(torch.float32)
        blocks = blocks.to(torch.float32)
        bits = amax.view(torch.int32)
        e = (torch.bitwise_right_shift(bits, 23) & 0xFF) - 127 - changes.get("pow2", 8)
        e = torch.clamp(e, min=changes.get("lo", -127), max=128)
        byte = torch.where(torch.isnan(amax), 255, (e + 127).to(torch.uint8))
        d = torch.bitwise_left_shift(byte.to(torch.int32), 23).view(torch.float32)
        d = torch.clamp(d, min=changes.get("floor", 2.0**-126))
        q = blocks / d
        dtype = changes.get("dtype", FP8)
        if changes.get("clamp", True):
            qmax = torch.finfo(dtype).max
            q = torch.clamp(q, min=-qmax, max=qmax)
        return q.to(dtype).reshape(shape), byte.view(torch.float8_e8m0fnu).squeeze(-1)

    def fn(x, r, w, s):
        return quant(corpus.norm_llama(x, w, 1e-6))

    return fn


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"floor": 2.0**-127}, "mx_divisor_floor_differs"),  # an all-zero block's divisor
        ({"lo": -120}, "mx_scale_clamp_differs"),  # the smallest scale is not 2 ** -127
        ({"pow2": 7}, "mx_scale_exponent_mismatch"),  # e4m3's largest power of two is 2 ** 8
        ({"dtype": torch.float8_e5m2, "pow2": 15, "clamp": False}, "no_clamp"),  # e5m2 overflows to Inf
    ],
    ids=["divisor_floor", "byte_clamp", "exponent_offset", "e5m2_unclamped"],
)
def test_mx_near_misses_are_refused(changes, reason):
    fn = _mx_near_miss(**changes)
    args = mx_inputs(torch.bfloat16)
    p, gm, got = _run(fn, args)
    assert op_counts(gm) == {} and p.report.refusals_per_reason() == {reason: 1}, p.report
    assert_same_bytes(got, fn(*args))


def test_unclamped_e4m3_cast_is_fused_only_where_it_saturates():
    fn = _mx_near_miss(clamp=False)
    args = mx_inputs(torch.bfloat16)
    p, gm, got = _run(fn, args)
    if cast_saturates(FP8):
        assert op_counts(gm) == {"rms_norm_mxfp8_quant": 1}, p.report
    else:
        assert p.report.refusals_per_reason() == {"no_clamp": 1}, p.report
    assert_same_bytes(got, fn(*args))


def test_mx_after_f_rms_norm_in_bf16_and_with_other_readers_is_refused():
    def functional(x, r, w, s):
        return corpus.q_torchao_mxfp8_floor(corpus.norm_functional(x, w, 1e-6), s)

    def other_reader(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        return (*corpus.q_torchao_mxfp8_floor(y, s), y * 2)

    for fn, reason in ((functional, "mx_rounding_points_differ"), (other_reader, "norm_output_has_other_users")):
        reason = reason if cast_saturates(FP8) else "no_clamp"  # refused earlier on torch < 2.12
        p, gm, _ = _run(fn, mx_inputs(torch.bfloat16))
        assert op_counts(gm) == {} and p.report.refusals_per_reason() == {reason: 1}, p.report


def test_auto_leaves_mx_to_inductor():
    fn = corpus.Case("llama", "torchao_mxfp8_floor").fn()
    p, gm, _ = _run(fn, mx_inputs(torch.bfloat16), native="auto")
    reason = "native_policy_not_faster" if cast_saturates(FP8) else "no_clamp"
    assert op_counts(gm) == {} and p.report.refusals_per_reason() == {reason: 1}, p.report


# --- torchao's own functions, traced --------------------------------------------------------------


def _torchao():
    pytest.importorskip("torchao.prototype.mx_formats", reason="torchao is not installed ([hf] extra)")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

    return to_mx, nvfp4_quantize, ScaleCalculationMode


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize(
    "mode, swizzled, reason",
    [("FLOOR", False, None), ("CEIL", False, None), ("FLOOR", True, None), ("RCEIL", False, None)],
    ids=["floor", "ceil", "floor_swizzled", "rceil"],
)
def test_torchao_to_mx_as_torchao_writes_it(mode, swizzled, reason, residual):
    to_mx, _, mode_enum = _torchao()

    def fn(x, r, w, s):
        if residual:
            x, r = corpus.residual_hf(x, r)
        scale, q = to_mx(corpus.norm_llama(x, w, 1e-6), FP8, 32, getattr(mode_enum, mode), swizzled)
        return (scale, q, r) if residual else (scale, q)

    args = mx_inputs(torch.bfloat16, rows=16)
    p, gm, got = _run(fn, args)
    if reason is None and mode != "RCEIL" and not cast_saturates(FP8):
        reason = "no_clamp"  # torch < 2.12: the unclamped cast does not saturate (RCEIL clamps)
    if reason:
        assert op_counts(gm) == {} and p.report.refusals_per_reason() == {reason: 1}, p.report
    else:
        name = ("fused_add_" if residual else "") + "rms_norm_mxfp8_quant"
        # swizzled: torchao's own to_blocked (plain torch) rearranges our op's row-major scales
        assert op_counts(gm) == {name: 1}, p.report
    assert_same_bytes(got, fn(*args))


@pytest.mark.parametrize("kind", ["mxfp4", "nvfp4"])
def test_torchao_fp4_quantizers_are_refused(kind):
    to_mx, nvfp4_quantize, mode_enum = _torchao()

    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        if kind == "mxfp4":
            return to_mx(y, torch.float4_e2m1fn_x2, 32, mode_enum.FLOOR)
        return nvfp4_quantize(y, 16, s)

    args = mx_inputs(torch.bfloat16)
    p, gm, got = _run(fn, args)
    assert op_counts(gm) == {} and p.report.refusals_per_reason() == {"fp4_nan_encoding_differs": 1}, p.report
    assert_same_bytes(got, fn(*args))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("elem", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_rceil_via_log2_is_exact_for_every_16_bit_absmax(dtype, elem):
    """Why RCEIL after a 16-bit norm output is fused: for every non-negative 16-bit absmax (zero,
    subnormals, Inf and NaN included), torchao's fallback byte (ceil(log2(amax / qmax)) in fp32,
    clamped to [-127, 127] and biased; NaN 255, Inf 254) is the exact round-up our op computes."""
    from fusion_kernels import microscaling as M

    bits = torch.arange(0, 1 << 15, dtype=torch.int32).to(torch.int16)  # every sign-0 pattern
    amax = bits.view(dtype).float().reshape(-1, 1)
    qmax = torch.finfo(elem).max
    descale = amax / qmax
    exponent = (torch.clamp(torch.ceil(torch.log2(descale)), min=-127, max=127) + 127).to(torch.uint8)
    spelled = torch.where(torch.isnan(descale), 255, torch.where(torch.isinf(descale), 254, exponent)).to(torch.uint8)
    exact = M.mx_block_scale(amax, elem, "rceil").reshape(-1, 1)
    differ = (spelled != exact).nonzero()
    assert differ.numel() == 0, [(amax[i].item(), spelled[i].item(), exact[i].item()) for i, _ in differ[:5]]


def test_rceil_in_an_fp32_model_is_refused():
    """An fp32 norm output has fp32 block absmaxes, where log2 rounding can keep a scale a few ulps
    above a power of two below it (test_rceil_via_log2_differs_from_exact_rounding)."""
    fn = corpus.Case("llama", "torchao_mxfp8_rceil").fn()
    args = mx_inputs(torch.float32)
    p, gm, got = _run(fn, args)
    assert op_counts(gm) == {} and p.report.refusals_per_reason() == {"rceil_float_log2": 1}, p.report
    assert_same_bytes(got, fn(*args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rceil_log2_is_exact_at_powers_of_two_on_the_gpu():
    """The RCEIL fusion's one assumption about the device: log2 of a power of two is exact there
    (eager and as Inductor compiles it), so a 16-bit absmax over 7 * 2 ** k gives the exact byte."""
    k = torch.arange(-149, 128, device="cuda", dtype=torch.float32)
    # The powers of two made on the CPU, exactly (on an H200, CUDA's exp2 missed subnormal ones).
    x = torch.exp2(k.cpu()).cuda()
    assert bool((torch.frexp(x.cpu()).mantissa == 0.5).all()), "powers of two"
    for f in (torch.log2, torch.compile(torch.log2, dynamic=False)):
        assert torch.equal(torch.ceil(f(x)), k), f"{f}: log2 of a power of two is not exact on this device"
