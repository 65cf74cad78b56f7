# SPDX-License-Identifier: Apache-2.0
"""The pass on real spellings (corpus.py): which ones fuse, and that each fused one computes what
the spelling computes within the README's equivalence rule, on ordinary rows, an all-zero row
and an outlier row; the near misses are refused with a reason that names the difference."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree

from fusion_kernels.testing import SCALE_RTOL, assert_quant_close, op_counts, quant_steps
from fusion_passes import FusionPass

_spec = importlib.util.spec_from_file_location("fusion_corpus", Path(__file__).with_name("corpus.py"))
corpus = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = corpus  # its dataclasses look their module up there
_spec.loader.exec_module(corpus)

#: Spellings the kernels do not reproduce, and why (everything else in CASES must fuse).
REFUSED: dict[str, str] = {}


#: Refused in fp16 only: F.rms_norm rounds once where our op rounds twice, which moves fp16
#: subnormal norm outputs (rows or groups of tiny values) by more than a step once a dynamic scale
#: amplifies them.
ROUNDED_ONCE = {"functional", "gemma", "gemma3n", "olmo2", "sqrt_div"}  # the weight applied in fp32, one cast
REFUSED_FP16 = {
    c.id: "rounding_points_differ_fp16"
    for c in corpus.CASES
    if c.norm in ROUNDED_ONCE and c.quant not in ("vllm_static", "ct_static_fp8")
}


def _split(outs, n_quant_outputs):
    return list(outs[:n_quant_outputs]), list(outs[n_quant_outputs:])


def assert_equivalent(got, expected, model_dtype):
    """Quantized tensors within one step on at most 5% of the elements whose scale equals the
    spelling's (where a scale differs within its tolerance, compared dequantized), scales within
    two roundings of the model dtype, NaN where the spelling has NaN, everything else exact."""
    got, expected = pytree.tree_leaves(got), pytree.tree_leaves(expected)
    assert len(got) == len(expected)
    i = 0
    while i < len(got):
        a, e = got[i], expected[i]
        assert a.dtype == e.dtype and a.shape == e.shape, (i, a.dtype, e.dtype, a.shape, e.shape)
        if a.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8):
            sc = None
            if (
                i + 1 < len(got)
                and got[i + 1].is_floating_point()
                and got[i + 1].dtype.itemsize > 1
                and (got[i + 1].numel() < a.numel())
            ):
                sa, se = got[i + 1], expected[i + 1]
                assert sa.shape == se.shape and sa.dtype == se.dtype
                nan = torch.isnan(se.float())
                assert torch.equal(torch.isnan(sa.float()), nan), "NaN scales differ"
                torch.testing.assert_close(sa.float()[~nan], se.float()[~nan], rtol=SCALE_RTOL[model_dtype], atol=0)
                sc = (_per_element(sa, a), _per_element(se, e))
                i += 1
            assert_quant_close(a, e, 0.05, what=f"output {i}", scales=sc)
            qa, qe = a.float(), e.float()
            if a.dtype != torch.int8:
                assert torch.equal(torch.isnan(qa), torch.isnan(qe)), "NaN outputs differ"
        else:
            torch.testing.assert_close(a, e, rtol=0, atol=0)
        i += 1


def _per_element(scales, q):
    """Scales of any layout ([..., 1], [..., G], [rows * G, 1], one for the tensor) as one value
    per element of q."""
    if scales.numel() == 1:
        return scales.reshape(()).expand(q.shape)
    groups = scales.numel() // (q.numel() // q.shape[-1])
    flat = scales.reshape(-1, groups)
    return flat.repeat_interleave(q.shape[-1] // groups, dim=-1).reshape(q.shape)


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_real_spelling(case, dtype):
    fn = case.fn()
    args = corpus.inputs(dtype)
    p = FusionPass(native="always")
    gm, got = corpus.run_pass(fn, args, p)
    expected = fn(*args)
    refused = REFUSED.get(case.id) or (REFUSED_FP16.get(case.id) if dtype == torch.float16 else None)
    if refused:
        assert op_counts(gm) == {}, p.report
        assert p.report.refusals_per_reason() == {refused: 1}, p.report
        return
    counts = op_counts(gm)
    assert sum(counts.values()) == 1 and p.report.fused == 1 and p.report.refused == 0, (counts, p.report)
    assert not any(n.target is torch.ops.aten.rsqrt.default for n in gm.graph.nodes)
    assert_equivalent(got, expected, dtype)


def test_corpus_reaches_six_sources_and_fuses_nine_in_ten():
    sources = {c.quant.split("_")[0] for c in corpus.CASES} | {c.norm for c in corpus.CASES}
    assert len(corpus.CASES) >= 30
    assert {"vllm", "sglang", "torchao", "ct", "fbgemm", "deepseek"} <= sources
    assert len(REFUSED) <= 0.1 * len(corpus.CASES)


# --- near misses: refused, and left computing what they compute ---------------------------------


def _refused(fn, dtype=torch.bfloat16):
    args = corpus.inputs(dtype)
    p = FusionPass(native="always")
    gm, got = corpus.run_pass(fn, args, p)
    assert op_counts(gm) == {}, p.report
    for a, e in zip(pytree.tree_leaves(got), pytree.tree_leaves(fn(*args))):
        assert torch.equal(
            a.view(torch.uint8) if a.dtype.itemsize == 1 else a, e.view(torch.uint8) if e.dtype.itemsize == 1 else e
        )
    return p.report.refusals_per_reason()


def test_layer_norms_are_not_rmsnorms():
    def layer_norm(x, r, w, s):
        return corpus.q_vllm_per_token(torch.nn.functional.layer_norm(x, (x.shape[-1],), w, None, 1e-6), s)

    def cohere(x, r, w, s):
        """huggingface/transformers models/cohere/modeling_cohere.py CohereLayerNorm: mean-subtracted."""
        h = x.to(torch.float32)
        mean = h.mean(-1, keepdim=True)
        variance = (h - mean).pow(2).mean(-1, keepdim=True)
        h = (h - mean) * torch.rsqrt(variance + 1e-5)
        return corpus.q_vllm_per_token((w.to(torch.float32) * h).to(x.dtype), s)

    assert _refused(layer_norm) == {}
    assert _refused(cohere) == {}


def test_absmax_over_another_axis_is_refused():
    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        amax = y.abs().amax(dim=0, keepdim=True).float()
        scale = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
        return (y.float() / scale).clamp(-448, 448).to(corpus.FP8), scale

    assert _refused(fn) == {"absmax_not_over_last_dim": 1}


def test_another_clamp_bound_is_refused():
    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        return (y.float() * s.reciprocal()).clamp(-224.0, 224.0).to(corpus.FP8)

    assert _refused(fn) == {"clamp_bound_mismatch": 1}


def test_a_divisor_that_is_not_a_constant_is_refused():
    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        amax = y.abs().amax(dim=-1, keepdim=True).float()
        scale = amax / (s * 1e4)  # the divisor is a tensor input
        return (y.float() / scale).clamp(-448, 448).to(corpus.FP8), scale

    assert _refused(fn) == {"scale_not_recognised": 1}


def test_int8_quotient_rounded_to_the_model_dtype_only_with_a_dynamic_row_or_group_scale():
    """compressed-tensors' INT8 division in the model dtype fuses with a dynamic scale per row
    (the rule op's round_quotient); with a static scale or one scale per tensor no op rounds the
    quotient, so those are refused."""

    def static(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        scaled = (y / s).to(y.dtype)
        return torch.round(torch.clamp(scaled, -128, 127)).to(torch.int8)

    def per_tensor(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        scale = y.abs().amax() / 127.5
        return torch.round(torch.clamp(y / scale, -128, 127)).to(torch.int8), scale

    assert _refused(static) == {"int8_scaled_in_model_dtype": 1}
    assert _refused(per_tensor) == {"int8_scaled_in_model_dtype": 1}


@pytest.mark.parametrize("quant", ["ct_token_fp8", "ct_token_int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_quotient_in_the_model_dtype_is_reproduced(quant, dtype):
    """compressed-tensors divides in the model dtype: the fused rule op rounds its quotient there
    too (round_quotient), so q equals the spelling's except where y * (1 / s) and y / s round to
    different 16-bit values (rare), not merely within the equivalence rule: with the fp32
    quotient 4% of the bf16 FP8 values and 7% of the INT8 ones differ by a step."""
    case = corpus.Case("llama", quant)
    fn, args = case.fn(), corpus.inputs(dtype)
    p = FusionPass(native="always")
    gm, got = corpus.run_pass(fn, args, p)
    (node,) = [n for n in gm.graph.nodes if "dynamic_quant" in str(n.target)]
    assert node.args[-1] is True, node.args
    q, expected = got[0], fn(*args)[0]
    # (Values, not bytes: the spelling's `+ zero_point` turns a -0.0 into +0.0.)
    same = (q.float() == expected.float()).float().mean().item()
    assert same >= 0.999, f"{quant} {dtype}: {same:.5f} of the values equal the spelling's"


def test_a_scale_from_another_tensor_is_refused():
    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        amax = x.abs().amax(dim=-1, keepdim=True).float()  # the norm's input, not its output
        scale = amax / 448.0
        return (y.float() / scale).clamp(-448, 448).to(corpus.FP8), scale

    assert _refused(fn) == {"scale_reads_another_tensor": 1}


def test_a_static_scale_without_a_clamp_is_refused():
    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        return (y.float() / s).to(corpus.FP8)  # out-of-range values become NaN here

    assert _refused(fn) == {"no_clamp": 1}


def test_different_quantizers_of_one_norm_are_refused():
    def fn(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        return (*corpus.q_vllm_per_token(y, s), corpus.q_vllm_static(y, s))

    assert _refused(fn) == {"different_quantizers_of_one_norm": 1}


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("quant", ["vllm_per_token", "torchao_per_row", "torchao_per_tensor", "vllm_group128"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_norm_output_with_another_consumer_fuses_into_the_variant(quant, residual, dtype):
    """y read by a 16-bit branch (a router, a residual path) and quantized: one op returns both,
    and y is bit for bit what the spelling computes from our norm's arithmetic (Hugging Face's
    rounding points); the quantized outputs within the equivalence rule."""

    def fn(x, r, w, s):
        if residual:
            x, r = corpus.residual_hf(x, r)
        y = corpus.norm_llama(x, w, 1e-6)
        return (*corpus.QUANTS[quant](y, s), y * 2, *((r,) if residual else ()))

    args = corpus.inputs(dtype)
    p = FusionPass(native="always")
    gm, got = corpus.run_pass(fn, args, p)
    name = ("fused_add_" if residual else "") + "rms_norm_dynamic_quant_with_norm_out"
    assert op_counts(gm) == {name: 1}, p.report
    (site,) = p.report.sites
    assert site.note == "normalised output returned too"
    expected = fn(*args)
    assert_equivalent(got[:2], expected[:2], dtype)
    # y * 2 from the variant's y: the reference norm's y up to its reduction order (ACT_TOL)
    from fusion_kernels.testing import ACT_TOL

    torch.testing.assert_close(got[2], expected[2], rtol=ACT_TOL[dtype], atol=ACT_TOL[dtype])
    if residual:
        torch.testing.assert_close(got[3], expected[3], rtol=0, atol=0)


def test_norm_output_with_another_consumer_is_refused_where_the_variant_differs():
    def static(x, r, w, s):
        y = corpus.norm_llama(x, w, 1e-6)
        return corpus.q_vllm_static(y, s), y * 2

    def functional(x, r, w, s):  # F.rms_norm rounds y once; the variant's y is rounded twice
        y = corpus.NORMS["functional"](x, w, 1e-6)
        return (*corpus.q_vllm_per_token(y, s), y * 2)

    for fn in (static, functional):
        assert _refused(fn) == {"norm_output_has_other_users": 1}


def test_quant_steps_helper_sees_nan():
    a = torch.tensor([float("nan"), 1.0]).to(torch.float8_e4m3fn)
    assert quant_steps(a, a).max() == 0


# --- the libraries' own functions, traced (where they install on CPU) ----------------------------


def _library_case(make_quant, dtype=torch.bfloat16):
    def fn(x, r, w, s):
        return make_quant(corpus.norm_llama(x, w, 1e-6))

    args = corpus.inputs(dtype)
    p = FusionPass(native="always")
    gm, got = corpus.run_pass(fn, args, p)
    return p, gm, got, fn(*args)


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_torchao_float8_quantizers_as_torchao_writes_them(granularity):
    qp = pytest.importorskip("torchao.quantization.quant_primitives", reason="torchao is not installed ([hf] extra)")

    def quant(y):
        block = [1, y.shape[-1]] if granularity == "row" else list(y.shape)
        scale = qp._choose_scale_float8(y, block_size=block, float8_dtype=torch.float8_e4m3fn)
        return qp._quantize_affine_float8(y, scale, torch.float8_e4m3fn), scale

    p, gm, got, expected = _library_case(quant)
    assert op_counts(gm) == {"rms_norm_dynamic_quant": 1}, p.report
    if granularity == "tensor":  # one scale for the whole tensor: the rule op's group_size -1
        (node,) = [n for n in gm.graph.nodes if "dynamic_quant" in str(n.target)]
        assert node.args[4] == -1, node.args
    assert_equivalent(got, expected, torch.bfloat16)


@pytest.mark.parametrize("kind", ["float", "int"])
def test_compressed_tensors_token_quantizers_as_the_library_writes_them(kind):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed ([hf] extra)")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    qa = QuantizationArgs(num_bits=8, type=kind, strategy="token", dynamic=True, symmetric=True)
    qdtype = torch.float8_e4m3fn if kind == "float" else torch.int8

    def quant(y):
        scale, zp = calculate_qparams(y.amin(dim=-1, keepdim=True), y.amax(dim=-1, keepdim=True), qa)
        return quantize(y, scale, zp, qa, dtype=qdtype), scale

    p, gm, got, expected = _library_case(quant)
    assert op_counts(gm) == {"rms_norm_dynamic_quant": 1}, p.report
    if kind == "int":
        # The library divides in the model dtype: the quotient is rounded to bf16 before it is
        # rounded to an integer; the rule op does the same (round_quotient).
        (node,) = [n for n in gm.graph.nodes if "dynamic_quant" in str(n.target)]
        assert node.args[-1] is True, node.args
    assert_equivalent(got, expected, torch.bfloat16)
