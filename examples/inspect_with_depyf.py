# SPDX-License-Identifier: Apache-2.0
"""The shortest path to the rewritten graph on disk.

python examples/inspect_with_depyf.py && ls dump/
"""

import torch

import fusion_passes
from fusion_passes import native_forms as nf


def norm_then_quant(x, weight, scale):
    return nf.quant_fp8_static(nf.rms_norm_hf(x, weight, 1e-6), scale)


x = torch.randn(8, 256, dtype=torch.bfloat16)
w = torch.ones(256, dtype=torch.bfloat16)
report = fusion_passes.inspect(norm_then_quant, x, w, torch.tensor(0.01), out_dir="dump", native="always")
print(report)
print("rewritten post-grad graph: dump/graphs/graph_0_after.py; depyf's dumps: dump/depyf/")
