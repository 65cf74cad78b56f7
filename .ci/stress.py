# SPDX-License-Identifier: Apache-2.0
"""Stress without the sanitizer (GPU machine): many random shapes of every op against the
reference, computed on the GPU; the >2^31-element case is tests/ops/test_cuda.py's."""

import argparse
import random
import time

import torch

import fusion_kernels
from fusion_kernels import OP_NAMES
from fusion_kernels.fake import RULE_OP_NAMES
from fusion_kernels.reference import QMAX
from fusion_kernels.testing import assert_outputs_match, make_args, reference_of

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=120)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()


def random_rule(rng: random.Random) -> dict:
    """A rule op's quant dtype, group size and scale rule, drawn from the rules real quantizers use."""
    qdtype = rng.choice([torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8])
    ue8m0 = rng.random() < 0.3
    return {
        "quant_dtype": qdtype,
        "group_size": rng.choice([-1, 0, 0, 32, 64, 128]),  # -1: one scale for the tensor
        "divisor": rng.choice([QMAX[qdtype], QMAX[qdtype], 127.5 if qdtype == torch.int8 else 3.0]),
        "absmax_floor": rng.choice([0.0, 1e-12, 1e-4]),
        # with UE8M0 a floor that is a power of two (the comparison's UE8M0 tolerance needs it)
        "scale_floor": rng.choice([0.0, 2.0**-20 if ue8m0 else 1.0 / (QMAX[qdtype] * 512)]),
        "zero_scale": rng.choice([0.0, torch.finfo(torch.float32).eps]),
        "scale_dtype": rng.choice([torch.float32, torch.float32, torch.bfloat16, torch.float16]),
        "scale_ue8m0": ue8m0,
    }


fusion_kernels.load(strict=True)
# The rule ops only where this build has their CUDA kernels (FK_GPU_RULE_OPS=1, csrc/row_op.h).
# (Only ops the loaded library defines: asking the dispatcher about an undefined op raises.)
names = [
    n
    for n in OP_NAMES
    if hasattr(torch.ops.fusion_kernels, n)
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"fusion_kernels::{n}", "CUDA")
]
print(f"stress: {len(names)} ops with CUDA kernels" + ("" if set(RULE_OP_NAMES) <= set(names) else " (no rule ops)"))
rng = random.Random(args.seed)
start, count = time.time(), 0
while time.time() - start < args.seconds:
    name = rng.choice(names)
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
    kw = random_rule(rng) if name in RULE_OP_NAMES else {}
    if kw.get("group_size", 0) > 0:
        hidden = kw["group_size"] * rng.randint(1, 160)
        lead = (rng.randint(0, 5000),)
    elif "group" in name:
        kw["group_size"] = rng.choice([32, 64, 128])
        hidden = kw["group_size"] * rng.randint(1, 160)
        kw["column_major_scales"] = rng.random() < 0.3
        kw["scale_ue8m0"] = rng.random() < 0.3
        lead = (rng.randint(0, 5000),)
    else:
        hidden = rng.choice([rng.randint(1, 20000), rng.choice([2048, 4096, 5120, 7168, 8192, 16384])])
        lead = rng.choice([(rng.randint(0, 5000),), (rng.randint(1, 40), rng.randint(1, 70))])
    a = make_args(name, lead, hidden, dtype, "cuda", row_padding=rng.choice([0, 0, 8]),
                  value_scale=rng.choice([1e-2, 1.0, 50.0]), generator=torch.Generator(device="cuda").manual_seed(count),
                  **kw)  # fmt: skip
    try:
        out = getattr(torch.ops.fusion_kernels, name)(*a)
        assert_outputs_match(name, out, reference_of(name)(*a), dtype, scale_dtype=kw.get("scale_dtype", torch.float32),
                             group_size=kw.get("group_size") or 128)
    except AssertionError as exc:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else t for t in a]
        torch.cuda.synchronize()
        again = getattr(torch.ops.fusion_kernels, name)(*a)
        torch.cuda.synchronize()
        try:
            assert_outputs_match(
                name, again, reference_of(name)(*a), dtype, scale_dtype=kw.get("scale_dtype", torch.float32),
                group_size=kw.get("group_size") or 128,
            )
            verdict = "the same call passes when repeated after a synchronize"
        except AssertionError:
            verdict = "the same call fails again when repeated"
        raise AssertionError(f"call {count}: {name} {dtype} lead={lead} hidden={hidden} {kw} args={shapes}: "
                             f"{exc}; {verdict}") from None  # fmt: skip
    count += 1
torch.cuda.synchronize()
print(f"stress: {count} random op calls matched the reference in {time.time() - start:.0f} s")
