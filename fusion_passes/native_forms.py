# SPDX-License-Identifier: Apache-2.0
"""Plain-torch spellings of RMSNorm and quantization, as models write them.

These are the forms the native catalogue (``fusion_passes.patterns.native``) recognises, the
functions the benchmarks compile with Inductor, and what ``examples/llama_fp8.py --form native``
runs. Each is written the way common code writes it; the exact traced forms are in the README's
catalogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --- norms --------------------------------------------------------------------------------------


def rms_norm_hf(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face Llama/Mistral/Qwen2 ``RMSNorm.forward``."""
    input_dtype = x.dtype
    hidden_states = x.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def rms_norm_functional(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``torch.nn.functional.rms_norm`` (``torch.nn.RMSNorm`` calls it)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rms_norm_fp32_output(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and returned unrounded (fp32) for the quantizer: models write it,
    and it is what Inductor in torch <= 2.11 leaves of ``F.rms_norm`` followed by
    ``.to(torch.float32)`` (the fp32 -> 16-bit -> fp32 round trip is removed). The catalogue
    reports it as the functional spelling."""
    xf = x.to(torch.float32)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)) * weight


def add_residual(x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm residual stream: ``h = x + residual``; ``h`` is both the new residual and the norm input."""
    h = x + residual
    return h, h


# --- quantizers (read the norm output y; return what the FP8/INT8 matmul consumes) --------------


def quant_fp8_static(y: torch.Tensor, scale: torch.Tensor, fp8: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    finfo = torch.finfo(fp8)
    return (y.to(torch.float32) / scale).clamp(min=finfo.min, max=finfo.max).to(fp8)


def quant_fp8_per_token(y: torch.Tensor, fp8: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    finfo = torch.finfo(fp8)
    amax = y.abs().amax(dim=-1, keepdim=True).to(torch.float32)
    scale = (amax / finfo.max).clamp(min=1.0 / (finfo.max * 512.0))
    q = (y.to(torch.float32) / scale).clamp(min=finfo.min, max=finfo.max).to(fp8)
    return q, scale


def quant_fp8_per_group(
    y: torch.Tensor, group_size: int, fp8: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    finfo = torch.finfo(fp8)
    yg = y.to(torch.float32).reshape(*y.shape[:-1], y.shape[-1] // group_size, group_size)
    amax = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10)
    scale = amax / finfo.max
    q = (yg / scale).clamp(min=finfo.min, max=finfo.max).to(fp8)
    return q.reshape(y.shape), scale.squeeze(-1)


def quant_fp8_per_tensor(y: torch.Tensor, fp8: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-tensor, as torchao's float8 PerTensor granularity computes it: one absmax of
    the whole tensor divided by the format's max in the model dtype, no floor."""
    finfo = torch.finfo(fp8)
    scale = (y.abs().amax() / finfo.max).to(torch.float32)
    q = (y.to(torch.float32) / scale).clamp(min=finfo.min, max=finfo.max).to(fp8)
    return q, scale


def quant_int8_static(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (y.to(torch.float32) / scale).round().clamp(-128, 127).to(torch.int8)


def quant_int8_per_group(y: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 per token group, as the per_token_group_quant_int8 references of vLLM and SGLang
    compute it: the group's absmax floored at 1e-10, over 127, q rounded and clamped."""
    yg = y.to(torch.float32).reshape(*y.shape[:-1], y.shape[-1] // group_size, group_size)
    amax = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10)
    scale = amax / 127.0
    q = (yg / scale).round().clamp(-128, 127).to(torch.int8)
    return q.reshape(y.shape), scale.squeeze(-1)


def quant_int8_per_token(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = y.abs().amax(dim=-1, keepdim=True).to(torch.float32)
    scale = (amax / 127.0).clamp(min=1.0 / (127.0 * 512.0))
    q = (y.to(torch.float32) / scale).round().clamp(-128, 127).to(torch.int8)
    return q, scale
