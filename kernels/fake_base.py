# SPDX-License-Identifier: Apache-2.0
"""What every fake (meta) function shares: the device check and the output allocation."""

from __future__ import annotations

import torch


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
