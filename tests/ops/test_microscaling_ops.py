# SPDX-License-Identifier: Apache-2.0
"""The microscaling quant ops (MXFP8, MXFP4, NVFP4; csrc/mx_ops.h), CPU kernels: bit for bit
against their references (fusion_kernels.microscaling), the fused ops bit for bit against the
unfused pair (our rms_norm / fused_add_rms_norm, then the quant op), argument errors (eagerly and
at trace time) and opcheck."""

import itertools
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fusion_kernels import microscaling as mx
from fusion_kernels import reference
from fusion_kernels.fake import MX_OP_NAMES, OP_NAMES
from fusion_kernels.testing_mx import (
    DTYPES,
    FORMATS,
    LAYOUTS,
    TOKENS,
    assert_same,
    block_of,
    edge_rows,
    hiddens,
    mx_input,
    modes,
    run_fused,
    run_quant,
    special_rows,
)

ops = torch.ops.fusion_kernels

# --- the unfused quant ops against the reference, bit for bit ----------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_quant_op_matches_reference(fmt, dtype, layout):
    for tokens, hidden in itertools.product(TOKENS, hiddens(fmt)):
        x = mx_input((*tokens, hidden), dtype, seed=hidden + len(tokens))
        if x.dim() == 2 and x.shape[0] >= 6:
            x = special_rows(x)
        for mode in modes(fmt):
            ours, ref = run_quant(fmt, x, mode, layout)
            assert_same(ours, ref, f"{fmt} {mode} {layout} {tuple(x.shape)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_quant_opedge_rows(fmt, dtype):
    x = edge_rows(dtype)
    for mode, layout in itertools.product(modes(fmt), LAYOUTS):
        ours, ref = run_quant(fmt, x, mode, layout)
        assert_same(ours, ref, f"{fmt} {mode} {layout}")
    if fmt == "nvfp4":  # fixed global scales: tiny, huge, 1 (saturating and underflowing blocks)
        for g, conv in itertools.product([1e-6, 1.0, 1e6], mx.NVFP4_CONVENTIONS):
            ours, ref = run_quant(fmt, x, conv, "row_major", torch.tensor(g))
            assert_same(ours, ref, f"nvfp4 {conv} g={g}")


def test_nan_block_semantics():
    """What the reference defines (and the op follows): a NaN makes its block's scale NaN; in
    rceil and NVFP4 every element of the block becomes the factor's (positive) NaN, in the other
    MX modes the finite elements become +-0 and the NaN keeps its sign."""
    x = torch.randn(2, 64)
    x[0, 3] = -float("nan")
    x[1, 40] = float("nan")
    q, s = ops.mxfp8_quant(x, torch.float8_e4m3fn, "rceil", False)
    sb = s.view(torch.uint8)
    assert sb[0, 0] == 255 and sb[1, 1] == 255 and sb[0, 1] != 255 and sb[1, 0] != 255
    assert (q.view(torch.uint8)[0, :32] == 0x7F).all() and (q.view(torch.uint8)[1, 32:] == 0x7F).all()
    q, _ = ops.mxfp8_quant(x, torch.float8_e4m3fn, "floor", False)
    assert q.view(torch.uint8)[0, 3] == 0xFF and (q.float()[0, :32].nan_to_num(0) == 0).all()
    q, s = ops.nvfp4_quant(x, torch.tensor(0.01), False, False)
    assert torch.isnan(s[0, 0].float()) and (mx.unpack_fp4(q)[0, :16] == 7).all()


def test_strided_and_non_collapsible_rows():
    base = mx_input((9, 256 + 32), torch.bfloat16)
    x = base[:, :256]  # row-strided
    assert not x.is_contiguous()
    for fmt in FORMATS:
        for layout in LAYOUTS:
            ours, ref = run_quant(fmt, x, modes(fmt)[1], layout)
            assert_same(ours, ref, f"{fmt} strided")
    x3 = mx_input((5, 3, 128), torch.float16).transpose(0, 1)  # leading dims cannot be flattened
    for fmt in FORMATS:
        ours, ref = run_quant(fmt, x3, modes(fmt)[0], "swizzled")
        assert_same(ours, ref, f"{fmt} 3-D transposed")


# --- the fused ops: == the unfused pair bit for bit, and the reference's composition -----------


@pytest.mark.parametrize("residual", [False, True], ids=["norm", "add_norm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_equals_unfused(fmt, dtype, residual):
    g = torch.Generator().manual_seed(1)
    for tokens, hidden in itertools.product([(0,), (1,), (130,), (2, 3)], hiddens(fmt)[1:3]):
        x = (torch.randn(*tokens, hidden, generator=g) * 3).to(dtype)
        if x.dim() == 2 and x.shape[0] >= 6:
            x = special_rows(x)
        res = (torch.randn(*tokens, hidden, generator=g)).to(dtype) if residual else None
        for wdtype, mode, layout in itertools.product([dtype, torch.float32], modes(fmt), LAYOUTS):
            w = (1.0 + 0.5 * torch.randn(hidden, generator=g)).to(wdtype)
            gs = torch.tensor(0.37 if mode == "divisor" else 2.7)
            fused, unfused = run_fused(fmt, x, w, 1e-6, mode, layout, res, gs)
            assert_same(fused, unfused, f"{fmt} {mode} {layout} w={wdtype} {tuple(x.shape)}")


@pytest.mark.parametrize("residual", [False, True], ids=["norm", "add_norm"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_matches_reference_composition(fmt, residual):
    """Against the reference's fused form: residual_out exactly; the quantized output and scales
    equal wherever our norm output equals the reference's (it is the reference norm up to the
    row's reduction order), so on nearly all bytes."""
    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(2)
    hidden = 8 * block_of(fmt)
    x = torch.randn(33, hidden, generator=g).to(dtype)
    r = torch.randn(33, hidden, generator=g).to(dtype)
    w = (1.0 + 0.5 * torch.randn(hidden, generator=g)).to(dtype)
    mode = modes(fmt)[1]
    gs = torch.tensor(0.01 if mode == "divisor" else 100.0)
    ours, _ = run_fused(fmt, x, w, 1e-6, mode, "row_major", r if residual else None, gs)
    lead = (x, r, w, 1e-6) if residual else (x, w, 1e-6)
    prefix = "fused_add_rms_norm" if residual else "rms_norm"
    if fmt.startswith("mxfp8"):
        f8 = torch.float8_e4m3fn if fmt == "mxfp8_e4m3" else torch.float8_e5m2
        ref = getattr(mx, f"{prefix}_mxfp8_quant")(*lead, mode, f8)
    elif fmt == "mxfp4":
        ref = getattr(mx, f"{prefix}_mxfp4_quant")(*lead, mode)
    else:
        ref = getattr(mx, f"{prefix}_nvfp4_quant")(*lead, gs, mode)
    if residual:
        assert_same(ours[2:], ref[2:], "residual_out")
    for a, e in zip(ours[:2], ref[:2]):
        assert a.shape == e.shape and a.dtype == e.dtype
        same = (a.view(torch.uint8) == e.view(torch.uint8)).float().mean().item()
        assert same >= 0.98, f"{fmt}: only {same:.3f} of the bytes match the reference's fused form"


# --- argument errors, eagerly and at trace time --------------------------------------------------


def _args(op_name, tokens=(4,), hidden=64, dtype=torch.bfloat16, **replace):
    """Schema-ordered arguments of a microscaling op."""
    g = torch.Generator().manual_seed(0)
    values = {
        "input": lambda: torch.randn(*tokens, hidden, generator=g).to(dtype),
        "residual": lambda: torch.randn(*tokens, hidden, generator=g).to(dtype),
        "weight": lambda: (1.0 + 0.5 * torch.randn(hidden, generator=g)).to(dtype),
        "epsilon": lambda: 1e-6,
        "fp8_dtype": lambda: torch.float8_e4m3fn,
        "scale_mode": lambda: "rceil",
        "swizzled_scales": lambda: False,
        "global_scale": lambda: torch.tensor(0.01),
        "global_scale_is_multiplier": lambda: False,
    }
    names = [a.name for a in getattr(ops, op_name).default._schema.arguments]
    return [replace[n] if n in replace else values[n]() for n in names]


def _has(op_name, arg):
    return arg in [a.name for a in getattr(ops, op_name).default._schema.arguments]


def _bad_cases(op_name):
    block = 16 if "nvfp4" in op_name else 32
    fused = op_name.startswith(("rms_norm", "fused_add"))
    odd = {"input": torch.randn(4, block * 3 // 2, dtype=torch.bfloat16)}
    if fused:
        odd["weight"] = torch.ones(block * 3 // 2, dtype=torch.bfloat16)
    if _has(op_name, "residual"):
        odd["residual"] = torch.randn(4, block * 3 // 2, dtype=torch.bfloat16)
    cases = [
        (
            "input",
            odd,
            rf"the hidden size \(input.size\(-1\) = {block * 3 // 2}\) must be divisible by the block size {block}",
        ),
        ("input", {"input": torch.randn(4, 64).to(torch.int32)}, "input must be float32, float16 or bfloat16"),
    ]
    if _has(op_name, "scale_mode"):
        message = "scale_mode must be one of 'floor', 'rceil', 'ceil', 'even', got 'nearest'"
        cases.append(("scale_mode", {"scale_mode": "nearest"}, message))
    if _has(op_name, "fp8_dtype"):
        message = "fp8_dtype must be float8_e4m3fn or float8_e5m2"
        cases.append(("fp8_dtype", {"fp8_dtype": torch.float8_e4m3fnuz}, message))
    if _has(op_name, "global_scale"):
        bf16_scale = torch.tensor(0.01, dtype=torch.bfloat16)
        cases.append(("global_scale", {"global_scale": bf16_scale}, "global_scale must be float32"))
        cases.append(("global_scale", {"global_scale": torch.ones(2)}, "global_scale must hold exactly one element"))
    if fused:
        cases.append(("weight", {"weight": torch.ones(32, dtype=torch.bfloat16)}, r"weight must have shape \[64\]"))
        cases.append(("epsilon", {"epsilon": -1.0}, "epsilon must be finite and >= 0"))
    if _has(op_name, "residual"):
        short = torch.randn(2, 64, dtype=torch.bfloat16)
        cases.append(("residual", {"residual": short}, "residual must have the input's shape"))
        cases.append(("residual", {"residual": torch.randn(4, 64)}, "residual must have the input's dtype"))
    return cases


@pytest.mark.parametrize("op_name", MX_OP_NAMES)
def test_bad_arguments_raise_naming_the_argument(op_name):
    for _arg, replace, message in _bad_cases(op_name):
        pattern = f"fusion_kernels.{op_name}: .*{message}"
        with pytest.raises(RuntimeError, match=pattern):
            getattr(ops, op_name)(*_args(op_name, **replace))
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in _args(op_name, **replace)]
            with pytest.raises(RuntimeError, match=pattern):
                getattr(ops, op_name)(*fake)


@pytest.mark.parametrize("op_name", MX_OP_NAMES)
def test_bad_input_tensor_like_every_op(op_name):
    for make, message in [
        (lambda: torch.empty(4, 0, dtype=torch.bfloat16), "hidden size (last dim) must be > 0"),
        (lambda: torch.tensor(1.0, dtype=torch.bfloat16), "at least one dimension"),
        (lambda: torch.randn(64, 4).to(torch.bfloat16).t(), "last dim must be contiguous"),
    ]:
        with pytest.raises(RuntimeError, match=f"fusion_kernels.{op_name}: .*{re.escape(message)}"):
            getattr(ops, op_name)(*_args(op_name, input=make()))


# --- the op contract -----------------------------------------------------------------------------


def test_cpu_kernels_and_names():
    assert not set(MX_OP_NAMES) & set(OP_NAMES)
    for name in MX_OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusion_kernels::{name}", "CPU"), name


@pytest.mark.parametrize("op_name", MX_OP_NAMES)
def test_opcheck(op_name):
    cases = [((5,), torch.bfloat16, False), ((2, 3), torch.float32, True), ((130,), torch.float16, True)]
    for tokens, dtype, sw in cases:
        extra = {"swizzled_scales": sw}
        if _has(op_name, "fp8_dtype") and dtype == torch.float32:
            extra["fp8_dtype"] = torch.float8_e5m2
        if _has(op_name, "global_scale_is_multiplier"):
            extra["global_scale_is_multiplier"] = sw
            extra["global_scale"] = torch.tensor(100.0 if sw else 0.01)
        torch.library.opcheck(getattr(ops, op_name).default, _args(op_name, tokens, 96, dtype, **extra))


def test_fake_shapes_match_the_kernels():
    for op_name in MX_OP_NAMES:
        for tokens, sw in [((7,), True), ((2, 3), False), ((0,), True)]:
            args = _args(op_name, tokens, 96, torch.bfloat16, swizzled_scales=sw)
            real = getattr(ops, op_name)(*args)
            with FakeTensorMode() as mode:
                fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                fake = getattr(ops, op_name)(*fake_args)
            for r, f in zip(real, fake):
                assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), op_name


def test_reference_norm_is_ours_up_to_reduction_order():
    """The fused ops' norm stage is the rms_norm op's (same arithmetic), close to the reference's."""
    x = torch.randn(9, 96, dtype=torch.bfloat16)
    w = torch.randn(96, dtype=torch.bfloat16)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6), rtol=1.6e-2, atol=1.6e-2)
