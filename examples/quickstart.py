# SPDX-License-Identifier: Apache-2.0
"""Quickstart: RMSNorm -> static FP8 quant -> FP8 matmul, twice with a residual, compiled with
the fusion_passes plugin. Prints what was fused and the difference against eager.

    python examples/quickstart.py            # CUDA if available, else CPU

Without the compiled op library (FUSION_KERNELS_DISABLE=1, no C++ compiler, a failed build) the
model computes its norms and quantizers with the pure-torch references (fusion_kernels.reference),
the plugin fuses nothing, and the report says why. On a CPU without a C++ compiler torch.compile
itself cannot run (Inductor writes C++ there): the model then runs eagerly, and the example says so.
"""

from __future__ import annotations

import argparse

import torch

import fusion_kernels
import fusion_passes
from fusion_kernels import platform, reference


class FP8Linear(torch.nn.Module):
    """y = (q * x_scale) @ (w_q * w_scale)^T with an FP8 weight, through torch._scaled_mm."""

    def __init__(self, in_features: int, out_features: int, fp8: torch.dtype, gen: torch.Generator):
        super().__init__()
        w = torch.randn(out_features, in_features, generator=gen) * in_features**-0.5
        w_scale = w.abs().max() / platform.FP8_MAX[fp8]
        self.register_buffer("weight", (w / w_scale).to(fp8))  # [out, in]: .t() is column-major
        self.register_buffer("weight_scale", w_scale.float().reshape(()))

    def forward(self, q: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        shape = q.shape
        out = torch._scaled_mm(
            q.reshape(-1, shape[-1]), self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
            out_dtype=torch.bfloat16,
        )  # fmt: skip
        return out.reshape(*shape[:-1], -1)


class TwoLayer(torch.nn.Module):
    """Two pre-norm layers: norm -> quant -> FP8 linear, the second with a residual add.

    ``plain_torch=True`` computes the norms and quantizers with the pure-torch references instead
    of our unfused ops (for when the op library is unavailable).
    """

    def __init__(self, hidden: int, fp8: torch.dtype, eps: float = 1e-6, plain_torch: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fp8, self.eps, self.plain_torch = fp8, eps, plain_torch
        self.norm1 = torch.nn.Parameter((1 + 0.1 * torch.randn(hidden, generator=gen)).bfloat16())
        self.norm2 = torch.nn.Parameter((1 + 0.1 * torch.randn(hidden, generator=gen)).bfloat16())
        self.register_buffer("act_scale1", torch.tensor(4.0 / platform.FP8_MAX[fp8]))
        self.register_buffer("act_scale2", torch.tensor(4.0 / platform.FP8_MAX[fp8]))
        self.lin1 = FP8Linear(hidden, hidden, fp8, gen)
        self.lin2 = FP8Linear(hidden, hidden, fp8, gen)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ops = reference if self.plain_torch else torch.ops.fusion_kernels
        h = ops.rms_norm(x, self.norm1, self.eps)
        h = self.lin1(ops.static_scaled_fp8_quant(h, self.act_scale1, self.fp8), self.act_scale1)
        h, residual = ops.fused_add_rms_norm(h, x, self.norm2, self.eps)
        h = self.lin2(ops.static_scaled_fp8_quant(h, self.act_scale2, self.fp8), self.act_scale2)
        return h, residual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    state = fusion_kernels.load()  # builds the op library on first use (cached afterwards)
    if not state.loaded:
        print(f"note: the op library is unavailable ({state.reason}): the model runs in plain torch "
              "and the plugin fuses nothing")  # fmt: skip
    fp8 = platform.fp8_dtype(args.device)
    model = TwoLayer(args.hidden, fp8, plain_torch=not state.loaded).to(args.device)
    x = torch.randn(2, args.tokens // 2, args.hidden, dtype=torch.bfloat16, device=args.device)

    with torch.no_grad():
        eager = model(x)
    cannot_compile = platform.inductor_unavailable(args.device)
    if cannot_compile:
        print(f"note: {cannot_compile}: the model ran eagerly, not compiled")
        print(f"nothing was fused: {cannot_compile}")
        return
    with torch.no_grad():
        compiled = fusion_passes.compile(model)
        out = compiled(x)

    report = fusion_passes.report(compiled)
    print(report)
    if report.fused == 0:
        why = state.reason if not state.loaded else "; ".join(sorted(report.refusals_per_reason())) or "no site matched"
        print(f"nothing was fused: {why}")
    for name, a, b in zip(("output", "residual"), out, eager):
        print(f"max |compiled - eager| {name}: {(a.float() - b.float()).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
