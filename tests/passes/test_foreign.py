# SPDX-License-Identifier: Apache-2.0
"""Other libraries' opaque ops (vLLM's ``_C`` norm/quant ops, FBGEMM's ``triton::quantize_fp8_row``)
after an RMSNorm, on captured graphs.

The ops are registered here under the real namespaces, names and schemas (vLLM
csrc/torch_bindings.cpp and csrc/libtorch_stable/torch_bindings.cpp; FBGEMM
fbgemm_gpu/experimental/gemm/triton_gemm/fp8_gemm.py), with CPU implementations of their
arithmetic as those sources describe it, so the post-grad graphs look like the real ones: the
``_C`` ops mutate out-buffers and appear under ``auto_functionalized_v2`` (``auto_functionalized``
when v1 is forced). Each test registers them through a ``torch.library.Library`` that is destroyed
afterwards, so no other test sees them.
"""

import contextlib
import operator

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.decomposition import select_decomp_table

from fusion_kernels.testing import SCALE_RTOL, assert_quant_close, op_counts, scale_mask
from fusion_passes import FusionPass
from fusion_passes import foreign as F

FP8 = torch.float8_e4m3fn
EPS = 1e-6
AF = (torch.ops.higher_order.auto_functionalized, torch.ops.higher_order.auto_functionalized_v2)


@pytest.fixture
def no_rule_op():
    # Decided when the test runs: the library is loaded by then (not yet at collection).
    if hasattr(torch.ops.fusion_kernels, "rms_norm_dynamic_quant"):
        pytest.skip("the loaded library defines the rule ops: such sites are fused (the tests taking rule_op)")


VLLM_SCHEMAS = {
    "rms_norm": "rms_norm(Tensor! result, Tensor input, Tensor weight, float epsilon) -> ()",
    "fused_add_rms_norm": "fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor weight, float epsilon) -> ()",
    "static_scaled_fp8_quant": (
        "static_scaled_fp8_quant(Tensor! result, Tensor input, Tensor scale, (int, int)? group_shape=None) -> ()"
    ),
    "dynamic_per_token_scaled_fp8_quant": (
        "dynamic_per_token_scaled_fp8_quant(Tensor! result, Tensor input, Tensor! scale, Tensor? scale_ub) -> ()"
    ),
    "per_token_group_fp8_quant": (
        "per_token_group_fp8_quant(Tensor input, Tensor! output_q, Tensor! output_s, int group_size, float eps, "
        "float fp8_min, float fp8_max, bool scale_ue8m0, bool dummy_is_scale_transposed, "
        "bool dummy_is_tma_aligned) -> ()"
    ),
    "per_token_group_fp8_quant_packed": (
        "per_token_group_fp8_quant_packed(Tensor input, Tensor! output_q, Tensor! output_s_packed, int group_size, "
        "float eps, float fp8_min, float fp8_max) -> ()"
    ),
}
FBGEMM_SCHEMA = (
    "quantize_fp8_row(Tensor a, Tensor? scale_ub=None, Tensor? zero_start_index_M=None, bool use_triton=True, "
    "Device? output_device=None) -> (Tensor, Tensor)"
)


# --- the foreign ops' arithmetic, as their sources describe it ---------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()  # vLLM: the fp32 variance, y rounded to the input dtype, then times the weight
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def _vllm_rms_norm(result, input, weight, epsilon):
    result.copy_(_rms(input, weight, epsilon))


def _vllm_fused_add_rms_norm(input, residual, weight, epsilon):
    z = input + residual  # rounded to the model dtype; the norm reads the rounded sum
    residual.copy_(z)
    input.copy_(_rms(z, weight, epsilon))


def _vllm_static(result, input, scale, group_shape=None):
    result.copy_((input.float() * (1.0 / scale.float())).clamp(-448.0, 448.0).to(result.dtype))


def _vllm_per_token(result, input, scale, scale_ub):
    amax = input.float().abs().amax(-1, keepdim=True)
    if scale_ub is not None:
        amax = amax.clamp(max=float(scale_ub))
    s = torch.clamp(amax / 448.0, min=1.0 / (448.0 * 512.0))
    result.copy_((input.float() / s).clamp(-448.0, 448.0).to(result.dtype))
    scale.copy_(s.reshape(scale.shape))


def _vllm_group(input, output_q, output_s, group_size, eps, fp8_min, fp8_max, scale_ue8m0, transposed, tma):
    x = input.float().reshape(*input.shape[:-1], -1, group_size)
    s = x.abs().amax(-1, keepdim=True).clamp(min=eps) / fp8_max
    if scale_ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s.abs().clamp(min=1e-10))))
    output_q.copy_((x / s).clamp(fp8_min, fp8_max).to(output_q.dtype).reshape(input.shape))
    output_s.copy_(s.squeeze(-1).reshape(output_s.shape))


def _vllm_group_packed(input, output_q, output_s_packed, group_size, eps, fp8_min, fp8_max):
    """vLLM's DeepGEMM path on sm_100: power-of-two scales as their UE8M0 exponent bytes, four
    groups to an int32 (group 4k + j in byte j), into the [rows, ceil(groups / 4)] buffer the
    caller allocated (MN-major; the op writes the real rows only)."""
    hidden = input.shape[-1]
    groups = -(-hidden // group_size)  # vLLM's op requires H % group_size == 0; the last group
    x = input.float().reshape(-1, hidden)  # padded with zeros here, so a refused graph still runs
    x = torch.nn.functional.pad(x, (0, groups * group_size - hidden)).reshape(x.shape[0], groups, group_size)
    s = x.abs().amax(-1, keepdim=True).clamp(min=eps) / fp8_max
    s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (x / s).clamp(fp8_min, fp8_max).to(output_q.dtype).reshape(x.shape[0], -1)[:, :hidden]
    output_q.copy_(q.reshape(input.shape))
    exponent = (s.squeeze(-1).view(torch.int32).long() >> 23) & 0xFF  # [rows, groups]
    k = output_s_packed.shape[-1]
    exponent = torch.nn.functional.pad(exponent, (0, 4 * k - groups)).reshape(-1, k, 4)  # missing groups: 0
    words = sum(exponent[..., j] << (8 * j) for j in range(4))
    words = torch.where(words >= 2**31, words - 2**32, words)  # the int32 of those four bytes
    output_s_packed.copy_(words.to(torch.int32))


def _vllm_group_packed_fake(input, output_q, output_s_packed, group_size, eps, fp8_min, fp8_max):
    return None  # writes its out-buffers only


def _fbgemm_row(a, scale_ub=None, zero_start_index_M=None, use_triton=True, output_device=None):
    row_max = a.abs().amax(-1)
    row_max = row_max.clamp(min=1e-12, max=float(scale_ub)) if scale_ub is not None else row_max.clamp(min=1e-12)
    inv = 448.0 / row_max.float()
    inv = torch.where(inv == float("inf"), torch.ones_like(inv), inv)
    return (a * inv[..., None]).to(FP8), (1 / inv).reshape(a.shape[:-1])


def _fbgemm_row_fake(a, scale_ub=None, zero_start_index_M=None, use_triton=True, output_device=None):
    return torch.empty(a.shape, dtype=FP8, device=a.device), torch.empty(a.shape[:-1], device=a.device)


@contextlib.contextmanager
def foreign_ops(vllm: bool = True, fbgemm: bool = True):
    """vLLM's and/or FBGEMM's ops, registered for the duration of the block only."""
    libs = []
    try:
        if vllm:
            libs.append(torch.library.Library("_C", "FRAGMENT"))
            impls = {"rms_norm": _vllm_rms_norm, "fused_add_rms_norm": _vllm_fused_add_rms_norm,
                     "static_scaled_fp8_quant": _vllm_static, "dynamic_per_token_scaled_fp8_quant": _vllm_per_token,
                     "per_token_group_fp8_quant": _vllm_group,
                     "per_token_group_fp8_quant_packed": _vllm_group_packed}  # fmt: skip
            for name, schema in VLLM_SCHEMAS.items():
                libs[-1].define(schema)
                libs[-1].impl(name, impls[name], "CPU")
            torch.library.register_fake("_C::per_token_group_fp8_quant_packed", _vllm_group_packed_fake, lib=libs[-1])
        if fbgemm:
            libs.append(torch.library.Library("triton", "FRAGMENT"))
            libs[-1].define(FBGEMM_SCHEMA)
            libs[-1].impl("quantize_fp8_row", _fbgemm_row, "CPU")
            torch.library.register_fake("triton::quantize_fp8_row", _fbgemm_row_fake, lib=libs[-1])
        yield
    finally:
        for lib in libs:
            lib._destroy()


@pytest.fixture
def ops():
    with foreign_ops():
        yield


RULE_SCHEMAS = {  # the rule ops' schemas (the library defines them; see the README's op table)
    "rms_norm_dynamic_quant": (
        "rms_norm_dynamic_quant(Tensor input, Tensor weight, float epsilon, ScalarType quant_dtype, int group_size, "
        "float divisor, float absmax_floor, float scale_floor, float zero_scale, ScalarType scale_dtype, "
        "bool scale_ue8m0, bool round_quotient=False) -> (Tensor out, Tensor scales)"
    ),
    "fused_add_rms_norm_dynamic_quant": (
        "fused_add_rms_norm_dynamic_quant(Tensor input, Tensor residual, Tensor weight, float epsilon, "
        "ScalarType quant_dtype, int group_size, float divisor, float absmax_floor, float scale_floor, "
        "float zero_scale, ScalarType scale_dtype, bool scale_ue8m0, bool round_quotient=False) "
        "-> (Tensor out, Tensor scales, Tensor residual_out)"
    ),
}


@pytest.fixture
def rule_op():
    """The fused rule ops: the library's, or (until it defines them) stand-ins computing the
    reference, registered for this test only, so the rewrite is checked against the spec either way."""
    if hasattr(torch.ops.fusion_kernels, "rms_norm_dynamic_quant"):
        yield "library"
        return
    from fusion_kernels import fake, reference
    from fusion_passes.registry import get_registry

    if not all(hasattr(reference, n) and hasattr(fake, n) for n in RULE_SCHEMAS):
        pytest.skip("neither the library nor fusion_kernels.reference defines the rule ops")
    lib = torch.library.Library("fusion_kernels", "FRAGMENT")
    try:
        for name, schema in RULE_SCHEMAS.items():
            lib.define(schema)
            lib.impl(name, getattr(reference, name), "CPU")
            torch.library.register_fake(f"fusion_kernels::{name}", getattr(fake, name), lib=lib)
        yield "reference"
    finally:
        lib._destroy()
        get_registry(refresh=True)


def run_pass(fn, args, fusion_pass, v1=False):
    """The forward graph of ``fn`` as the post-grad pass sees it (AOTAutograd, Inductor's
    decompositions), rewritten by ``fusion_pass`` and run. Returns (graph module, outputs)."""
    graphs = []

    def fw(gm, example_inputs):
        fusion_pass(gm.graph)
        gm.recompile()
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    with torch._inductor.config.patch(enable_auto_functionalized_v2=not v1):
        out = torch.compile(fn, backend=aot_autograd(fw_compiler=fw, decompositions=select_decomp_table()))(*args)
    torch._dynamo.reset()
    assert len(graphs) == 1
    return graphs[0], out


def clones(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def n_auto_functionalized(gm) -> int:
    return sum(n.op == "call_function" and n.target in AF for n in gm.graph.nodes)


def assert_equivalent(got, expected, model_dtype=torch.bfloat16, scales_at=(1,), exact=()):
    """The README's rule: quantized values (output 0) within one step on at most 5% of the
    elements whose scale equals the reference's, scales within two roundings of the model dtype;
    outputs in ``exact`` (the new residual) bit for bit."""
    q, q_ref = got[0], expected[0]
    assert q.dtype == q_ref.dtype and q.shape == q_ref.shape
    same = None
    for i in scales_at:
        torch.testing.assert_close(got[i], expected[i], rtol=SCALE_RTOL[model_dtype], atol=0)
        per_row = got[i].dim() == q.dim() - 1  # FBGEMM's [T] scales: one per row
        same = scale_mask(*((t.unsqueeze(-1) if per_row else t) for t in (got[i], expected[i])), q.shape)
    for i in exact:
        torch.testing.assert_close(got[i], expected[i], rtol=0, atol=0)
    assert_quant_close(q, q_ref, 0.05, same_scale=same)


def inputs(tokens=15, hidden=256, dtype=torch.bfloat16, seed=0, rows="ordinary"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    if rows == "special":  # an all-zero row and an outlier row (one element ~3e4, the rest ~1e-3)
        x[0] = 0
        x[1] = 1e-3 * torch.randn(hidden, generator=g)
        x[1, 7] = 3e4
    r = torch.randn(tokens, hidden, generator=g).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype)
    return x, r, w


# --- models written the way vLLM and torchao write them -----------------------------------------


def vllm_static(x, r, w, s):
    h = x * 2  # an intermediate, as the o_proj output is in a real layer
    y = torch.empty_like(h)
    torch.ops._C.rms_norm(y, h, w, EPS)
    out = torch.empty(h.shape, dtype=FP8)
    torch.ops._C.static_scaled_fp8_quant(out, y, s)
    return (out,)


def vllm_add_per_token(x, r, w, s):
    h = x * 2
    torch.ops._C.fused_add_rms_norm(h, r, w, EPS)  # h := norm(h + r), r := h + r (r is a graph input)
    out = torch.empty(h.shape, dtype=FP8)
    scales = torch.empty(h.shape[0], 1)
    torch.ops._C.dynamic_per_token_scaled_fp8_quant(out, h, scales, None)
    return out, scales, r


def vllm_group(column_major=False, ue8m0=False, eps=1e-10, group=128, tma=False):
    def fn(x, r, w, s):
        h = x * 2
        torch.ops._C.fused_add_rms_norm(h, r, w, EPS)
        out = torch.empty(h.shape, dtype=FP8)
        groups = h.shape[-1] // group
        if tma:  # vLLM's tma_aligned_scales: column-major, the columns padded to 4 rows
            m = h.shape[0]
            scales = torch.empty_strided((m, groups), (1, (m + 3) // 4 * 4))
        else:
            scales = torch.empty(groups, h.shape[0]).t() if column_major else torch.empty(h.shape[0], groups)
        torch.ops._C.per_token_group_fp8_quant(h, out, scales, group, eps, -448.0, 448.0, ue8m0, False, False)
        return out, scales, r

    return fn


def hf_rms_norm(x, w, eps=EPS):  # Hugging Face's LlamaRMSNorm.forward
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def torchao_per_row(x, r, w, s):  # torchao PerRow on sm_90+ with MSLK: the opaque row quant
    return torch.ops.triton.quantize_fp8_row(hf_rms_norm(x, w))


def ours_then_fbgemm(x, r, w, s):
    return torch.ops.triton.quantize_fp8_row(torch.ops.fusion_kernels.rms_norm(x, w, EPS))


# --- vLLM's _C ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
@pytest.mark.parametrize("rows", ["ordinary", "special"])
def test_vllm_rms_norm_static_is_fused(ops, v1, rows):
    x, r, w = inputs(rows=rows)
    args = (x, r, w, torch.tensor([0.02]))
    p = FusionPass()
    gm, got = run_pass(vllm_static, clones(args), p, v1=v1)
    assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}, p.report
    assert n_auto_functionalized(gm) == 0
    assert not any(n.target is torch.ops.aten.empty.memory_format for n in gm.graph.nodes)  # buffers gone
    assert [s.pattern for s in p.report.sites] == ["foreign:_C.rms_norm+_C.static_scaled_fp8_quant"]
    assert_equivalent(got, vllm_static(*clones(args)), scales_at=())


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
@pytest.mark.parametrize("rows", ["ordinary", "special"])
def test_vllm_fused_add_per_token_rewires_the_mutated_residual(ops, v1, rows):
    x, r, w = inputs(rows=rows)
    args = (x, r, w, None)
    p = FusionPass()
    got_args, ref_args = clones(args), clones(args)
    gm, got = run_pass(vllm_add_per_token, got_args, p, v1=v1)
    assert op_counts(gm) == {"fused_add_rms_norm_dynamic_per_token_quant": 1}, p.report
    assert n_auto_functionalized(gm) == 0
    expected = vllm_add_per_token(*ref_args)
    assert_equivalent(got, expected, exact=(2,))
    # The residual was a graph input that the op mutates: the write-back reads the fused op's output.
    torch.testing.assert_close(got_args[1], ref_args[1], rtol=0, atol=0)


def two_layers(x, r, w, s):
    h = x * 2
    torch.ops._C.fused_add_rms_norm(h, r, w, EPS)
    q1 = torch.empty(h.shape, dtype=FP8)
    torch.ops._C.static_scaled_fp8_quant(q1, h, s)
    h2 = (q1.float() * s).to(x.dtype)  # stands in for the layer between the two norms
    torch.ops._C.fused_add_rms_norm(h2, r, w, EPS)  # reads the residual the first one wrote
    q2 = torch.empty(h2.shape, dtype=FP8)
    scales = torch.empty(h2.shape[0], 1)
    torch.ops._C.dynamic_per_token_scaled_fp8_quant(q2, h2, scales, None)
    return q2, scales, r, q1


def test_vllm_two_layers_every_reader_of_the_mutated_buffers_is_rewired(ops):
    x, r, w = inputs()
    args = (x, r, w, torch.tensor(0.02))
    p = FusionPass()
    gm, got = run_pass(two_layers, clones(args), p)
    assert op_counts(gm) == {
        "fused_add_rms_norm_static_fp8_quant": 1,
        "fused_add_rms_norm_dynamic_per_token_quant": 1,
    }, p.report
    assert n_auto_functionalized(gm) == 0
    expected = two_layers(*clones(args))
    assert_quant_close(got[3], expected[3], 0.05)
    # The second layer reads the first layer's residual and q1: compare it on its own inputs.
    assert_equivalent(got[:3], expected[:3], exact=(2,))


@pytest.mark.parametrize("column_major, tma, tokens", [(False, False, 16), (True, False, 16), (True, True, 15)],
                         ids=["row_major", "column_major", "tma_aligned"])  # fmt: skip
@pytest.mark.parametrize("ue8m0", [False, True])
def test_vllm_group_quant_is_fused_with_its_scale_layout(ops, column_major, tma, tokens, ue8m0):
    x, r, w = inputs(tokens=tokens, hidden=512)
    args = (x, r, w, None)
    fn = vllm_group(column_major, ue8m0, tma=tma)
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {"fused_add_rms_norm_per_token_group_quant": 1}, p.report
    expected = fn(*clones(args))
    assert got[1].stride() == expected[1].stride()
    if ue8m0:  # powers of two: a scale either equals the reference's or the whole group is compared
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
        assert_quant_close(got[0], expected[0], 0.05)
        torch.testing.assert_close(got[2], expected[2], rtol=0, atol=0)
    else:
        assert_equivalent(got, expected, exact=(2,))


def test_vllm_group_quant_with_another_floor_is_refused_without_the_rule_op(ops, no_rule_op):
    x, r, w = inputs(tokens=16, hidden=512)
    args = (x, r, w, None)
    fn = vllm_group(eps=1e-4)
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {}
    [site] = p.report.sites
    assert site.detail == "fused_op_missing" and "fused_add_rms_norm_dynamic_quant" in site.note
    torch.testing.assert_close(got[0].float(), fn(*clones(args))[0].float(), rtol=0, atol=0)


def test_vllm_group_quant_with_another_floor_is_fused_into_the_rule_op(ops, rule_op):
    x, r, w = inputs(tokens=16, hidden=512)
    args = (x, r, w, None)
    fn = vllm_group(eps=1e-4)
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {"fused_add_rms_norm_dynamic_quant": 1}, p.report
    assert_equivalent(got, fn(*clones(args)), exact=(2,))


# --- vLLM's group quant with packed UE8M0 scales (its DeepGEMM path on sm_100) -----------------

PACKED = "_C.per_token_group_fp8_quant_packed"


def packed_quant(h, group=128, eps=1e-10, fp8_min=-448.0, fp8_max=448.0, scales="packed"):
    """vLLM's per_token_group_quant_fp8_packed_for_deepgemm: the caller flattens [..., H] to
    [mn, H] and allocates the int32 [mn, ceil(groups / 4)] scales MN-major, TMA-aligned."""
    x = h.reshape(-1, h.shape[-1])
    mn, groups = x.shape[0], -(-x.shape[-1] // group)
    k, padded = (groups + 3) // 4, (mn + 3) // 4 * 4
    q = torch.empty_like(x, dtype=FP8)
    if scales == "packed":
        s = torch.empty_strided((mn, k), (1, padded), dtype=torch.int32)
    elif scales == "float32":
        s = torch.empty_strided((mn, k), (1, padded), dtype=torch.float32)
    else:  # "row_major"
        s = torch.empty((mn, k), dtype=torch.int32)
    torch.ops._C.per_token_group_fp8_quant_packed(x, q, s, group, eps, fp8_min, fp8_max)
    return q, s


def packed_model(norm, **quant):
    def fn(x, r, w, s):
        if norm == "vllm":
            h = x * 2
            y = torch.empty_like(h)
            torch.ops._C.rms_norm(y, h, w, EPS)
            return packed_quant(y, **quant)
        if norm == "vllm_add":
            h = x * 2
            torch.ops._C.fused_add_rms_norm(h, r, w, EPS)  # h := norm(h + r), r := h + r
            return (*packed_quant(h, **quant), r)
        if norm == "ours":
            return packed_quant(torch.ops.fusion_kernels.rms_norm(x, w, EPS), **quant)
        if norm == "hf":
            return packed_quant(hf_rms_norm(x, w), **quant)
        raise ValueError(norm)

    return fn


PACKED_PATTERNS = {
    "vllm": f"foreign:_C.rms_norm+{PACKED}",
    "vllm_add": f"foreign:_C.fused_add_rms_norm+{PACKED}",
    "ours": f"foreign:rms_norm+{PACKED}",
    "hf": f"foreign:native_rms_norm+{PACKED}",
}


def packed_inputs(shape, hidden=640, rows="ordinary"):
    """15 tokens (one padding row in the scales), or [2, 5, H] (10 rows, two padding rows).
    H = 640: 5 groups of 128, the last int32 of each row with three padding bytes. rows="large":
    a weight ~1024, so scales >= 2 (exponent bytes >= 0x80: negative int32 words)."""
    x, r, w = inputs(tokens=15 if shape == "2d" else 10, hidden=hidden, rows="ordinary" if rows == "large" else rows)
    if rows == "large":
        w = w * 1024
    if shape == "3d":
        x, r = x.reshape(2, 5, hidden), r.reshape(2, 5, hidden)
    return x, r, w


def padded_words(s):
    """The whole int32 storage of packed scales: [padded rows, k] (the rows past the real ones are
    the TMA padding, which our op writes as 0)."""
    rows, k = s.shape
    padded = (rows + 3) // 4 * 4
    return torch.as_strided(s, (padded, k), (1, padded))


def assert_packed_equal(got, expected):
    """q bytes and the int32 scales bit for bit, layout included; the residual (if any) too."""
    assert got[0].dtype == expected[0].dtype == FP8 and got[0].shape == expected[0].shape
    assert torch.equal(got[0].view(torch.uint8), expected[0].view(torch.uint8))
    s, e = got[1], expected[1]
    assert s.dtype == e.dtype == torch.int32 and s.shape == e.shape and s.stride() == e.stride()
    assert torch.equal(s, e)  # every byte of the real rows, the padding bytes of the last int32 included
    words = padded_words(s)  # our op owns its storage: the padding rows are there, and zero
    assert torch.equal(words[: s.shape[0]], e) and not words[s.shape[0] :].any()
    for a, b in zip(got[2:], expected[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("shape", ["2d", "3d"])
@pytest.mark.parametrize("norm", list(PACKED_PATTERNS))
def test_vllm_packed_group_quant_is_fused_bit_for_bit(ops, norm, shape):
    x, r, w = packed_inputs(shape)
    args = (x, r, w, None)
    fn = packed_model(norm)
    p = FusionPass(native="always")
    got_args, ref_args = clones(args), clones(args)
    gm, got = run_pass(fn, got_args, p)
    op = ("fused_add_" if norm == "vllm_add" else "") + "rms_norm_per_token_group_quant_packed"
    assert op_counts(gm) == {op: 1}, p.report
    assert n_auto_functionalized(gm) == 0
    assert not any(n.target is torch.ops.aten.empty_strided.default for n in gm.graph.nodes)  # buffers gone
    [site] = p.report.sites
    assert site.fused and site.pattern == PACKED_PATTERNS[norm] and site.detail == op
    expected = fn(*ref_args)
    assert got[1].shape == (10 if shape == "3d" else 15, 2)
    assert_packed_equal(got, expected)
    torch.testing.assert_close(got_args[1], ref_args[1], rtol=0, atol=0)  # the mutated residual input


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", ["ordinary", "special", "large"])
@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
def test_vllm_packed_group_quant_group_sizes(ops, group, rows, v1):
    # 640 = 20 groups of 32 (k = 5, no padding byte), 10 of 64 (k = 3, two), 5 of 128 (k = 2, three);
    # "special": an all-zero row (every group at the 1e-10 floor) and an outlier row; "large":
    # scales >= 2, so some int32 words have their sign bit set.
    x, r, w = packed_inputs("2d", rows=rows)
    args = (x, r, w, None)
    fn = packed_model("vllm_add", group=group)
    p = FusionPass()
    got_args, ref_args = clones(args), clones(args)
    gm, got = run_pass(fn, got_args, p, v1=v1)
    assert op_counts(gm) == {"fused_add_rms_norm_per_token_group_quant_packed": 1}, p.report
    assert n_auto_functionalized(gm) == 0
    expected = fn(*ref_args)
    assert got[1].shape == (15, -(-640 // group // 4))
    assert_packed_equal(got, expected)
    assert (got[1] < 0).any() == (rows == "large")
    torch.testing.assert_close(got_args[1], ref_args[1], rtol=0, atol=0)


@pytest.mark.parametrize("norm,shape", [("vllm_add", "2d"), ("vllm", "3d")])
def test_vllm_packed_group_quant_with_dynamic_tokens(ops, norm, shape):
    # The buffer's TMA-aligned stride is symbolic (4 * ((mn + 3) // 4)): matched all the same.
    x, r, w = packed_inputs(shape)
    args = (x, r, w, None)
    got_args, ref_args = clones(args), clones(args)
    for t in got_args[:2]:
        torch._dynamo.mark_dynamic(t, 0)
    p = FusionPass()
    gm, got = run_pass(packed_model(norm), got_args, p)
    op = ("fused_add_" if norm == "vllm_add" else "") + "rms_norm_per_token_group_quant_packed"
    assert op_counts(gm) == {op: 1}, p.report
    assert_packed_equal(got, packed_model(norm)(*ref_args))


def test_outputs_laid_out_other_than_row_major_must_have_the_same_strides():
    from fusion_passes.patterns import Refusal
    from fusion_passes.patterns.foreign import _view_shape

    ours = torch.empty((2, 16), dtype=torch.int32).t()[:15]  # our packed scales: strides (1, 16)
    assert _view_shape(ours, torch.empty_strided((15, 2), (1, 16), dtype=torch.int32), None, 1) is None
    for other in (torch.empty((2, 15), dtype=torch.int32).t(), torch.empty((15, 2), dtype=torch.int32)):
        with pytest.raises(Refusal) as refusal:  # column-major (1, 15), row-major (2, 1)
            _view_shape(ours, other, None, 1)
        assert refusal.value.reason == "unsupported_scale_layout"


PACKED_REFUSALS = {  # the quant op's arguments -> (the refusal's reason, a word of its note)
    "eps_1e-6": (dict(eps=1e-6), "unsupported_absmax_floor", "1e-06"),
    "range_224": (dict(fp8_min=-224.0, fp8_max=224.0), "fp8_range_differs", "224"),
    "group_96": (dict(group=96), "unsupported_group_size", "96"),
    "group_not_dividing_H": (dict(group=128), "group_size_not_dividing_hidden", "H=320"),
    "float32_scales": (dict(scales="float32"), "unsupported_scale_layout", "float32"),
    "row_major_scales": (dict(scales="row_major"), "unsupported_scale_layout", "strides (2, 1)"),
}


@pytest.mark.parametrize("case", list(PACKED_REFUSALS))
def test_vllm_packed_group_quant_refusals(ops, case):
    quant, reason, word = PACKED_REFUSALS[case]
    x, r, w = packed_inputs("2d", hidden=320 if case == "group_not_dividing_H" else 640)
    if case == "group_96":  # 96 divides 384
        x, r, w = packed_inputs("2d", hidden=384)
    args = (x, r, w, None)
    fn = packed_model("vllm", **quant)
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {} and n_auto_functionalized(gm) == 2
    assert p.report.refusals_per_reason() == {reason: 1}, p.report
    [site] = p.report.sites
    assert site.pattern == f"foreign:_C.rms_norm+{PACKED}" and word in site.note, site.note
    expected = fn(*clones(args))  # the graph is unchanged
    assert torch.equal(got[0].view(torch.uint8), expected[0].view(torch.uint8))
    assert torch.equal(got[1], expected[1])


def test_vllm_packed_group_quant_fnuz_is_refused(ops):
    def fn(x, r, w, s):
        y = torch.empty_like(x)
        torch.ops._C.rms_norm(y, x, w, EPS)
        q = torch.empty_like(y, dtype=torch.float8_e4m3fnuz)
        scales = torch.empty_strided((16, 2), (1, 16), dtype=torch.int32)
        torch.ops._C.per_token_group_fp8_quant_packed(y, q, scales, 128, 1e-10, -224.0, 224.0)
        return q, scales

    x, r, w = inputs(tokens=16, hidden=640)
    p = FusionPass()
    gm, _ = run_pass(fn, (x, r, w, None), p)
    assert op_counts(gm) == {}
    assert p.report.refusals_per_reason() == {"fp8_range_differs": 1}


# --- FBGEMM's row quant -------------------------------------------------------------------------


def hf_add_then_fbgemm(x, r, w, s):
    h = x + r
    q, scales = torch.ops.triton.quantize_fp8_row(hf_rms_norm(h, w))
    return q, scales, h


def vllm_native_add_then_fbgemm(x, r, w, s):  # vLLM RMSNorm.forward_static: the sum in fp32, unrounded
    xf = x.float() + r.float()
    h = xf.to(x.dtype)
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w
    q, scales = torch.ops.triton.quantize_fp8_row(y)
    return q, scales, h


FBGEMM_MODELS = {
    "hf_norm": torchao_per_row,
    "our_norm": ours_then_fbgemm,
    "hf_add_norm": hf_add_then_fbgemm,
    "vllm_fp32_add_norm": vllm_native_add_then_fbgemm,
}
RESIDUAL_MODELS = ("hf_add_norm", "vllm_fp32_add_norm")


@pytest.mark.parametrize("model", list(FBGEMM_MODELS))
def test_fbgemm_row_quant_without_the_rule_op_is_refused_naming_it(ops, no_rule_op, model):
    fn = FBGEMM_MODELS[model]
    x, r, w = inputs()
    args = (x, r, w, None)
    p = FusionPass(native="always")
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == ({"rms_norm": 1} if model == "our_norm" else {})
    [site] = p.report.sites
    assert not site.fused and site.detail == "fused_op_missing"
    op = "fused_add_rms_norm_dynamic_quant" if model in RESIDUAL_MODELS else "rms_norm_dynamic_quant"
    assert op in site.note
    assert op in p.report.inactive_patterns[site.pattern]
    expected = fn(*clones(args))
    for a, e in zip(got, expected):
        torch.testing.assert_close(a.float(), e.float(), rtol=0, atol=0)


@pytest.mark.parametrize("model", list(FBGEMM_MODELS))
@pytest.mark.parametrize("rows", ["ordinary", "special"])
def test_fbgemm_row_quant_is_fused_into_the_rule_op(ops, rule_op, model, rows):
    fn = FBGEMM_MODELS[model]
    x, r, w = inputs(rows=rows)
    args = (x, r, w, None)
    p = FusionPass(native="auto")  # opaque quant: rewritten whatever the speed policy says
    gm, got = run_pass(fn, clones(args), p)
    op = "fused_add_rms_norm_dynamic_quant" if model in RESIDUAL_MODELS else "rms_norm_dynamic_quant"
    assert op_counts(gm) == {op: 1}, p.report
    expected = fn(*clones(args))
    assert got[1].shape == expected[1].shape  # FBGEMM's scales are [T], ours [T, 1]: viewed back
    assert_equivalent(got, expected, exact=(2,) if model in RESIDUAL_MODELS else ())


def test_fbgemm_scale_ub_is_refused(ops):
    def fn(x, r, w, s):
        return torch.ops.triton.quantize_fp8_row(torch.ops.fusion_kernels.rms_norm(x, w, EPS), s)

    x, r, w = inputs()
    args = (x, r, w, torch.tensor([1200.0]))
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {"rms_norm": 1}
    assert p.report.refusals_per_reason() == {"unsupported_argument": 1}
    assert "scale_ub" in p.report.sites[0].note
    torch.testing.assert_close(got[0].float(), fn(*clones(args))[0].float(), rtol=0, atol=0)


def test_plain_torch_norm_without_a_weight_then_vllm_static(ops):
    def fn(x, r, w, s):
        y = torch.nn.functional.rms_norm(x, (x.shape[-1],), None, EPS)
        out = torch.empty(y.shape, dtype=FP8)
        torch.ops._C.static_scaled_fp8_quant(out, y, s)
        return (out,)

    x, r, w = inputs()
    args = (x, r, w, torch.tensor([0.02]))
    p = FusionPass(native="always")
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}, p.report
    assert p.report.sites[0].pattern == "foreign:native_rms_norm+_C.static_scaled_fp8_quant"
    assert_equivalent(got, fn(*clones(args)), scales_at=())


# --- refusals, and nothing changes without the ops ------------------------------------------------


def test_quant_of_something_else_than_the_norm_output_is_left_alone(ops):
    def fn(x, r, w, s):
        h = x * 2
        y = torch.empty_like(h)
        torch.ops._C.rms_norm(y, h, w, EPS)
        out = torch.empty(h.shape, dtype=FP8)
        torch.ops._C.static_scaled_fp8_quant(out, y + 1, s)  # not the norm's output
        return (out,)

    x, r, w = inputs()
    args = (x, r, w, torch.tensor([0.02]))
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {} and n_auto_functionalized(gm) == 2 and p.report.sites == []
    torch.testing.assert_close(got[0].float(), fn(*clones(args))[0].float(), rtol=0, atol=0)


def test_norm_output_read_elsewhere_is_refused(ops):
    def fn(x, r, w, s):
        h = x * 2
        y = torch.empty_like(h)
        torch.ops._C.rms_norm(y, h, w, EPS)
        out = torch.empty(h.shape, dtype=FP8)
        torch.ops._C.static_scaled_fp8_quant(out, y, s)
        return out, y.sum(-1)  # a second reader (a router, a bf16 branch)

    x, r, w = inputs()
    args = (x, r, w, torch.tensor([0.02]))
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {} and n_auto_functionalized(gm) == 2
    assert p.report.refusals_per_reason() == {"norm_output_has_other_users": 1}
    expected = fn(*clones(args))
    torch.testing.assert_close(got[0].float(), expected[0].float(), rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


def test_quant_into_a_slice_of_a_larger_buffer_is_refused(ops):
    def fn(x, r, w, s):
        h = x * 2
        y = torch.empty_like(h)
        torch.ops._C.rms_norm(y, h, w, EPS)
        big = torch.zeros(2 * h.shape[0], h.shape[1], dtype=FP8)
        torch.ops._C.static_scaled_fp8_quant(big[: h.shape[0]], y, s)  # the rest of big stays zero
        return (big,)

    x, r, w = inputs()
    args = (x, r, w, torch.tensor([0.02]))
    p = FusionPass()
    gm, got = run_pass(fn, clones(args), p)
    assert op_counts(gm) == {}
    assert p.report.refusals_per_reason() == {"mutated_buffer_is_a_view": 1}
    torch.testing.assert_close(got[0].float(), fn(*clones(args))[0].float(), rtol=0, atol=0)


def test_fnuz_output_is_refused_for_vllm_ops(ops):
    def fn(x, r, w, s):
        h = x * 2
        y = torch.empty_like(h)
        torch.ops._C.rms_norm(y, h, w, EPS)
        out = torch.empty(h.shape, dtype=torch.float8_e4m3fnuz)
        torch.ops._C.static_scaled_fp8_quant(out, y, s)
        return (out,)

    x, r, w = inputs()
    p = FusionPass()
    gm, _ = run_pass(fn, (x, r, w, torch.tensor([0.02])), p)
    assert op_counts(gm) == {}
    assert p.report.refusals_per_reason() == {"fp8_range_differs": 1}


def test_without_the_foreign_ops_every_pattern_says_why_and_nothing_changes():
    p = FusionPass()
    assert F.build_foreign_table().ops == {}
    inactive = {k: v for k, v in p.report.inactive_patterns.items() if k.startswith("foreign:")}
    assert len(inactive) == 30 and not [n for n in p.report.active_patterns if n.startswith("foreign:")]
    assert inactive["foreign:_C.rms_norm+_C.static_scaled_fp8_quant"].startswith("torch.ops._C.rms_norm: not loaded")
    for norm in ("rms_norm", "fused_add_rms_norm", "native_rms_norm", "native_add_rms_norm"):
        assert inactive[f"foreign:{norm}+{PACKED}"] == f"torch.ops.{PACKED}: not loaded (defined by vLLM)"
    why = inactive["foreign:rms_norm+triton.quantize_fp8_row"]  # our rule op is looked at first
    assert why.startswith("torch.ops.triton.quantize_fp8_row: not loaded") or "rms_norm_dynamic_quant" in why

    def fn(x, r, w, s):
        return (torch.ops.fusion_kernels.rms_norm(x, w, EPS) * 2,)

    x, r, w = inputs()
    gm, got = run_pass(fn, (x, r, w, None), p)
    assert op_counts(gm) == {"rms_norm": 1} and p.report.sites == []


def test_patterns_follow_the_loaded_ops_and_the_uuid_changes_with_them():
    before = FusionPass()
    with foreign_ops(vllm=True, fbgemm=False):
        with_vllm = FusionPass()
        table = F.build_foreign_table()
    after = FusionPass()
    assert sorted(table.ops) == ["_C.dynamic_per_token_scaled_fp8_quant", "_C.fused_add_rms_norm",
                                 "_C.per_token_group_fp8_quant", "_C.per_token_group_fp8_quant_packed",
                                 "_C.rms_norm", "_C.static_scaled_fp8_quant"]  # fmt: skip
    assert "triton.quantize_fp8_row" in table.missing
    active = set(with_vllm.report.active_patterns)
    assert "foreign:_C.fused_add_rms_norm+_C.dynamic_per_token_scaled_fp8_quant" in active
    assert "foreign:native_rms_norm+_C.per_token_group_fp8_quant" in active
    norms = ("rms_norm", "fused_add_rms_norm", "_C.rms_norm", "_C.fused_add_rms_norm", "native_rms_norm",
             "native_add_rms_norm")  # fmt: skip
    packed = {f"foreign:{n}+{PACKED}" for n in norms}
    assert packed <= active and not packed & set(with_vllm.report.inactive_patterns)
    was = before.report.inactive_patterns  # before the stand-ins were registered
    assert packed <= set(was) and not packed & set(before.report.active_patterns)
    assert was[f"foreign:_C.rms_norm+{PACKED}"].startswith("torch.ops._C.rms_norm: not loaded")
    assert was[f"foreign:rms_norm+{PACKED}"] == f"torch.ops.{PACKED}: not loaded (defined by vLLM)"
    assert not any("triton." in n for n in active)
    assert before.uuid() != with_vllm.uuid()
    assert before.uuid() == after.uuid()


def test_selecting_patterns_and_native_never(ops):
    name = "foreign:_C.rms_norm+_C.static_scaled_fp8_quant"
    p = FusionPass(patterns=[name])
    assert name in p.report.active_patterns
    with pytest.raises(ValueError, match="unknown pattern"):
        FusionPass(patterns=["foreign:no_such_pattern"])
    p = FusionPass(native="never")
    assert p.report.inactive_patterns["foreign:native_rms_norm+triton.quantize_fp8_row"] == 'native="never"'
    assert "foreign:rms_norm+triton.quantize_fp8_row" not in p.report.inactive_patterns or (
        "rms_norm_dynamic_quant" in p.report.inactive_patterns["foreign:rms_norm+triton.quantize_fp8_row"]
    )
    x, r, w = inputs()
    gm, _ = run_pass(torchao_per_row, (x, r, w, None), p)
    assert op_counts(gm) == {}
    assert p.report.refusals_per_reason() == {"native_policy_never": 1}


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
def test_read_call_maps_each_mutated_buffer_to_its_new_value(ops, v1):
    calls = []

    def record(graph):
        calls.extend(c for n in graph.nodes if (c := F.read_call(n, {torch.ops._C.fused_add_rms_norm.default})))

    run_pass(vllm_add_per_token, clones((*inputs()[:3], None)), record, v1=v1)
    [call] = calls
    assert call.mutating and not call.views and not call.transposed
    assert [n.args[1] for n in call.outputs["input"]] == [1]  # after the op's own (None) return
    assert [n.args[1] for n in call.outputs["residual"]] == [2]
    assert all(n.target is operator.getitem for items in call.outputs.values() for n in items)
    assert call.args["weight"].op == "placeholder" and call.args["epsilon"] == EPS
