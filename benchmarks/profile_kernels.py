# SPDX-License-Identifier: Apache-2.0
"""A few fused-op launches to profile with Nsight Compute, e.g.

    ncu --clock-control none --kernel-name regex:row_op_kernel --launch-skip 3 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python benchmarks/profile_kernels.py --case per_token --tokens 1 16384

(the microscaling kernels: ``--kernel-name regex:mx_kernel --case nvfp4``).
"""

import argparse

import torch

import fusion_kernels

#: The microscaling cases: (op format, residual, swizzled scales), FLOOR block scales.
MX_CASES = {
    "nvfp4": ("nvfp4", False, False),
    "nvfp4_res": ("nvfp4", True, False),
    "mxfp4_swizzled": ("mxfp4", False, True),
    "mxfp8": ("mxfp8", False, False),
    "mxfp8_res": ("mxfp8", True, False),
}

parser = argparse.ArgumentParser()
parser.add_argument(
    "--case",
    default="per_token",
    choices=["static", "static_res", "per_token", "per_token_res", "group128", "int8_static", *MX_CASES],
)
parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16384])
parser.add_argument("--hidden", type=int, default=8192)
parser.add_argument("--repeat", type=int, default=4)
args = parser.parse_args()

fusion_kernels.load(strict=True)
ops = torch.ops.fusion_kernels
fp8 = torch.float8_e4m3fn
for t in args.tokens:
    x = torch.randn(t, args.hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(args.hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor(0.02, device="cuda")
    for _ in range(args.repeat):
        if args.case in MX_CASES:
            fmt, res, swz = MX_CASES[args.case]
            op = getattr(ops, f"{'fused_add_' if res else ''}rms_norm_{fmt}_quant")
            head = (x, r, w, 1e-6) if res else (x, w, 1e-6)
            tail = {"mxfp8": (fp8, "floor", swz), "mxfp4": ("floor", swz), "nvfp4": (s, False, swz)}[fmt]
            op(*head, *tail)
        elif args.case == "static":
            ops.rms_norm_static_fp8_quant(x, w, s, 1e-6, fp8)
        elif args.case == "static_res":
            ops.fused_add_rms_norm_static_fp8_quant(x, r, w, s, 1e-6, fp8)
        elif args.case == "per_token":
            ops.rms_norm_dynamic_per_token_quant(x, w, 1e-6, fp8, None)
        elif args.case == "per_token_res":
            ops.fused_add_rms_norm_dynamic_per_token_quant(x, r, w, 1e-6, fp8, None)
        elif args.case == "int8_static":
            ops.rms_norm_static_int8_quant(x, w, s, 1e-6)
        else:
            ops.rms_norm_per_token_group_quant(x, w, 1e-6, 128, False, False, fp8)
torch.cuda.synchronize()
