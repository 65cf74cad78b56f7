# SPDX-License-Identifier: Apache-2.0
"""Dynamic per-tensor quantization: the rule ops with ``group_size = -1`` (one scale for the whole
tensor, from the absmax of all of it; torchao's PerTensor, ``input_to_float8``).

On every device present: the quant op bit for bit against the reference; the fused ops bit for
bit against our unfused pair (norm op, then the quant op) and within the README's tolerances
against the reference; the scale of no rows, of an all-zero tensor and of a tensor holding a NaN;
the result independent of the row order and of how the rows are shaped or laid out (the max is
exact, so how the work is split cannot matter), and of the batch on CUDA across the launch
variants (few rows vs many rows)."""

import itertools

import pytest
import torch

from fusion_kernels import reference
from fusion_kernels.fake import RULE_OP_NAMES
from fusion_kernels.testing import assert_outputs_match, make_args, scale_rule as rule

ops = torch.ops.fusion_kernels

FP8 = torch.float8_e4m3fn
FNUZ = torch.float8_e4m3fnuz
INT8 = torch.int8
PER_TENSOR = -1


#: name: rule of (quant dtype, model dtype)
RULES = {
    # torchao PerTensor: amax / 448 rounded to the model dtype, no floor.
    "torchao": lambda q, d: rule(q, scale_dtype=d),
    # vLLM/SGLang input_to_float8: the absmax floored at 1e-12, an fp32 scale.
    "absmax_floor_1e-12": lambda q, d: rule(q, absmax_floor=1e-12),
    # A scale floor and a zero replacement, UE8M0: every step of the rule at once.
    "everything": lambda q, d: rule(q, absmax_floor=1e-6, scale_dtype=torch.float16, scale_ue8m0=True,
                                    scale_floor=2.0**-20, zero_scale=1e-3),  # fmt: skip
}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture
def rule_ops(request, device):
    missing = [n for n in RULE_OP_NAMES if not n.endswith("_with_norm_out") and not hasattr(ops, n)]
    if missing:
        pytest.skip(f"the loaded library does not define {missing}")
    cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("fusion_kernels::dynamic_quant", "CUDA")
    if device == "cuda" and not cuda_kernel:
        pytest.skip("the loaded library has no CUDA kernels for the rule ops")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Bit for bit, except that any NaN equals any NaN (a NaN's sign and payload are not specified)."""
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    a, b = a.cpu(), b.cpu()
    if a.dtype != torch.int8 and a.is_floating_point():
        na, nb = torch.isnan(a.float()), torch.isnan(b.float())
        assert torch.equal(na, nb), f"{what}: NaN at different places"
        assert torch.equal(bits(a)[~na], bits(b)[~nb]), f"{what}: not bit for bit equal"
    else:
        assert torch.equal(a, b), f"{what}: differs"


@pytest.mark.parametrize("name", RULES)
def test_quant_op_equals_the_reference(name, device, rule_ops):
    for dtype, qdtype, tokens, hidden in itertools.product(
        DTYPES, (FP8, FNUZ, INT8), [(0,), (1,), (7,), (3, 5), (300,)], [1, 7, 256, 1025]
    ):
        r = RULES[name](qdtype, dtype)
        x = make_args("dynamic_quant", tokens, hidden, dtype, "cpu", quant_dtype=qdtype, group_size=PER_TENSOR, **r)[0]
        q, s = ops.dynamic_quant(x.to(device), qdtype, PER_TENSOR, **r)
        ref_q, ref_s = reference.dynamic_quant(x, qdtype, PER_TENSOR, **r)
        what = f"{name} {dtype} {qdtype} {tokens}x{hidden}"
        assert s.shape == (1,) * x.dim() and s.dtype == torch.float32, what
        same(s, ref_s, what + " scale")
        same(q, ref_q, what + " q")


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_equals_unfused_bit_for_bit(name, dtype, device, rule_ops):
    eps = 1e-6
    for qdtype, (rows, hidden) in itertools.product((FP8, INT8), [(0, 64), (1, 4096), (9, 1025), (300, 4096)]):
        r = RULES[name](qdtype, dtype)
        x, w = make_args("rms_norm", (rows,), hidden, dtype, device)[:2]
        res = torch.randn_like(x)
        what = f"{qdtype} {rows}x{hidden}"
        got = ops.rms_norm_dynamic_quant(x, w, eps, qdtype, PER_TENSOR, **r)
        exp = ops.dynamic_quant(ops.rms_norm(x, w, eps), qdtype, PER_TENSOR, **r)
        for a, b, n in zip(got, exp, ("q", "scale")):
            same(a, b, f"{what} {n}")
        got = ops.fused_add_rms_norm_dynamic_quant(x, res, w, eps, qdtype, PER_TENSOR, **r)
        y, res_out = ops.fused_add_rms_norm(x, res, w, eps)
        for a, b, n in zip(got, (*ops.dynamic_quant(y, qdtype, PER_TENSOR, **r), res_out), ("q", "scale", "res")):
            same(a, b, f"{what} residual {n}")


@pytest.mark.parametrize("op_name", ["rms_norm_dynamic_quant", "fused_add_rms_norm_dynamic_quant"])
def test_fused_ops_match_the_reference(op_name, device, rule_ops):
    for dtype, qdtype, tokens, hidden in itertools.product(DTYPES, (FP8, INT8), [(1,), (33,), (2, 3)], [64, 1025, 4096]):
        r = RULES["torchao"](qdtype, dtype)
        args = make_args(op_name, tokens, hidden, dtype, "cpu", quant_dtype=qdtype, group_size=PER_TENSOR, **r)
        got = getattr(ops, op_name)(*[a.to(device) if isinstance(a, torch.Tensor) else a for a in args])
        exp = getattr(reference, op_name)(*args)
        assert_outputs_match(op_name, tuple(t.cpu() for t in got), exp, dtype, scale_dtype=r["scale_dtype"])


@pytest.mark.parametrize("qdtype", [FP8, FNUZ, INT8])
def test_scale_of_no_rows_and_of_zeros(qdtype, device, rule_ops):
    """No rows: the absmax is 0 and the scale is what the rule makes of 0. An all-zero tensor:
    the same scale; without a floor it is 0 and the values quantize to NaN (FP8) or 0 (INT8),
    as the plain-torch spellings without a floor compute."""
    w = torch.ones(64, device=device)
    for x in (torch.zeros(0, 64, device=device), torch.zeros(5, 64, device=device)):
        q, s = ops.rms_norm_dynamic_quant(x, w, 1e-6, qdtype, PER_TENSOR, **rule(qdtype))
        assert s.shape == (1, 1) and s.item() == 0.0
        assert (q == 0).all() if qdtype == INT8 else torch.isnan(q.float()).all()
        _, s = ops.rms_norm_dynamic_quant(x, w, 1e-6, qdtype, PER_TENSOR, **rule(qdtype, absmax_floor=1e-3))
        assert s.item() == reference.dynamic_scale(torch.tensor(0.0), **rule(qdtype, absmax_floor=1e-3)).item()
        q, s = ops.dynamic_quant(x, qdtype, PER_TENSOR, **rule(qdtype, zero_scale=0.5))
        assert s.item() == 0.5 and (q.float() == 0).all()


def test_a_nan_anywhere_makes_the_scale_nan(device, rule_ops):
    x = torch.randn(64, 512, device=device, dtype=torch.bfloat16)
    x[37, 100] = float("nan")
    w = torch.ones(512, device=device, dtype=torch.bfloat16)
    q, s = ops.rms_norm_dynamic_quant(x, w, 1e-6, FP8, PER_TENSOR, **rule(FP8))
    assert torch.isnan(s).all() and torch.isnan(q.float()).all()
    q, s = ops.rms_norm_dynamic_quant(x, w, 1e-6, INT8, PER_TENSOR, **rule(INT8))
    assert torch.isnan(s).all() and (q == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_independent_of_row_order_and_layout(dtype, device, rule_ops):
    """One scale whatever the order, the shape or the strides of the rows; each row's q then
    depends on that scale only (a permutation of the rows permutes q)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(257, 1536, generator=g).to(dtype)
    x[200] *= 40.0  # an outlier row sets the scale
    w = (1 + 0.1 * torch.randn(1536, generator=g)).to(dtype)
    res = torch.randn(257, 1536, generator=g).to(dtype)
    x, w, res = x.to(device), w.to(device), res.to(device)
    r = rule(FP8, scale_dtype=dtype)
    q, s, ro = ops.fused_add_rms_norm_dynamic_quant(x, res, w, 1e-6, FP8, PER_TENSOR, **r)
    perm = torch.randperm(257, generator=g).to(device)
    qp, sp, rop = ops.fused_add_rms_norm_dynamic_quant(x[perm], res[perm], w, 1e-6, FP8, PER_TENSOR, **r)
    same(sp, s, "scale, rows permuted")
    same(qp, q[perm], "q, rows permuted")
    same(rop, ro[perm], "residual, rows permuted")
    # [B, S, H] and strided rows (every other row of a larger tensor).
    q3, s3, _ = ops.fused_add_rms_norm_dynamic_quant(
        x[:256].reshape(16, 16, 1536), res[:256].reshape(16, 16, 1536), w, 1e-6, FP8, PER_TENSOR, **r
    )
    q2, s2, _ = ops.fused_add_rms_norm_dynamic_quant(x[:256], res[:256], w, 1e-6, FP8, PER_TENSOR, **r)
    assert s3.shape == (1, 1, 1)
    same(s3.reshape(1, 1), s2, "scale, 3-D")
    same(q3.reshape(256, 1536), q2, "q, 3-D")
    wide = torch.zeros(257, 2 * 1536, device=device, dtype=dtype)
    wide[:, :1536] = x
    qs, ss = ops.rms_norm_dynamic_quant(wide[:, :1536], w, 1e-6, FP8, PER_TENSOR, **r)
    qc, sc = ops.rms_norm_dynamic_quant(x, w, 1e-6, FP8, PER_TENSOR, **r)
    same(ss, sc, "scale, strided rows")
    same(qs, qc, "q, strided rows")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_launch_variants_agree_on_cuda(rule_ops_cuda):
    """Few rows and many rows run different launch variants (latency, throughput, rows per
    block): a tensor whose rows are the same rows repeated has the same scale and the same q
    per row in every case."""
    g = torch.Generator().manual_seed(5)
    for hidden, dtype in [(4096, torch.bfloat16), (7168, torch.bfloat16), (1025, torch.float16), (16384, torch.float32)]:
        base = torch.randn(4, hidden, generator=g).to(dtype).cuda()
        w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype).cuda()
        r = rule(FP8, scale_dtype=dtype if dtype != torch.float32 else torch.float32)
        q1, s1 = ops.rms_norm_dynamic_quant(base, w, 1e-6, FP8, PER_TENSOR, **r)
        for reps in (2, 64, 4096):
            x = base.repeat(reps, 1)
            q, s = ops.rms_norm_dynamic_quant(x, w, 1e-6, FP8, PER_TENSOR, **r)
            same(s, s1, f"H={hidden} rows={4 * reps} scale")
            same(q, q1.repeat(reps, 1), f"H={hidden} rows={4 * reps} q")


@pytest.fixture
def rule_ops_cuda():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fusion_kernels::dynamic_quant", "CUDA"):
        pytest.skip("the loaded library has no CUDA kernels for the rule ops")
