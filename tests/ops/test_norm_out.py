# SPDX-License-Identifier: Apache-2.0
"""The norm-output variants of the fused rule ops (``rms_norm_dynamic_quant_with_norm_out`` and
its residual form): what the fused rule op returns, then the normalised output, bit for bit as
our norm op computes it, on every device present (their numerics against the reference, argument
errors, opcheck and compile are in test_dynamic_quant.py, which covers every rule op)."""

import itertools

import pytest
import torch

from fusion_kernels.fake import RULE_OP_NAMES
from fusion_kernels.testing import scale_rule as rule

ops = torch.ops.fusion_kernels
FP8 = torch.float8_e4m3fn
INT8 = torch.int8
NORM_OUT_OPS = [n for n in RULE_OP_NAMES if n.endswith("_with_norm_out")]


@pytest.fixture
def rule_ops(device):
    missing = [n for n in ("rms_norm_dynamic_quant", "fused_add_rms_norm_dynamic_quant", *NORM_OUT_OPS)
               if not hasattr(ops, n)]  # fmt: skip
    if missing:
        pytest.skip(f"the loaded library does not define {missing}")
    cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(f"fusion_kernels::{NORM_OUT_OPS[0]}", "CUDA")
    if device == "cuda" and not cuda_kernel:
        pytest.skip("the loaded library has no CUDA kernels for the rule ops")


def assert_equal_or_both_nan(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    if a.dtype == torch.int8:
        assert torch.equal(a, b), what
        return
    fa, fb = a.float(), b.float()
    nan = torch.isnan(fa)
    assert torch.equal(nan, torch.isnan(fb)), f"{what}: NaN at different places"
    assert torch.equal(fa[~nan], fb[~nan]), f"{what}: differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_norm_out_variants_add_the_norm_output_bit_for_bit(dtype, device, rule_ops):
    """``*_with_norm_out`` returns what the fused rule op returns, and then what the norm op returns
    (our unfused norm, bit for bit): per row, per group, per tensor, every launch variant."""
    eps = 1e-6
    cases = [(0, INT8, rule(INT8, divisor=127.5, zero_scale=1e-7)),
             (64, FP8, rule(FP8, absmax_floor=1e-4, scale_ue8m0=True)),
             (128, FP8, rule(FP8, scale_floor=1.0 / (448 * 512))),
             (-1, FP8, rule(FP8, scale_dtype=torch.bfloat16))]  # fmt: skip
    sizes = [(0, 128), (1, 4096), (7, 1024), (300, 1152)] + ([(2048, 7168), (3, 16384)] if device == "cuda" else [])
    for (rows, hidden), (group_size, qdtype, r) in itertools.product(sizes, cases):
        if group_size > 0 and hidden % group_size:
            continue
        g = torch.Generator().manual_seed(rows + hidden)
        x = torch.randn(rows, hidden, generator=g).to(dtype).to(device)
        res = torch.randn(rows, hidden, generator=g).to(dtype).to(device)
        w = (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype).to(device)
        what = f"{dtype} G={group_size} {rows}x{hidden}"
        got = ops.rms_norm_dynamic_quant_with_norm_out(x, w, eps, qdtype, group_size, **r)
        exp = (*ops.rms_norm_dynamic_quant(x, w, eps, qdtype, group_size, **r), ops.rms_norm(x, w, eps))
        for i, (a, b) in enumerate(zip(got, exp, strict=True)):
            assert_equal_or_both_nan(a, b, f"{what} output {i}")
        got = ops.fused_add_rms_norm_dynamic_quant_with_norm_out(x, res, w, eps, qdtype, group_size, **r)
        exp = (*ops.fused_add_rms_norm_dynamic_quant(x, res, w, eps, qdtype, group_size, **r),
               ops.fused_add_rms_norm(x, res, w, eps)[0])  # fmt: skip
        for i, (a, b) in enumerate(zip(got, exp, strict=True)):
            assert_equal_or_both_nan(a, b, f"{what} residual output {i}")
