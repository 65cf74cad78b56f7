# SPDX-License-Identifier: Apache-2.0
"""Fake (meta) functions of every op: exactly the sizes, strides and dtypes the kernels return.

Registered once, after the library is loaded, for the ops the library actually defines.
"""

from __future__ import annotations

import math

import torch

from fusion_kernels import fake_mx
from fusion_kernels.fake_base import _check_devices, _out
from fusion_kernels.fake_mx import MX_OP_NAMES

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


def _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
                round_quotient=False) -> None:  # fmt: skip
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
    torch._check(
        not round_quotient or group_size >= 0,
        lambda: (
            "fusion_kernels: round_quotient needs one scale per row or per group (group_size >= 0), "
            f"got group_size {group_size}"
        ),
    )


def _rule_scales(input: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 0:  # one scale for the tensor, [1, ..., 1]
        return input.new_empty((1,) * input.dim(), dtype=torch.float32)
    groups = 1 if group_size == 0 else input.shape[-1] // group_size
    return input.new_empty((*input.shape[:-1], groups), dtype=torch.float32)


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
                  scale_ue8m0, round_quotient=False):  # fmt: skip
    _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
                round_quotient)  # fmt: skip
    return _out(input, quant_dtype), _rule_scales(input, group_size)


def rms_norm_dynamic_quant(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor, scale_floor,
                           zero_scale, scale_dtype, scale_ue8m0, round_quotient=False):  # fmt: skip
    _check_devices(input, weight=weight)
    _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
                round_quotient)  # fmt: skip
    return _out(input, quant_dtype), _rule_scales(input, group_size)


def fused_add_rms_norm_dynamic_quant(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                     absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0,
                                     round_quotient=False):  # fmt: skip
    _check_devices(input, residual=residual, weight=weight)
    _check_rule(input, quant_dtype, group_size, divisor, absmax_floor, scale_floor, zero_scale, scale_dtype,
                round_quotient)  # fmt: skip
    return _out(input, quant_dtype), _rule_scales(input, group_size), _out(input, input.dtype)


def rms_norm_dynamic_quant_with_norm_out(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor,
                                         scale_floor, zero_scale, scale_dtype, scale_ue8m0,
                                         round_quotient=False):  # fmt: skip
    return (*rms_norm_dynamic_quant(input, weight, epsilon, quant_dtype, group_size, divisor, absmax_floor,
                                    scale_floor, zero_scale, scale_dtype, scale_ue8m0, round_quotient),
            _out(input, input.dtype))  # fmt: skip


def fused_add_rms_norm_dynamic_quant_with_norm_out(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                                   absmax_floor, scale_floor, zero_scale, scale_dtype,
                                                   scale_ue8m0, round_quotient=False):  # fmt: skip
    return (*fused_add_rms_norm_dynamic_quant(input, residual, weight, epsilon, quant_dtype, group_size, divisor,
                                              absmax_floor, scale_floor, zero_scale, scale_dtype, scale_ue8m0,
                                              round_quotient),
            _out(input, input.dtype))  # fmt: skip



FAKES = {
    name: globals()[name] if name not in MX_OP_NAMES else getattr(fake_mx, name)
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
