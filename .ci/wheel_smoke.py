# SPDX-License-Identifier: Apache-2.0
"""Run in a fresh venv where only the wheel (and torch) is installed: the package imports, the
prebuilt library loads without any build (JIT off), and its ops work. With --cuda, the CUDA
kernels are exercised as well (the GPU machine)."""

import argparse
import os
import sys

os.environ["FUSION_KERNELS_NO_JIT"] = "1"

import torch  # noqa: E402

import fusion_kernels  # noqa: E402
import fusion_passes  # noqa: E402
from fusion_kernels.testing import assert_outputs_match, make_args, reference_of  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--cuda", action="store_true")
args = parser.parse_args()

from pathlib import Path  # noqa: E402

# The installed package directory is named fusion_kernels (the source directory is kernels/).
assert Path(fusion_kernels.__file__).parent.name == "fusion_kernels", f"not the wheel: {fusion_kernels.__file__}"
st = fusion_kernels.load()
print(f"library: {st}")
assert st.loaded and st.source == "prebuilt", st
devices = ["cpu"] + (["cuda"] if args.cuda else [])
for device in devices:
    for name in fusion_kernels.OP_NAMES:
        kw = {"group_size": 64} if "group" in name else {}
        a = make_args(name, (7,), 256, torch.bfloat16, device, **kw)
        out = getattr(torch.ops.fusion_kernels, name)(*a)
        exp = reference_of(name)(*a)
        assert_outputs_match(name, out, exp, torch.bfloat16, group_size=kw.get("group_size"))
    print(f"{device}: {len(fusion_kernels.OP_NAMES)} ops match the reference")
p = fusion_passes.FusionPass()
assert p.report.active_patterns and "prebuilt" in p.report.library, p.report.library
print(f"plugin: {len(p.report.active_patterns)} patterns active; library {p.report.library}")
sys.exit(0)
