# SPDX-License-Identifier: Apache-2.0
"""Fake (meta) functions of every op: exactly the sizes, strides and dtypes the kernels return.

Registered once, after the library is loaded, for the ops the library actually defines.
"""

from __future__ import annotations

import math

import torch

_registered: set[str] = set()


def _check_group(input: torch.Tensor, group_size: int, column_major_scales: bool, tma_aligned: bool = False) -> None:
    hidden = input.shape[-1]
    torch._check(
        not tma_aligned or column_major_scales, lambda: "fusion_kernels: tma_aligned_scales needs column_major_scales"
    )
    torch._check(
        group_size in (32, 64, 128), lambda: f"fusion_kernels: group_size must be 32, 64 or 128, got {group_size}"
    )
    torch._check(
        hidden % group_size == 0,
        lambda: (
            f"fusion_kernels: the hidden size (input.size(-1) = {hidden}) must be divisible by group_size = {group_size}"
        ),
    )
    torch._check(
        not column_major_scales or input.dim() == 2,
        lambda: f"fusion_kernels: column_major_scales needs a 2-D input [tokens, hidden], got {input.dim()} dims",
    )


_QUANT_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8)
_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float64).to(torch.float32))


def _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype) -> None:
    # The same checks as the kernels' host code, with the same messages, at trace time.
    torch._check(
        quant_dtype in _QUANT_DTYPES,
        lambda: f"fusion_kernels: quant_dtype must be float8_e4m3fn or float8_e4m3fnuz or int8, got {quant_dtype}",
    )
    torch._check(
        group_size in (-1, 0, 32, 64, 128),
        lambda: (
            "fusion_kernels: group_size must be -1 (one scale for the tensor), 0 (one scale per row), 32, 64 "
            f"or 128, got {group_size}"
        ),
    )
    if group_size > 0:
        hidden = input.shape[-1]
        torch._check(
            hidden % group_size == 0,
            lambda: (
                f"fusion_kernels: the hidden size (input.size(-1) = {hidden}) must be divisible by "
                f"group_size = {group_size}"
            ),
        )
    d = _f32(divisor)
    torch._check(
        math.isfinite(d) and d > 0,
        lambda: f"fusion_kernels: divisor must be finite and > 0 (as float32), got {divisor}",
    )
    for name, v in (("absmax_floor", absmax_floor), ("scale_floor", scale_floor), ("zero_scale", zero_scale)):
        f = _f32(v)
        torch._check(
            math.isfinite(f) and f >= 0,
            lambda name=name, v=v: (
                f"fusion_kernels: {name} must be finite and >= 0 (as float32; 0 turns it off), got {v}"
            ),
        )
    torch._check(
        scale_dtype in _SCALE_DTYPES,
        lambda: f"fusion_kernels: scale_dtype must be float32, bfloat16 or float16, got {scale_dtype}",
    )


def _rule_scales(input: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 0:  # one scale for the tensor, [1, ..., 1]
        return input.new_empty((1,) * input.dim(), dtype=torch.float32)
    groups = 1 if group_size == 0 else input.shape[-1] // group_size
    return input.new_empty((*input.shape[:-1], groups), dtype=torch.float32)


def _check_devices(input: torch.Tensor, **others: torch.Tensor | None) -> None:
    # The kernels refuse mixed devices; fail the same way at trace time.
    for name, t in others.items():
        torch._check(
            t is None or t.device == input.device,
            lambda name=name, t=t: (
                f"fusion_kernels: {name} must be on the input's device ({input.device}), got {t.device}"
            ),
        )


def _out(input: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return input.new_empty(input.shape, dtype=dtype)


def _token_scales(input: torch.Tensor) -> torch.Tensor:
    return input.new_empty((*input.shape[:-1], 1), dtype=torch.float32)


def _group_scales(input: torch.Tensor, group_size: int, column_major_scales: bool, tma_aligned: bool = False) -> torch.Tensor:
    groups = input.shape[-1] // group_size
    if column_major_scales and tma_aligned:  # strides (1, rows padded to 4)
        rows = input.shape[0]
        return input.new_empty((groups, (rows + 3) // 4 * 4), dtype=torch.float32).t()[:rows]
    if column_major_scales:
        return input.new_empty((groups, input.shape[0]), dtype=torch.float32).t()
    return input.new_empty((*input.shape[:-1], groups), dtype=torch.float32)


def rms_norm(input, weight, epsilon):
    _check_devices(input, weight=weight)
    return _out(input, input.dtype)


def fused_add_rms_norm(input, residual, weight, epsilon):
    _check_devices(input, residual=residual, weight=weight)
    return _out(input, input.dtype), _out(input, input.dtype)


def static_scaled_fp8_quant(input, scale, fp8_dtype):
    _check_devices(input, scale=scale)
    return _out(input, fp8_dtype)


def dynamic_per_token_scaled_fp8_quant(input, scale_ub, fp8_dtype):
    _check_devices(input, scale_ub=scale_ub)
    return _out(input, fp8_dtype), _token_scales(input)


def per_token_group_fp8_quant(input, group_size, column_major_scales, scale_ue8m0, fp8_dtype, tma_aligned_scales=False):
    _check_group(input, group_size, column_major_scales, tma_aligned_scales)
    return _out(input, fp8_dtype), _group_scales(input, group_size, column_major_scales, tma_aligned_scales)


def static_scaled_int8_quant(input, scale):
    _check_devices(input, scale=scale)
    return _out(input, torch.int8)


def dynamic_scaled_int8_quant(input):
    return _out(input, torch.int8), _token_scales(input)


def rms_norm_static_fp8_quant(input, weight, scale, epsilon, fp8_dtype):
    _check_devices(input, weight=weight, scale=scale)
    return _out(input, fp8_dtype)


def fused_add_rms_norm_static_fp8_quant(input, residual, weight, scale, epsilon, fp8_dtype):
    _check_devices(input, residual=residual, weight=weight, scale=scale)
    return _out(input, fp8_dtype), _out(input, input.dtype)


def rms_norm_dynamic_per_token_quant(input, weight, epsilon, quant_dtype, scale_ub):
    _check_devices(input, weight=weight, scale_ub=scale_ub)
    return _out(input, quant_dtype), _token_scales(input)


def fused_add_rms_norm_dynamic_per_token_quant(input, residual, weight, epsilon, quant_dtype, scale_ub):
    _check_devices(input, residual=residual, weight=weight, scale_ub=scale_ub)
    return _out(input, quant_dtype), _token_scales(input), _out(input, input.dtype)


def rms_norm_per_token_group_quant(input, weight, epsilon, group_size, column_major_scales, scale_ue8m0, fp8_dtype,
                                   tma_aligned_scales=False):  # fmt: skip
    _check_devices(input, weight=weight)
    _check_group(input, group_size, column_major_scales, tma_aligned_scales)
    return _out(input, fp8_dtype), _group_scales(input, group_size, column_major_scales, tma_aligned_scales)


def fused_add_rms_norm_per_token_group_quant(
    input, residual, weight, epsilon, group_size, column_major_scales, scale_ue8m0, fp8_dtype, tma_aligned_scales=False
):
    _check_devices(input, residual=residual, weight=weight)
    _check_group(input, group_size, column_major_scales, tma_aligned_scales)
    return (
        _out(input, fp8_dtype),
        _group_scales(input, group_size, column_major_scales, tma_aligned_scales),
        _out(input, input.dtype),
    )


def _packed_scales(input: torch.Tensor, group_size: int) -> torch.Tensor:
    # int32 [rows, ceil(groups / 4)], strides (1, rows padded to 4): DeepGEMM's packed UE8M0 layout
    rows = math.prod(input.shape[:-1])
    packed_k, padded = (input.shape[-1] // group_size + 3) // 4, (rows + 3) // 4 * 4
    return input.new_empty((packed_k, padded), dtype=torch.int32).t()[:rows]


def per_token_group_fp8_quant_packed(input, group_size, fp8_dtype):
    _check_group(input, group_size, False)
    return _out(input, fp8_dtype), _packed_scales(input, group_size)


def rms_norm_per_token_group_quant_packed(input, weight, epsilon, group_size, fp8_dtype):
    _check_devices(input, weight=weight)
    _check_group(input, group_size, False)
    return _out(input, fp8_dtype), _packed_scales(input, group_size)


def fused_add_rms_norm_per_token_group_quant_packed(input, residual, weight, epsilon, group_size, fp8_dtype):
    _check_devices(input, residual=residual, weight=weight)
    _check_group(input, group_size, False)
    return _out(input, fp8_dtype), _packed_scales(input, group_size), _out(input, input.dtype)


def rms_norm_static_int8_quant(input, weight, scale, epsilon):
    _check_devices(input, weight=weight, scale=scale)
    return _out(input, torch.int8)


def fused_add_rms_norm_static_int8_quant(input, residual, weight, scale, epsilon):
    _check_devices(input, residual=residual, weight=weight, scale=scale)
    return _out(input, torch.int8), _out(input, input.dtype)


def dynamic_quant(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
                  scale_ue8m0):  # fmt: skip
    _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype)
    return _out(input, quant_dtype), _rule_scales(input, group_size)


def rms_norm_dynamic_quant(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor, scale_floor,
                           zero_scale, scale_dtype, scale_ue8m0):  # fmt: skip
    _check_devices(input, weight=weight)
    _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype)
    return _out(input, quant_dtype), _rule_scales(input, group_size)


def fused_add_rms_norm_dynamic_quant(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                     absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0):  # fmt: skip
    _check_devices(input, residual=residual, weight=weight)
    _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype)
    return _out(input, quant_dtype), _rule_scales(input, group_size), _out(input, input.dtype)


def rms_norm_dynamic_quant_with_norm_out(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor,
                                         scale_floor, zero_scale, scale_dtype, scale_ue8m0):  # fmt: skip
    return (*rms_norm_dynamic_quant(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor,
                                    scale_floor, zero_scale, scale_dtype, scale_ue8m0),
            _out(input, input.dtype))  # fmt: skip


def fused_add_rms_norm_dynamic_quant_with_norm_out(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                                   absmax_floor, scale_floor, zero_scale, scale_dtype,
                                                   scale_ue8m0):  # fmt: skip
    return (*fused_add_rms_norm_dynamic_quant(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                              absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0),
            _out(input, input.dtype))  # fmt: skip



# --- the microscaling quant ops (MXFP8, MXFP4, NVFP4; csrc/mx_ops.h) ---

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

FAKES = {
    name: globals()[name]
    for name in (
        "rms_norm",
        "fused_add_rms_norm",
        "static_scaled_fp8_quant",
        "dynamic_per_token_scaled_fp8_quant",
        "per_token_group_fp8_quant",
        "static_scaled_int8_quant",
        "dynamic_scaled_int8_quant",
        "rms_norm_static_fp8_quant",
        "fused_add_rms_norm_static_fp8_quant",
        "rms_norm_dynamic_per_token_quant",
        "fused_add_rms_norm_dynamic_per_token_quant",
        "rms_norm_per_token_group_quant",
        "fused_add_rms_norm_per_token_group_quant",
        "rms_norm_static_int8_quant",
        "fused_add_rms_norm_static_int8_quant",
        "per_token_group_fp8_quant_packed",
        "rms_norm_per_token_group_quant_packed",
        "fused_add_rms_norm_per_token_group_quant_packed",
        "dynamic_quant",
        "rms_norm_dynamic_quant",
        "fused_add_rms_norm_dynamic_quant",
        "rms_norm_dynamic_quant_with_norm_out",
        "fused_add_rms_norm_dynamic_quant_with_norm_out",
        *MX_OP_NAMES,
    )
}

#: The ops whose dynamic scale rule is given by parameters (the rule ops), and the fused ones'
#: norm-output variants (the normalised output returned too, last).
RULE_OP_NAMES: tuple[str, ...] = (
    "dynamic_quant",
    "rms_norm_dynamic_quant",
    "fused_add_rms_norm_dynamic_quant",
    "rms_norm_dynamic_quant_with_norm_out",
    "fused_add_rms_norm_dynamic_quant_with_norm_out",
)

#: Every op the library is expected to define (the registry and the tests use this list), but
#: the microscaling ops (MX_OP_NAMES, see there).
OP_NAMES: tuple[str, ...] = tuple(name for name in FAKES if name not in MX_OP_NAMES)

#: Every op the library defines: OP_NAMES and MX_OP_NAMES.
ALL_OP_NAMES: tuple[str, ...] = tuple(FAKES)


def register_all() -> None:
    """Register the fake of every op the loaded library defines (idempotent)."""
    for name, fn in FAKES.items():
        if name in _registered or not hasattr(torch.ops.fusion_kernels, name):
            continue
        torch.library.register_fake(f"fusion_kernels::{name}")(fn)
        _registered.add(name)
