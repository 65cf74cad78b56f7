# SPDX-License-Identifier: Apache-2.0
"""Fake (meta) functions of the microscaling quant ops (MXFP8, MXFP4, NVFP4; csrc/mx_ops.h):
exactly the sizes, strides and dtypes their kernels return (:mod:`fusion_kernels.fake` registers
them with the others)."""

from __future__ import annotations

import math

import torch

from fusion_kernels.fake_base import _check_devices, _out

MX_SCALE_MODES = ("floor", "rceil", "ceil", "even")
_MXFP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_MX_BLOCK, _NVFP4_BLOCK = 32, 16


def _mx_check(op, input, block, *, weight=None, residual=None, global_scale=None, scale_mode=None,
              fp8_dtype=None, epsilon=None):  # fmt: skip
    # The kernels' host checks (csrc/mx_ops.cpp, checks.cpp), with their messages, at trace time.
    pre = f"fusion_kernels.{op}: "
    torch._check(
        input.dtype in (torch.float32, torch.float16, torch.bfloat16),
        lambda: f"{pre}input must be float32, float16 or bfloat16, got {input.dtype}",
    )
    torch._check(input.dim() >= 1, lambda: f"{pre}input must have at least one dimension (the hidden dim)")
    hidden = input.shape[-1]
    torch._check(hidden > 0, lambda: f"{pre}input's hidden size (last dim) must be > 0, got 0")
    torch._check(
        hidden % block == 0,
        lambda: f"{pre}the hidden size (input.size(-1) = {hidden}) must be divisible by the block size {block}",
    )
    if weight is not None:
        torch._check(
            weight.dim() == 1 and weight.shape[0] == hidden,
            lambda: f"{pre}weight must have shape [{hidden}] (the input's hidden size), got {tuple(weight.shape)}",
        )
        torch._check(
            weight.dtype in (input.dtype, torch.float32),
            lambda: f"{pre}weight must be float32 or the input's dtype ({input.dtype}), got {weight.dtype}",
        )
        torch._check(
            math.isfinite(epsilon) and epsilon >= 0, lambda: f"{pre}epsilon must be finite and >= 0, got {epsilon}"
        )
    if residual is not None:
        torch._check(
            residual.dtype == input.dtype,
            lambda: f"{pre}residual must have the input's dtype ({input.dtype}), got {residual.dtype}",
        )
        torch._check(residual.shape == input.shape, lambda: f"{pre}residual must have the input's shape")
    if global_scale is not None:
        torch._check(
            global_scale.dtype == torch.float32,
            lambda: f"{pre}global_scale must be float32, got {global_scale.dtype}",
        )
        torch._check(
            global_scale.numel() == 1 and global_scale.dim() <= 1,
            lambda: f"{pre}global_scale must hold exactly one element (shape [] or [1]), got shape "
            f"{tuple(global_scale.shape)}",
        )
    if scale_mode is not None:
        torch._check(
            scale_mode in MX_SCALE_MODES,
            lambda: f"{pre}scale_mode must be one of 'floor', 'rceil', 'ceil', 'even', got '{scale_mode}'",
        )
    if fp8_dtype is not None:
        torch._check(
            fp8_dtype in _MXFP8_DTYPES,
            lambda: f"{pre}fp8_dtype must be float8_e4m3fn or float8_e5m2, got {fp8_dtype}",
        )
    _check_devices(input, weight=weight, residual=residual, global_scale=global_scale)


def _mx_outputs(input, block, q_dtype, scale_dtype, swizzled_scales, packed):
    """(q, scales): q [..., H] (or packed FP4 [..., H / 2] uint8); scales row-major [..., H / block]
    or the 128x4 swizzled [32 * ceil(T / 128), 16 * ceil(H / block / 4)], T the rows."""
    hidden = input.shape[-1]
    q = input.new_empty((*input.shape[:-1], hidden // 2 if packed else hidden), dtype=q_dtype)
    cols = hidden // block
    if swizzled_scales:
        rows = 1
        for d in input.shape[:-1]:
            rows = rows * d
        scales = input.new_empty((32 * ((rows + 127) // 128), 16 * ((cols + 3) // 4)), dtype=scale_dtype)
    else:
        scales = input.new_empty((*input.shape[:-1], cols), dtype=scale_dtype)
    return q, scales


def _mxfp8(input, fp8_dtype, swizzled_scales):
    return _mx_outputs(input, _MX_BLOCK, fp8_dtype, torch.float8_e8m0fnu, swizzled_scales, False)


def _mxfp4(input, swizzled_scales):
    return _mx_outputs(input, _MX_BLOCK, torch.uint8, torch.float8_e8m0fnu, swizzled_scales, True)


def _nvfp4(input, swizzled_scales):
    return _mx_outputs(input, _NVFP4_BLOCK, torch.uint8, torch.float8_e4m3fn, swizzled_scales, True)


def mxfp8_quant(input, fp8_dtype, scale_mode, swizzled_scales):
    _mx_check("mxfp8_quant", input, _MX_BLOCK, scale_mode=scale_mode, fp8_dtype=fp8_dtype)
    return _mxfp8(input, fp8_dtype, swizzled_scales)


def mxfp4_quant(input, scale_mode, swizzled_scales):
    _mx_check("mxfp4_quant", input, _MX_BLOCK, scale_mode=scale_mode)
    return _mxfp4(input, swizzled_scales)


def nvfp4_quant(input, global_scale, global_scale_is_multiplier, swizzled_scales):
    _mx_check("nvfp4_quant", input, _NVFP4_BLOCK, global_scale=global_scale)
    return _nvfp4(input, swizzled_scales)


def rms_norm_mxfp8_quant(input, weight, epsilon, fp8_dtype, scale_mode, swizzled_scales):
    _mx_check("rms_norm_mxfp8_quant", input, _MX_BLOCK, weight=weight, epsilon=epsilon, scale_mode=scale_mode,
              fp8_dtype=fp8_dtype)  # fmt: skip
    return _mxfp8(input, fp8_dtype, swizzled_scales)


def fused_add_rms_norm_mxfp8_quant(input, residual, weight, epsilon, fp8_dtype, scale_mode, swizzled_scales):
    _mx_check("fused_add_rms_norm_mxfp8_quant", input, _MX_BLOCK, weight=weight, residual=residual,
              epsilon=epsilon, scale_mode=scale_mode, fp8_dtype=fp8_dtype)  # fmt: skip
    return (*_mxfp8(input, fp8_dtype, swizzled_scales), _out(input, input.dtype))


def rms_norm_mxfp4_quant(input, weight, epsilon, scale_mode, swizzled_scales):
    _mx_check("rms_norm_mxfp4_quant", input, _MX_BLOCK, weight=weight, epsilon=epsilon, scale_mode=scale_mode)
    return _mxfp4(input, swizzled_scales)


def fused_add_rms_norm_mxfp4_quant(input, residual, weight, epsilon, scale_mode, swizzled_scales):
    _mx_check("fused_add_rms_norm_mxfp4_quant", input, _MX_BLOCK, weight=weight, residual=residual,
              epsilon=epsilon, scale_mode=scale_mode)  # fmt: skip
    return (*_mxfp4(input, swizzled_scales), _out(input, input.dtype))


def rms_norm_nvfp4_quant(input, weight, epsilon, global_scale, global_scale_is_multiplier, swizzled_scales):
    _mx_check("rms_norm_nvfp4_quant", input, _NVFP4_BLOCK, weight=weight, epsilon=epsilon,
              global_scale=global_scale)  # fmt: skip
    return _nvfp4(input, swizzled_scales)


def fused_add_rms_norm_nvfp4_quant(input, residual, weight, epsilon, global_scale, global_scale_is_multiplier,
                                   swizzled_scales):  # fmt: skip
    _mx_check("fused_add_rms_norm_nvfp4_quant", input, _NVFP4_BLOCK, weight=weight, residual=residual,
              epsilon=epsilon, global_scale=global_scale)  # fmt: skip
    return (*_nvfp4(input, swizzled_scales), _out(input, input.dtype))


#: The microscaling quant ops (csrc/mx_ops.h), CPU and CUDA kernels. They are in FAKES but not in
#: OP_NAMES: the generic op tests (test_numerics, test_properties, test_cuda, test_op_contract's per-op tests)
#: iterate OP_NAMES through fusion_kernels.testing.make_args / reference_of, which do not know
#: their arguments (scale_mode, global_scale, swizzled_scales); tests/ops/test_microscaling_ops.py
#: and test_microscaling_cuda.py cover them. ALL_OP_NAMES is every op the library defines.
MX_OP_NAMES: tuple[str, ...] = (
    "mxfp8_quant",
    "mxfp4_quant",
    "nvfp4_quant",
    "rms_norm_mxfp8_quant",
    "fused_add_rms_norm_mxfp8_quant",
    "rms_norm_mxfp4_quant",
    "fused_add_rms_norm_mxfp4_quant",
    "rms_norm_nvfp4_quant",
    "fused_add_rms_norm_nvfp4_quant",
)
