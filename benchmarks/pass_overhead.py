# SPDX-License-Identifier: Apache-2.0
"""Cost of the pass on a 32-layer decoder graph: pass construction (registration) and matching
per compile, for the native form, for real spellings (two norms per layer, one torchao-style
quantizer per linear: 3 + 2 merged per layer) and for our custom-op form (CPU, captured forward
graphs)."""

import copy
import time

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.decomposition import select_decomp_table

from fusion_passes import FusionPass
from fusion_passes import native_forms as nf

ops = torch.ops.fusion_kernels
LAYERS, H = 32, 256


def native_model(x, r, w, s):
    outs = []
    for _ in range(LAYERS):
        x, r = nf.add_residual(x, r)
        q, sc = nf.quant_fp8_per_token(nf.rms_norm_hf(x, w, 1e-6))
        outs.append(q)
        x = q.to(torch.bfloat16) * sc.to(torch.bfloat16)
    return outs


def ops_model(x, r, w, s):
    outs = []
    for _ in range(LAYERS):
        y, r = ops.fused_add_rms_norm(x, r, w, 1e-6)
        q, sc = ops.dynamic_per_token_scaled_fp8_quant(y, None, torch.float8_e4m3fn)
        outs.append(q)
        x = q.to(torch.bfloat16) * sc.to(torch.bfloat16)
    return outs


def _torchao_row(y):
    """torchao's PerRow activation quantizer (absmax and scale in the model dtype), one per linear."""
    scale = (y.abs().amax(dim=-1, keepdim=True) / 448.0).to(torch.float32)
    return (y.to(torch.float32) / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


def real_model(x, r, w, s):
    """Two norms per layer, each read by one quantizer per linear (q/k/v, then gate/up)."""
    outs = []
    for _ in range(LAYERS):
        x, r = nf.add_residual(x, r)
        y = nf.rms_norm_hf(x, w, 1e-6)
        qkv = [_torchao_row(y) for _ in range(3)]
        x, r = nf.add_residual(sum(q.to(torch.bfloat16) * sc.to(torch.bfloat16) for q, sc in qkv), r)
        y = nf.rms_norm_hf(x, w, 1e-6)
        gate_up = [nf.quant_fp8_per_token(y) for _ in range(2)]
        outs += [q for q, _ in qkv + gate_up]
        x = sum(q.to(torch.bfloat16) * sc.to(torch.bfloat16) for q, sc in gate_up)
    return outs


def capture(fn, args):
    graphs = []

    def fw(gm, _):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    torch.compile(fn, backend=aot_autograd(fw_compiler=fw, decompositions=select_decomp_table()))(*args)
    return graphs[0]


def main():
    import fusion_kernels

    fusion_kernels.load(strict=True)
    args = (torch.randn(8, H, dtype=torch.bfloat16), torch.randn(8, H, dtype=torch.bfloat16),
            torch.ones(H, dtype=torch.bfloat16), torch.tensor(0.01))  # fmt: skip
    t = time.perf_counter()
    p = FusionPass(native="always")
    construct = time.perf_counter() - t
    for name, fn in (("native", native_model), ("real", real_model), ("custom-op", ops_model)):
        gm = capture(fn, args)
        nodes = len(gm.graph.nodes)
        times = []
        for _ in range(5):
            g = copy.deepcopy(gm)
            t = time.perf_counter()
            p(g.graph)
            times.append(time.perf_counter() - t)
        print(f"{name:10s} {LAYERS} layers, {nodes} nodes: matching + rewriting {min(times) * 1e3:.1f} ms "
              f"(fused {p.report.graphs[-1].fused} sites)")  # fmt: skip
    print(f"pass construction (registration, library already built): {construct * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
