# SPDX-License-Identifier: Apache-2.0
"""fusion_kernels: RMSNorm and FP8/INT8 quantization ops, unfused and fused, for torch.

The ops live in ``torch.ops.fusion_kernels`` once the compiled library is loaded::

    import fusion_kernels
    fusion_kernels.load()            # builds on first use (cached), or loads a prebuilt library
    torch.ops.fusion_kernels.rms_norm_static_fp8_quant(x, w, scale, 1e-6, torch.float8_e4m3fn)

Importing this package builds nothing and touches no GPU. ``fusion_kernels.reference`` holds the
pure-torch reference of every op (the spec); ``fusion_kernels.platform`` answers every hardware
question; ``FUSION_KERNELS_DISABLE=1`` turns the compiled library off.
"""

from fusion_kernels.build import LibraryState, load, state
from fusion_kernels.fake import OP_NAMES

__all__ = ["LibraryState", "OP_NAMES", "load", "state", "available_ops"]


def available_ops() -> list[str]:
    """Names of the ops the loaded library defines (empty before :func:`load` or when disabled)."""
    import torch

    return [name for name in OP_NAMES if hasattr(torch.ops.fusion_kernels, name)]
