# SPDX-License-Identifier: Apache-2.0
"""Every op over a small boundary grid on CUDA, outputs copied to the host: the workload that
.ci/gpu runs under compute-sanitizer (memcheck, initcheck, racecheck). Run with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so each output is a fresh allocation: an output element the
kernel does not write is then an uninitialized read when copied back (initcheck)."""

import itertools
import sys

import torch

import fusion_kernels
from fusion_kernels import OP_NAMES
from fusion_kernels.fake import MX_OP_NAMES, RULE_OP_NAMES
from fusion_kernels.testing import make_args
from fusion_kernels.testing_mx import FORMATS, modes, mx_input, run_fused, run_quant

fusion_kernels.load(strict=True)
ops = torch.ops.fusion_kernels
count = 0
for op_name in OP_NAMES:
    if not hasattr(ops, op_name) or not torch._C._dispatch_has_kernel_for_dispatch_key(
        f"fusion_kernels::{op_name}", "CUDA"
    ):
        continue  # not in this library, or no CUDA kernel (the rule ops need FK_GPU_RULE_OPS, csrc/row_op.h)
    for tokens in [(0,), (1,), (7,), (1200,)]:  # 1200 rows: the throughput variant (many blocks)
        # At 1200 rows, 4096: aligned 16-bit rows of 128 threads with the weight staged in shared
        # memory (for the dynamic quants, the 64-register kernels of FK_WIDE_ROWS_PER_SM).
        hiddens = [7, 4096, 4104] if tokens == (1200,) else [1, 7, 64, 1025, 4104, 33000]
        for hidden in hiddens:
            for dtype, pad in [(torch.bfloat16, 0), (torch.float32, 0), (torch.float16, 3)]:
                kw = {}
                if "group" in op_name:
                    if hidden % 64:
                        continue
                    kw = {"group_size": 64, "column_major_scales": tokens == (7,), "scale_ue8m0": True}
                elif op_name in RULE_OP_NAMES:
                    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fusion_kernels::{op_name}", "CUDA"):
                        continue  # a build without FK_GPU_RULE_OPS (csrc/row_op.h)
                    # per row, groups of 32 (INT8) and 64 (FP8), and per tensor (FP8: its three
                    # kernels): a runtime divisor, scales rounded to bf16, UE8M0, zero scales replaced,
                    # the INT8 quotient rounded to the input dtype (round_quotient) per row
                    for group_size, qdtype in [(0, torch.int8), (32, torch.int8), (64, torch.float8_e4m3fn),
                                               (-1, torch.float8_e4m3fn)]:  # fmt: skip
                        if group_size > 0 and hidden % group_size:
                            continue
                        args = make_args(op_name, tokens, hidden, dtype, "cuda", row_padding=pad, quant_dtype=qdtype,
                                         group_size=group_size, divisor=127.5 if group_size == 0 else 448.0,
                                         scale_dtype=torch.bfloat16, scale_ue8m0=group_size == 64, zero_scale=1e-7,
                                         round_quotient=group_size == 0)  # fmt: skip
                        for o in getattr(ops, op_name)(*args):
                            o.cpu()
                        count += 1
                    continue
                args = make_args(op_name, tokens, hidden, dtype, "cuda", row_padding=pad, **kw)
                out = getattr(ops, op_name)(*args)
                for o in out if isinstance(out, tuple) else (out,):
                    o.cpu()
                count += 1

# The microscaling ops: every format, both scale layouts (T = 1, 7, 130: padding rows and, at
# H = 96 / 3 blocks, padding columns of the swizzled tiles), a row-strided fp16 input, the
# register-cached and the re-reading norm kernels (H = 16896 > 16384 bf16 elements).
if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fusion_kernels::{n}", "CUDA") for n in MX_OP_NAMES):
    for fmt, tokens, hidden, dtype, sw in itertools.product(
        FORMATS, [1, 7, 130], [96, 4096, 16896], [torch.bfloat16, torch.float16], [False, True]
    ):
        base = mx_input((tokens, hidden + (32 if dtype == torch.float16 else 0)), dtype).cuda()
        x = base[:, :hidden]
        w = torch.ones(hidden, dtype=dtype, device="cuda")
        gs = torch.tensor(0.02, device="cuda")
        mode = modes(fmt)[1]
        out = run_fused(fmt, x, w, 1e-6, mode, "swizzled" if sw else "row_major", x.clone(), gs)[0]
        out += run_quant(fmt, x, mode, "swizzled" if sw else "row_major", gs)[0]
        for o in out:
            o.cpu()
        count += 4
torch.cuda.synchronize()
print(f"sanitize grid: {count} op calls")
sys.exit(0)
