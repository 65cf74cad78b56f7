# SPDX-License-Identifier: Apache-2.0
"""The matchers: our custom-op form (custom_op) and plain torch (native)."""


class Refusal(Exception):
    """A site that looks fusable but is not provably equivalent here (or has no kernel)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


#: The packed-scale group ops' CUDA kernels failed their first GPU run (their FP8 output differs
#: from the CPU kernels' and the reference's): no site is fused into them on CUDA until fixed.
PACKED_ON_CUDA = (
    "packed_kernel_unverified_on_cuda",
    "the packed-scale group ops' CUDA kernels failed their GPU tests (README: known bug)",
)
