# SPDX-License-Identifier: Apache-2.0
"""Typed keys for quantization schemes: what a pattern quantizes to, validated on construction."""

from __future__ import annotations

import dataclasses
import enum

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
QUANT_DTYPES = (*FP8_DTYPES, torch.int8)
GROUP_SIZES = (32, 64, 128)

_SHORT = {torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e4m3fnuz: "fp8_e4m3fnuz", torch.int8: "int8"}


class Scheme(str, enum.Enum):
    STATIC = "static"  # one fp32 scale for the tensor, given
    PER_TOKEN = "per_token"  # one fp32 scale per row, from the row's absmax
    PER_GROUP = "per_group"  # one fp32 scale per group_size elements of a row
    # one fp32 scale for the whole tensor, from its absmax (dynamic; the rule ops' group_size -1)
    PER_TENSOR = "per_tensor"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class QuantKey:
    """A quantization target: output dtype, scale scheme and (for groups) the group size.

    ``QuantKey(torch.float8_e4m3fn, Scheme.PER_GROUP, 128)`` is DeepSeek-style 1x128 FP8.
    """

    dtype: torch.dtype
    scheme: Scheme
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in QUANT_DTYPES:
            raise ValueError(f"QuantKey.dtype must be one of {QUANT_DTYPES}, got {self.dtype}")
        if not isinstance(self.scheme, Scheme):
            object.__setattr__(self, "scheme", Scheme(self.scheme))
        if self.scheme is Scheme.PER_GROUP:
            if self.group_size not in GROUP_SIZES:
                raise ValueError(
                    f"QuantKey.group_size must be one of {GROUP_SIZES} for per-group keys, got {self.group_size}"
                )
        elif self.group_size is not None:
            raise ValueError(f"QuantKey.group_size is only for per-group keys, got {self.group_size} for {self.scheme}")

    @property
    def is_fp8(self) -> bool:
        return self.dtype in FP8_DTYPES

    @property
    def qmax(self) -> float:
        return {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0, torch.int8: 127.0}[self.dtype]

    @property
    def qmin(self) -> float:
        return -128.0 if self.dtype == torch.int8 else -self.qmax

    @property
    def name(self) -> str:
        scheme = f"group{self.group_size}" if self.scheme is Scheme.PER_GROUP else self.scheme.value
        return f"{_SHORT[self.dtype]}_{scheme}"

    def __str__(self) -> str:
        return self.name


def fp8_static(dtype: torch.dtype = torch.float8_e4m3fn) -> QuantKey:
    return QuantKey(dtype, Scheme.STATIC)


def fp8_per_token(dtype: torch.dtype = torch.float8_e4m3fn) -> QuantKey:
    return QuantKey(dtype, Scheme.PER_TOKEN)


def fp8_per_group(group_size: int, dtype: torch.dtype = torch.float8_e4m3fn) -> QuantKey:
    return QuantKey(dtype, Scheme.PER_GROUP, group_size)


INT8_STATIC = QuantKey(torch.int8, Scheme.STATIC)
INT8_PER_TOKEN = QuantKey(torch.int8, Scheme.PER_TOKEN)
