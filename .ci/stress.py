# SPDX-License-Identifier: Apache-2.0
"""Stress without the sanitizer (GPU machine): many random shapes of every op against the
reference, computed on the GPU; the >2^31-element case is tests/ops/test_cuda.py's."""

import argparse
import random
import time

import torch

import fusion_kernels
from fusion_kernels import OP_NAMES
from fusion_kernels.testing import assert_outputs_match, make_args, reference_of

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=120)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

fusion_kernels.load(strict=True)
rng = random.Random(args.seed)
start, count = time.time(), 0
while time.time() - start < args.seconds:
    name = rng.choice(OP_NAMES)
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
    kw = {}
    if "group" in name:
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
        assert_outputs_match(name, getattr(torch.ops.fusion_kernels, name)(*a), reference_of(name)(*a), dtype)
    except AssertionError as exc:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else t for t in a]
        torch.cuda.synchronize()
        again = getattr(torch.ops.fusion_kernels, name)(*a)
        torch.cuda.synchronize()
        try:
            assert_outputs_match(name, again, reference_of(name)(*a), dtype)
            verdict = "the same call passes when repeated after a synchronize"
        except AssertionError:
            verdict = "the same call fails again when repeated"
        raise AssertionError(f"call {count}: {name} {dtype} lead={lead} hidden={hidden} {kw} args={shapes}: "
                             f"{exc}; {verdict}") from None  # fmt: skip
    count += 1
torch.cuda.synchronize()
print(f"stress: {count} random op calls matched the reference in {time.time() - start:.0f} s")
