# SPDX-License-Identifier: Apache-2.0
"""Property tests (hypothesis) of every op against the reference on CPU, and special values."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_kernels import OP_NAMES, reference
from fusion_kernels.fake import RULE_OP_NAMES
from fusion_kernels.testing import OUTPUT_KINDS, assert_outputs_match, make_args, reference_of

ops = torch.ops.fusion_kernels
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _fp8_midpoints(dtype: torch.dtype) -> torch.Tensor:
    """Values exactly halfway between adjacent FP8 codes: where rounding must be to even."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8).view(dtype).float()
    codes = codes[torch.isfinite(codes)]
    mids = (codes[1:] + codes[:-1]) / 2
    return torch.cat([mids, -mids])


@st.composite
def cases(draw):
    op_name = draw(st.sampled_from(OP_NAMES))
    dtype = draw(st.sampled_from(DTYPES))
    rule = op_name in RULE_OP_NAMES
    group = "group" in op_name or (rule and draw(st.booleans()))
    if group:
        gsize = draw(st.sampled_from([32, 64, 128]))
        hidden = gsize * draw(st.integers(1, 6))
    else:
        gsize, hidden = (0 if rule else 128), draw(st.integers(1, 700))
    lead = draw(st.sampled_from([(0,), (1,), (3,), (17,), (2, 3)]))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 3000.0]))
    qdtype = draw(st.sampled_from([torch.float8_e4m3fn, torch.float8_e4m3fnuz]))
    if "dynamic_per_token_quant" in op_name or rule:
        qdtype = draw(st.sampled_from([torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8]))
    # A rule op's scale rule: absmax / qmax (the default) or with a divisor, a floor, the scale
    # rounded to a 16-bit dtype, UE8M0 or a zero replacement.
    kw = {}
    if rule:
        kw = draw(
            st.sampled_from(
                [
                    {},
                    {"absmax_floor": 0.0, "scale_dtype": torch.bfloat16},
                    {"absmax_floor": 1e-4, "scale_ue8m0": True},
                    {"absmax_floor": 0.0, "scale_floor": 1e-5, "scale_dtype": torch.float16},
                    {"absmax_floor": 0.0, "divisor": 127.5, "zero_scale": 1e-7},
                ]
            )
        )
    weight32 = "rms_norm" in op_name and draw(st.booleans())
    zero_rows = draw(st.booleans())
    padding = draw(st.sampled_from([0, 0, 5]))
    seed = draw(st.integers(0, 2**31 - 1))
    return op_name, dtype, hidden, lead, scale, qdtype, gsize, weight32, zero_rows, padding, seed, kw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_op_matches_the_reference_on_random_inputs(case):
    op_name, dtype, hidden, lead, scale, qdtype, gsize, weight32, zero_rows, padding, seed, kw = case
    args = list(make_args(op_name, lead, hidden, dtype, "cpu", weight_dtype=torch.float32 if weight32 else None,
                          quant_dtype=qdtype, group_size=gsize, value_scale=scale, row_padding=padding,
                          generator=torch.Generator().manual_seed(seed), **kw))  # fmt: skip
    if zero_rows and args[0].numel():
        args[0] = args[0].clone()
        args[0].reshape(-1, hidden)[0] = 0  # an all-zero row: scales must stay finite
    out = getattr(ops, op_name)(*args)
    expected = reference_of(op_name)(*args)
    # fp16 overflows above 65504: the reference and the kernel overflow identically.
    assert_outputs_match(op_name, out, expected, dtype, scale_dtype=kw.get("scale_dtype", torch.float32),
                         group_size=gsize if gsize and gsize > 0 else 128)
    outs = out if isinstance(out, tuple) else (out,)
    # Every rule drawn above keeps scales positive except those without any floor (an all-zero
    # row's scale is then 0) and those rounding to float16 (below its range: 0, above: Inf).
    positive = not kw or kw.get("absmax_floor", 1.0) > 0 or kw.get("zero_scale", 0.0) > 0
    for o, kind in zip(outs, OUTPUT_KINDS[op_name]):
        if kind == "scales" and torch.isfinite(args[0].float()).all() and positive:
            assert torch.isfinite(o).all() and (o > 0).all(), "scales must stay finite and positive"


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e4m3fnuz])
def test_values_on_fp8_rounding_boundaries_round_to_even(fp8):
    mids = _fp8_midpoints(fp8)
    x = mids.reshape(1, -1).to(torch.float32)
    one = torch.tensor(1.0)
    q = ops.static_scaled_fp8_quant(x, one, fp8)
    expected = reference.static_scaled_fp8_quant(x, one, fp8)
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))
    assert torch.equal(expected.view(torch.uint8), x.to(fp8).view(torch.uint8)), "torch's cast is the spec"


def test_nan_and_inf_follow_the_reference():
    """NaN propagates (a NaN makes its row's dynamic scale NaN; INT8 stores 0); +-Inf saturates
    to +-qmax when quantized; a norm over a row holding Inf gives NaN there and 0 elsewhere."""
    x = torch.randn(4, 64)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2, 7] = float("-inf")
    w = torch.ones(64)
    one = torch.tensor(1.0)
    q = ops.static_scaled_fp8_quant(x, one, torch.float8_e4m3fn).float()
    assert math.isnan(q[0, 3]) and q[1, 5] == 448 and q[2, 7] == -448
    assert torch.equal(
        ops.static_scaled_int8_quant(x, one)[0:3, [3, 5, 7]].diag(), torch.tensor([0, 127, -128], dtype=torch.int8)
    )
    q, s = ops.dynamic_per_token_scaled_fp8_quant(x, None, torch.float8_e4m3fn)
    assert math.isnan(s[0, 0]) and torch.isnan(q[0].float()).all()
    assert torch.isfinite(s[3]).all()
    y = ops.rms_norm(x, w, 1e-6)
    assert math.isnan(y[1, 5]) and (y[1, :5] == 0).all()
    for name in OP_NAMES:
        kw = {"group_size": 64} if "group" in name else {}
        args = list(make_args(name, (4,), 64, torch.float32, "cpu", **kw))
        args[0] = x.clone()
        got, exp = getattr(ops, name)(*args), reference_of(name)(*args)
        got = got if isinstance(got, tuple) else (got,)
        exp = exp if isinstance(exp, tuple) else (exp,)
        for g, e in zip(got, exp):
            if g.element_size() == 1 and g.dtype != torch.int8:
                same = (g.view(torch.uint8) == e.view(torch.uint8)) | (torch.isnan(g.float()) & torch.isnan(e.float()))
                assert same.all(), name
            else:
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
