# SPDX-License-Identifier: Apache-2.0
"""Real spellings of RMSNorm -> quantize, re-typed from public model and quantization code.

Each function is our own re-typing of the arithmetic of the source named in its docstring
(repository and path), written as that code writes it: the reductions, casts, clamps and
constants it uses, in the order it uses them. The corpus tests (test_corpus.py) compose a norm
with a quantizer, capture the post-grad graph and check that the pass fuses it with a result
equivalent to the spelling's own (README, "Equivalent"), or refuses it with the expected reason.

Quantizers take the norm output ``y`` (and a static scale ``s``) and return the quantized tensor,
plus the scales the matmul reads for the dynamic ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
FP8_MIN = torch.finfo(FP8).min


# --- norms -------------------------------------------------------------------------------------


def norm_llama(x, w, eps):
    """huggingface/transformers models/llama/modeling_llama.py LlamaRMSNorm (also Mistral, Qwen2,
    Qwen3, Phi3, DeepSeek-V3, Llama4's text norm)."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return w * h.to(input_dtype)


def norm_olmo2(x, w, eps):
    """huggingface/transformers models/olmo2/modeling_olmo2.py Olmo2RMSNorm: the weight is applied
    in fp32, then one cast."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return (w * h).to(input_dtype)


def norm_gemma(x, w, eps):
    """huggingface/transformers models/gemma/modeling_gemma.py GemmaRMSNorm: ``(1 + w)`` in fp32."""

    def _norm(t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)

    out = _norm(x.float())
    out = out * (1.0 + w.float())
    return out.type_as(x)


def norm_gemma3n(x, w, eps):
    """huggingface/transformers models/gemma3n/modeling_gemma3n.py Gemma3nRMSNorm: the inverse
    root as ``pow(mean + eps, -0.5)``."""

    def _norm(t):
        mean_squared = t.pow(2).mean(-1, keepdim=True) + eps
        return t * torch.pow(mean_squared, -0.5)

    out = _norm(x.float())
    out = out * w.float()
    return out.type_as(x)


def norm_sqrt_div(x, w, eps):
    """A norm written as a division by ``sqrt(mean + eps)`` (huggingface/transformers
    models/gemma4 style ``x / torch.sqrt(ms + eps)``): no rsqrt in the graph."""
    h = x.float()
    h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * w.float()).to(x.dtype)


def norm_functional(x, w, eps):
    """pytorch/pytorch torch/nn/functional.py ``rms_norm`` (``torch.nn.RMSNorm``)."""
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def norm_vllm(x, w, eps):
    """vllm-project/vllm vllm/model_executor/layers/layernorm.py RMSNorm.forward_static (no
    residual): upcast, normalize, cast back, weight in the model dtype."""
    orig_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(dim=-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    h = h.to(orig_dtype)
    return h * w


NORMS: dict[str, Callable] = {
    "llama": norm_llama,
    "olmo2": norm_olmo2,
    "gemma": norm_gemma,
    "gemma3n": norm_gemma3n,
    "sqrt_div": norm_sqrt_div,
    "functional": norm_functional,
    "vllm": norm_vllm,
    "weightless": lambda x, w, eps: norm_weightless(x, w, eps),
}


def residual_hf(x, r):
    """huggingface/transformers decoder layers: ``hidden_states = residual + hidden_states`` in
    the model dtype; the sum is the new residual and the norm's input."""
    h = r + x
    return h, h


# --- quantizers ----------------------------------------------------------------------------------


def q_vllm_static(y, s):
    """vllm-project/vllm vllm/model_executor/layers/quantization/input_quant_fp8.py
    QuantFP8.forward_native, static: multiply by the scale's reciprocal."""
    out = (y.to(torch.float32) * s.reciprocal()).clamp(FP8_MIN, FP8_MAX).to(FP8)
    return out


def q_vllm_per_token(y, s):
    """vllm-project/vllm input_quant_fp8.py QuantFP8.forward_native, dynamic per-token:
    ``abs().max(dim=-1)`` + getitem + unsqueeze, scale floored at 1 / (448 * 512)."""
    x_max, _ = y.abs().max(dim=-1)
    x_max = x_max.unsqueeze(-1).to(torch.float32)
    scale = (x_max / FP8_MAX).clamp(min=1.0 / (FP8_MAX * 512.0))
    out = (y.to(torch.float32) * scale.reciprocal()).clamp(FP8_MIN, FP8_MAX).to(FP8)
    return out, scale


def _vllm_group(y, group_size, ue8m0):
    """vllm-project/vllm input_quant_fp8.py QuantFP8._quantize_group_native: absmax in the model
    dtype, upcast, scale floored at 1 / (448 * 512) after the division (and after UE8M0)."""
    hidden = y.shape[-1]
    num_groups = hidden // group_size
    yg = y.view(-1, num_groups, group_size)
    absmax = yg.abs().max(dim=-1, keepdim=True)[0].float()
    scales_raw = absmax / FP8_MAX
    if ue8m0:
        scales_raw = torch.exp2(torch.ceil(torch.log2(scales_raw)))
    scales = torch.clamp(scales_raw, min=1.0 / (FP8_MAX * 512.0))
    q = (yg / scales).clamp(FP8_MIN, FP8_MAX).to(FP8)
    return q.view(y.shape), scales.squeeze(-1).reshape(*y.shape[:-1], num_groups)


def q_vllm_group128(y, s):
    return _vllm_group(y, 128, False)


def q_vllm_group128_ue8m0(y, s):
    return _vllm_group(y, 128, True)


def q_vllm_test_per_token(y, s):
    """vllm-project/vllm tests/kernels/quant_utils.py ref_dynamic_per_token_quant (FP8): the
    constants are 0-d fp32 tensors (tensor clamp bounds), and a division by the scale."""
    qmax = torch.tensor(FP8_MAX, dtype=torch.float32)
    s_1 = torch.tensor(1.0, dtype=torch.float32)
    s_512 = torch.tensor(512.0, dtype=torch.float32)
    x_token_max, _ = y.abs().max(dim=-1)
    x_token_max = x_token_max.to(torch.float32)
    scales = (x_token_max / qmax)[..., None]
    scales = scales.clamp(min=s_1 / (qmax * s_512))
    out = (y.to(torch.float32) / scales).clamp(FP8_MIN, FP8_MAX).to(FP8)
    return out, scales


def q_vllm_test_int8_per_token(y, s):
    """vllm-project/vllm tests/kernels/quant_utils.py ref_dynamic_per_token_quant (INT8): no floor,
    ``x * (1 / scale)``, round, clamp."""
    x_token_max, _ = y.abs().max(dim=-1)
    x_token_max = x_token_max.to(torch.float32)
    scales = (x_token_max / 127.0)[..., None]
    iscales = 1.0 / scales
    out = (y.to(torch.float32) * iscales).round().clamp(-128, 127).to(torch.int8)
    return out, scales


def _sglang_group(y, group_size, dtype, eps):
    """sgl-project/sglang python/sglang/test/test_utils-style native_per_token_group_quant_fp8 /
    vllm tests/kernels/quantization/test_per_token_group_quant.py: 2-D ``[numel / g, g]`` view,
    ``clamp(min=eps)`` in the model dtype before the upcast."""
    x_ = y.reshape(y.numel() // group_size, group_size)
    amax = x_.abs().max(dim=-1, keepdim=True)[0].clamp(min=eps).to(torch.float32)
    if dtype == torch.int8:
        x_s = amax / 127.0
        x_q = (x_ / x_s).round().clamp(min=-128, max=127).to(torch.int8)
    else:
        x_s = amax / FP8_MAX
        x_q = (x_ / x_s).clamp(min=FP8_MIN, max=FP8_MAX).to(FP8)
    return x_q.reshape(y.shape), x_s.reshape(*y.shape[:-1], y.shape[-1] // group_size)


def q_sglang_group128(y, s):
    return _sglang_group(y, 128, FP8, 1e-10)


def q_sglang_group64(y, s):
    return _sglang_group(y, 64, FP8, 1e-10)


def q_sglang_int8_group128(y, s):
    return _sglang_group(y, 128, torch.int8, 1e-10)


def q_torchao_per_row(y, s):
    """pytorch/ao torchao/quantization/quant_primitives.py _choose_scale_float8 +
    _quantize_affine_float8 (Float8DynamicActivationFloat8WeightConfig, PerRow): the absmax and
    ``amax / 448`` in the model dtype, cast to fp32 afterwards; no floor; divide, clamp, cast."""
    max_abs = y.abs().amax(dim=-1, keepdim=True)
    scale = max_abs / FP8_MAX
    scale = scale.to(torch.float32)
    q = (y.to(torch.float32) / scale).clamp(min=-FP8_MAX, max=FP8_MAX).to(FP8)
    return q, scale


def q_torchao_per_tensor(y, s):
    """pytorch/ao quant_primitives.py, PerTensor granularity: one absmax over the whole tensor."""
    max_abs = y.abs().amax()
    scale = (max_abs / FP8_MAX).to(torch.float32)
    q = (y.to(torch.float32) / scale).clamp(min=-FP8_MAX, max=FP8_MAX).to(FP8)
    return q, scale


def _ct_token(y, q_min, q_max, dtype):
    """neuralmagic/compressed-tensors src/compressed_tensors/quantization/utils/helpers.py
    calculate_qparams + lifecycle/forward.py _quantize (dynamic TOKEN strategy, symmetric):
    amin/amax against zero, the larger magnitude divided by (q_max - q_min) / 2 in the model
    dtype, zero scales replaced by the dtype's eps, ``x / scale + zero_point``, clamp with 0-d
    tensor bounds, then the cast (FP8 through the model dtype and back, INT8 rounded)."""
    min_vals = torch.amin(y, dim=-1, keepdim=True)
    max_vals = torch.amax(y, dim=-1, keepdim=True)
    min_vals = torch.min(min_vals, torch.zeros_like(min_vals))
    max_vals = torch.max(max_vals, torch.zeros_like(max_vals))
    max_val_pos = torch.max(torch.abs(min_vals), torch.abs(max_vals))
    scales = max_val_pos / (float(q_max - q_min) / 2)
    scales = torch.where(scales == 0, torch.tensor(torch.finfo(scales.dtype).eps, dtype=scales.dtype), scales)
    zero_points = torch.zeros(scales.shape, dtype=y.dtype)
    scaled = y / scales + zero_points
    clamped = torch.clamp(scaled, torch.tensor(q_min, dtype=y.dtype), torch.tensor(q_max, dtype=y.dtype))
    if dtype == torch.int8:
        q = torch.round(clamped).to(torch.int8)
    else:
        q = clamped.to(FP8).to(y.dtype).to(FP8)
    return q, scales


def q_ct_token_fp8(y, s):
    return _ct_token(y, FP8_MIN, FP8_MAX, FP8)


def q_ct_token_int8(y, s):
    return _ct_token(y, -128, 127, torch.int8)


def q_ct_static_fp8(y, s):
    """neuralmagic/compressed-tensors lifecycle/forward.py _quantize with a static (calibrated)
    per-tensor scale: ``x / scale + zero_point``, tensor clamp bounds, cast."""
    zero_point = torch.zeros((), dtype=y.dtype)
    scaled = y / s + zero_point
    clamped = torch.clamp(scaled, torch.tensor(FP8_MIN, dtype=y.dtype), torch.tensor(FP8_MAX, dtype=y.dtype))
    return clamped.to(FP8)


def q_fbgemm_row(y, s):
    """pytorch/FBGEMM fbgemm_gpu/experimental/gemm/triton_gemm/fp8_gemm.py quantize_fp8_row, torch
    path: inverse scale ``448 / max(amax, 1e-12)``, inf mapped to 1, no clamp, returns 1 / inv."""
    row_max = torch.max(torch.abs(y), dim=-1)[0]
    row_max = torch.clamp(row_max, min=1e-12)
    a_scale = FP8_MAX / row_max.to(torch.float32)
    a_scale[a_scale == float("inf")] = 1.0
    q = (y * a_scale[..., None]).to(FP8)
    return q, 1.0 / a_scale


def _deepseek_act_quant(y, ue8m0):
    """deepseek-ai/DeepSeek-V3 inference/kernel.py act_quant (block 128), in its plain-torch form:
    absmax floored at 1e-4, ``amax / 448`` (UE8M0: rounded up to a power of two), no clamp."""
    yg = y.float().view(*y.shape[:-1], y.shape[-1] // 128, 128)
    amax = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-4)
    sc = amax / FP8_MAX
    if ue8m0:
        sc = torch.pow(2.0, torch.ceil(torch.log2(sc)))
    q = (yg / sc).to(FP8)
    return q.view(y.shape), sc.squeeze(-1)


def q_deepseek_group128(y, s):
    return _deepseek_act_quant(y, False)


def q_deepseek_group128_ue8m0(y, s):
    return _deepseek_act_quant(y, True)


def q_input_to_float8(y, s):
    """sgl-project/sglang srt/layers/quantization/fp8_utils.py input_to_float8 / vllm
    scaled_fp8_quant's native path: dynamic per-tensor (a global absmax)."""
    min_val, max_val = y.aminmax()
    amax = torch.maximum(min_val.abs(), max_val.abs()).float().clamp(min=1e-12)
    scale = FP8_MAX / amax
    q = (y.float() * scale).clamp(min=FP8_MIN, max=FP8_MAX).to(FP8)
    return q, scale.float().reciprocal()


QUANTS: dict[str, Callable] = {
    "vllm_static": q_vllm_static,
    "vllm_per_token": q_vllm_per_token,
    "vllm_group128": q_vllm_group128,
    "vllm_group128_ue8m0": q_vllm_group128_ue8m0,
    "vllm_test_per_token": q_vllm_test_per_token,
    "vllm_test_int8_per_token": q_vllm_test_int8_per_token,
    "sglang_group128": q_sglang_group128,
    "sglang_group64": q_sglang_group64,
    "sglang_int8_group128": q_sglang_int8_group128,
    "torchao_per_row": q_torchao_per_row,
    "torchao_per_tensor": q_torchao_per_tensor,
    "ct_token_fp8": q_ct_token_fp8,
    "ct_token_int8": q_ct_token_int8,
    "ct_static_fp8": q_ct_static_fp8,
    "fbgemm_row": q_fbgemm_row,
    "deepseek_group128": q_deepseek_group128,
    "deepseek_group128_ue8m0": q_deepseek_group128_ue8m0,
    "input_to_float8": q_input_to_float8,
}


@dataclasses.dataclass(frozen=True)
class Case:
    norm: str
    quant: str
    residual: bool | str = False  # True: the Hugging Face add; "fp32": vLLM's add in fp32
    consumers: int = 1  # identical quantizers of the one norm output (q/k/v: 3, gate/up: 2)

    @property
    def id(self) -> str:
        res = {False: "", True: "add+", "fp32": "add32+"}[self.residual]
        fan = f"x{self.consumers}" if self.consumers > 1 else ""
        return f"{res}{self.norm}+{self.quant}{fan}"

    def fn(self, eps: float = 1e-6):
        norm, quant, residual, consumers = NORMS[self.norm], QUANTS[self.quant], self.residual, self.consumers

        def f(x, r, w, s):
            if residual == "fp32":
                y, r = norm_vllm_residual_fp32(x, r, w, eps)
            else:
                if residual:
                    x, r = residual_hf(x, r)
                y = norm(x, w, eps)
            outs = []
            for _ in range(consumers):
                o = quant(y, s)
                outs += list(o) if isinstance(o, tuple) else [o]
            return (*outs, r) if residual else tuple(outs)

        return f


#: The real spellings: (norm, quantizer) pairs as models meet them.
CASES = [
    # vLLM: its own norm and quantizers
    Case("vllm", "vllm_static"),
    Case("vllm", "vllm_per_token"),
    Case("vllm", "vllm_group128"),
    Case("vllm", "vllm_group128_ue8m0"),
    Case("llama", "vllm_static", residual=True),
    Case("llama", "vllm_per_token", residual=True),
    Case("llama", "vllm_group128", residual=True),
    Case("llama", "vllm_test_per_token"),
    Case("llama", "vllm_test_int8_per_token"),
    # SGLang group references
    Case("llama", "sglang_group128"),
    Case("llama", "sglang_group64", residual=True),
    Case("llama", "sglang_int8_group128"),
    # torchao float8 dynamic activation quantization
    Case("llama", "torchao_per_row"),
    Case("llama", "torchao_per_row", residual=True),
    Case("llama", "torchao_per_row", consumers=3),
    Case("llama", "torchao_per_row", consumers=2, residual=True),
    Case("functional", "torchao_per_row"),
    Case("gemma", "torchao_per_row"),
    Case("llama", "torchao_per_tensor"),
    # compressed-tensors
    Case("llama", "ct_token_fp8"),
    Case("llama", "ct_token_fp8", consumers=3),
    Case("llama", "ct_token_int8"),
    Case("llama", "ct_static_fp8"),
    Case("llama", "ct_static_fp8", residual=True, consumers=2),
    # FBGEMM
    Case("llama", "fbgemm_row"),
    Case("llama", "fbgemm_row", residual=True),
    # DeepSeek-V3
    Case("llama", "deepseek_group128"),
    Case("llama", "deepseek_group128_ue8m0", residual=True),
    # other norms with common quantizers
    Case("olmo2", "vllm_per_token"),
    Case("gemma3n", "vllm_static"),
    Case("sqrt_div", "vllm_per_token"),
    Case("functional", "vllm_group128", residual=True),
    Case("gemma", "vllm_per_token", consumers=2),
    # vLLM's / SGLang's own residual add (in fp32) and a norm without a weight
    Case("vllm", "vllm_per_token", residual="fp32"),
    Case("vllm", "vllm_static", residual="fp32"),
    Case("weightless", "vllm_per_token"),
    # dynamic per-tensor (SGLang / vLLM)
    Case("llama", "input_to_float8"),
]


# --- capture and compare -----------------------------------------------------------------------


def run_pass(fn, args, graph_pass):
    """Capture ``fn``'s forward graph as the post-grad pass sees it (AOTAutograd with Inductor's
    decompositions), run ``graph_pass`` on it and run the rewritten graph eagerly (no Inductor
    code generation). Returns (graph module, outputs)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    graphs = []

    def fw(gm, example_inputs):
        graph_pass(gm.graph)
        gm.recompile()
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    try:
        out = torch.compile(fn, backend=aot_autograd(fw_compiler=fw, decompositions=select_decomp_table()))(*args)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    return graphs[0], out


def inputs(dtype: torch.dtype, rows: int = 12, hidden: int = 256, seed: int = 0):
    """x, residual, weight, static scale; row 0 of x and residual is all zero (an all-zero norm
    output), row 1 holds one outlier (about 3e4) among values of about 1e-3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=g)
    r = torch.randn(rows, hidden, generator=g)
    x[0] = 0.0
    r[0] = 0.0
    x[1] = 1e-3 * torch.randn(hidden, generator=g)
    r[1] = 0.0
    x[1, 7] = 3.0e4 if dtype != torch.float16 else 3.0e4 / 4
    w = 1 + 0.3 * torch.randn(hidden, generator=g)
    s = torch.tensor(4.0 / 448)
    return x.to(dtype), r.to(dtype), w.to(dtype), s


def norm_vllm_residual_fp32(x, r, w, eps):
    """vllm-project/vllm vllm/model_executor/layers/layernorm.py RMSNorm.forward_static with a
    residual (also SGLang's forward_native): the add in fp32, the new residual rounded from it,
    and the norm reading the unrounded fp32 sum."""
    orig_dtype = x.dtype
    h = x.to(torch.float32)
    h = h + r.to(torch.float32)
    residual = h.to(orig_dtype)
    variance = h.pow(2).mean(dim=-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    h = h.to(orig_dtype)
    return h * w, residual


def norm_weightless(x, w, eps):
    """pytorch/pytorch torch/nn/functional.py ``rms_norm`` without a weight (``elementwise_affine=False``)."""
    return F.rms_norm(x, (x.shape[-1],), None, eps)


# --- microscaling quantizers (torchao's MX / NVFP4 prototypes) ------------------------------------
#
# pytorch/ao torchao/prototype/mx_formats/mx_tensor.py to_mx and nvfp4_tensor.py nvfp4_quantize,
# re-typed: the blocks, the absmax, the scale's bit arithmetic and the element conversion as that
# code computes them. They return (elements, scales) as the MX tensor stores them. to_mx clamps
# FP8 elements only outside a compile (a compiled cast saturates), so under torch.compile the
# clamp is absent from the graph; ``clamp="always"`` spells the eager form.

_E8M0_BIAS = 127


def _mx_exponent_bits(amax, pow2, ceil):
    """to_mx's FLOOR / CEIL scale: the exponent field of the fp32 absmax, less the element
    format's largest power of two, clamped to E8M0's range and biased; NaN absmax -> 255."""
    as_int = amax.view(torch.int32)
    unbiased = torch.bitwise_right_shift(as_int, 23) & 0xFF
    unbiased = unbiased - _E8M0_BIAS
    if ceil:
        unbiased = unbiased + ((as_int & 0x7FFFFF) > 0)
    unbiased = unbiased - pow2
    unbiased = torch.clamp(unbiased, min=-_E8M0_BIAS, max=_E8M0_BIAS + 1)
    biased = (unbiased + _E8M0_BIAS).to(torch.uint8)
    return torch.where(torch.isnan(amax), 255, biased)


def _e2m1_codes(v):
    """torchao/prototype/custom_fp_utils.py _f32_to_floatx_unpacked for e2m1 (ebits 2, mbits 1):
    saturate at 6, denormals (below 1) by adding a magic float and subtracting its bits, normals
    by rebiasing the exponent with round-half-even on the dropped bits, then the sign as bit 3.
    No special values: NaN takes the normal path."""
    bits = v.view(torch.int32)
    sign = bits & 0x80000000
    mag = (bits ^ sign).view(torch.float32)
    saturate = mag >= 6.0
    denormal = torch.logical_and(torch.logical_not(saturate), mag < 1)
    normal = torch.logical_not(torch.logical_or(saturate, denormal))
    denorm_bits = (127 - 1 + 23 - 1 + 1) << 23
    magic = torch.tensor(denorm_bits, dtype=torch.int32).view(torch.float32)
    dn = ((mag + magic).view(torch.int32) - denorm_bits).to(torch.uint8)
    nb = mag.view(torch.int32)
    odd = (nb >> 22) & 1
    nb = nb + (((1 - 127) << 23) + (1 << 21) - 1)
    nb = nb + odd
    nm = (nb >> 22).to(torch.uint8)
    codes = torch.full_like(mag, 7, dtype=torch.uint8)
    codes = torch.where(denormal, dn, codes)
    codes = torch.where(normal, nm, codes)
    return codes | ((sign >> 28).to(torch.uint8) & 8)


def _pack_pairs(codes):
    """torchao kernels.py pack_uint4: element 2i in the low nibble, 2i + 1 in the high one."""
    flat = codes.contiguous().view(-1)
    return (flat[::2] | flat[1::2] << 4).view(*codes.shape[:-1], codes.shape[-1] // 2)


def _to_mx(y, elem, ceil=False, clamp="eager"):
    shape = y.shape
    blocks = y.reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = torch.amax(torch.abs(blocks), -1).unsqueeze(-1)
    blocks = blocks.to(torch.float32)
    amax = amax.to(torch.float32)
    pow2, qmax = {FP8: (8, 448.0), torch.float8_e5m2: (15, 57344.0), "e2m1": (2, 6.0)}[elem]
    byte = _mx_exponent_bits(amax, pow2, ceil)
    divisor = torch.bitwise_left_shift(byte.to(torch.int32), 23).view(torch.float32)
    divisor = torch.clamp(divisor, min=2.0**-126)  # all-zero blocks: the smallest normal
    scaled = blocks / divisor
    if elem == "e2m1":
        q = _pack_pairs(_e2m1_codes(scaled.reshape(shape)))
    else:
        if clamp == "always" or (clamp == "eager" and not torch.compiler.is_compiling()):
            scaled = torch.clamp(scaled, min=-qmax, max=qmax)
        q = scaled.to(elem).reshape(shape)
    return q, byte.view(torch.float8_e8m0fnu).squeeze(-1)


def q_torchao_mxfp8_floor(y, s):
    """to_mx(y, float8_e4m3fn, 32, ScaleCalculationMode.FLOOR) (the default mode)."""
    return _to_mx(y, FP8)


def q_torchao_mxfp8_ceil(y, s):
    """to_mx(..., ScaleCalculationMode.CEIL): one more where the absmax is not a power of two."""
    return _to_mx(y, FP8, ceil=True)


def q_torchao_mxfp8_floor_clamped(y, s):
    """to_mx FLOOR as it runs eagerly (the elements clamped to +-448 before the cast)."""
    return _to_mx(y, FP8, clamp="always")


def q_torchao_mxfp8_e5m2_floor(y, s):
    """to_mx(y, float8_e5m2, 32, FLOOR), eagerly: clamped to +-57344."""
    return _to_mx(y, torch.float8_e5m2, clamp="always")


def q_torchao_mxfp8_rceil(y, s):
    """to_mx(..., ScaleCalculationMode.RCEIL) off Blackwell (mx_tensor.py _to_mx_rceil's fallback):
    the exponent is ceil(log2(amax / 448)) in fp32, NaN -> 255, Inf -> 254; the elements are
    multiplied by 2 ** (127 - byte) (byte 0: by 1; byte 254: by 2 ** -127) and clamped."""
    shape = y.shape
    blocks = y.reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = torch.amax(torch.abs(blocks), -1).unsqueeze(-1).to(torch.float32)
    blocks = blocks.to(torch.float32)
    descale = amax / 448.0
    exponent = torch.clamp(torch.ceil(torch.log2(descale)), min=-127, max=127) + 127
    byte = torch.where(torch.isnan(descale), 255, torch.where(torch.isinf(descale), 254, exponent.to(torch.uint8)))
    factor = torch.where(byte == 0, 1.0, torch.exp2(127 - byte.to(torch.float32)))
    factor = torch.where(byte == 254, 2.0**-127, factor)
    factor = torch.where(byte == 255, descale, factor)
    q = torch.clamp(blocks * factor, min=-448.0, max=448.0).to(FP8).reshape(shape)
    return q, byte.view(torch.float8_e8m0fnu).squeeze(-1)


def q_torchao_mxfp4_floor(y, s):
    """to_mx(y, float4_e2m1fn_x2, 32, FLOOR): e2m1 codes by the software conversion, packed."""
    return _to_mx(y, "e2m1")


def q_torchao_nvfp4(y, s):
    """nvfp4_tensor.py nvfp4_quantize with a per_tensor_scale ``s`` (amax / (448 * 6) in torchao's
    convention): block scales (amax / 6) / s clamped to [2 ** -6, 448] in e4m3, the elements
    multiplied by (1 / s) / scale, clamped to +-6, converted and packed."""
    shape = y.shape
    blocks = y.float().reshape(shape[0], -1, 16)
    amax = torch.amax(torch.abs(blocks), dim=-1)
    block_scale = (amax / 6.0).to(torch.float32) / s
    block_scale = torch.clamp(block_scale, min=2.0**-6, max=448.0).to(FP8)
    factor = (1.0 / s) / block_scale.to(torch.float32)
    scaled = torch.clamp(blocks * factor.unsqueeze(-1), -6.0, 6.0).view(shape)
    return block_scale, _pack_pairs(_e2m1_codes(scaled))


MX_QUANTS: dict[str, Callable] = {
    "torchao_mxfp8_floor": q_torchao_mxfp8_floor,
    "torchao_mxfp8_ceil": q_torchao_mxfp8_ceil,
    "torchao_mxfp8_floor_clamped": q_torchao_mxfp8_floor_clamped,
    "torchao_mxfp8_e5m2_floor": q_torchao_mxfp8_e5m2_floor,
    "torchao_mxfp8_rceil": q_torchao_mxfp8_rceil,
    "torchao_mxfp4_floor": q_torchao_mxfp4_floor,
    "torchao_nvfp4": q_torchao_nvfp4,
}
QUANTS.update(MX_QUANTS)

#: The microscaling spellings, after the Hugging Face norms (tested in test_native_mx.py: fused
#: ones bit for bit, the others refused with the reason in MX_REFUSED).
MX_CASES = [
    Case("llama", "torchao_mxfp8_floor"),
    Case("llama", "torchao_mxfp8_floor", residual=True),
    Case("llama", "torchao_mxfp8_floor", consumers=3),
    Case("llama", "torchao_mxfp8_ceil"),
    Case("llama", "torchao_mxfp8_ceil", residual=True),
    Case("llama", "torchao_mxfp8_floor_clamped"),
    Case("llama", "torchao_mxfp8_e5m2_floor", residual=True),
    Case("weightless", "torchao_mxfp8_floor"),
    Case("llama", "torchao_mxfp8_rceil"),
    Case("llama", "torchao_mxfp8_rceil", residual=True),
    Case("llama", "torchao_mxfp4_floor"),
    Case("llama", "torchao_nvfp4"),
    Case("llama", "torchao_nvfp4", residual=True),
]
MX_REFUSED = {
    "llama+torchao_mxfp4_floor": "fp4_nan_encoding_differs",
    "llama+torchao_nvfp4": "fp4_nan_encoding_differs",
    "add+llama+torchao_nvfp4": "fp4_nan_encoding_differs",
}
