# SPDX-License-Identifier: Apache-2.0
"""Test helpers of the microscaling quant ops (MXFP8, MXFP4, NVFP4): inputs with blocks of very
different magnitudes and rows of special values, each op run beside its reference
(fusion_kernels.microscaling), and a byte-for-byte comparison. Used by the CPU tests and the GPU
tests alike (an input made on the CPU is moved to the device under test)."""

from __future__ import annotations

import torch

from fusion_kernels import microscaling as mx

ops = torch.ops.fusion_kernels

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["row_major", "swizzled"]
# (name, block): the quantizers under test. NVFP4 runs with both global-scale conventions.
FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp4", "nvfp4"]
TOKENS = [(0,), (1,), (7,), (130,), (2, 3, 5)]


def block_of(fmt):
    return mx.NVFP4_BLOCK_SIZE if fmt == "nvfp4" else mx.MX_BLOCK_SIZE


def hiddens(fmt):
    # One block; blocks not a multiple of 4 (swizzle column padding); a model-like width.
    b = block_of(fmt)
    return [b, 3 * b, 8 * b, 21 * b]


def modes(fmt):
    return mx.NVFP4_CONVENTIONS if fmt == "nvfp4" else mx.SCALE_MODES


def global_scale_of(x, convention):
    amax = x.float().abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).amax() if x.numel() else torch.tensor(1.0)
    return mx.nvfp4_global_scale(amax.clamp(min=1e-6), convention)


def run_quant(fmt, x, mode, layout, global_scale=None):
    """(ours, reference) of one quantizer."""
    sw = layout == "swizzled"
    if fmt.startswith("mxfp8"):
        f8 = torch.float8_e4m3fn if fmt == "mxfp8_e4m3" else torch.float8_e5m2
        return ops.mxfp8_quant(x, f8, mode, sw), mx.mxfp8_quantize(x, mode, f8, layout)
    if fmt == "mxfp4":
        return ops.mxfp4_quant(x, mode, sw), mx.mxfp4_quantize(x, mode, layout)
    g = global_scale_of(x, mode) if global_scale is None else global_scale
    return ops.nvfp4_quant(x, g, mode == "multiplier", sw), mx.nvfp4_quantize(x, g, mode, layout)


def run_fused(fmt, x, w, eps, mode, layout, residual=None, global_scale=None):
    """(fused, unfused): the fused op, and our norm op followed by our quant op."""
    sw = layout == "swizzled"
    if residual is None:
        y = ops.rms_norm(x, w, eps)
        tail = ()
    else:
        y, res_out = ops.fused_add_rms_norm(x, residual, w, eps)
        tail = (res_out,)
    lead = (x, w, eps) if residual is None else (x, residual, w, eps)
    prefix = "rms_norm" if residual is None else "fused_add_rms_norm"
    if fmt.startswith("mxfp8"):
        f8 = torch.float8_e4m3fn if fmt == "mxfp8_e4m3" else torch.float8_e5m2
        fused = getattr(ops, f"{prefix}_mxfp8_quant")(*lead, f8, mode, sw)
        unfused = (*ops.mxfp8_quant(y, f8, mode, sw), *tail)
    elif fmt == "mxfp4":
        fused = getattr(ops, f"{prefix}_mxfp4_quant")(*lead, mode, sw)
        unfused = (*ops.mxfp4_quant(y, mode, sw), *tail)
    else:
        g = global_scale
        fused = getattr(ops, f"{prefix}_nvfp4_quant")(*lead, g, mode == "multiplier", sw)
        unfused = (*ops.nvfp4_quant(y, g, mode == "multiplier", sw), *tail)
    return fused, unfused


def assert_same(actual, expected, what=""):
    """Same dtype, shape, strides and bytes (NaN bit patterns included)."""
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        w = f"{what} output {i}"
        assert a.dtype == e.dtype, f"{w}: dtype {a.dtype} vs {e.dtype}"
        assert a.shape == e.shape, f"{w}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
        assert a.is_contiguous(), f"{w} is not contiguous"
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
        av = a.view(bits)
        ev = e.contiguous()
        ev = ev.view(bits)
        if not torch.equal(av, ev):
            bad = (av != ev).nonzero()
            raise AssertionError(f"{w}: {bad.shape[0]} of {av.numel()} differ, first at {bad[0].tolist()}")


def mx_input(shape, dtype, seed=0):
    """Blocks of very different magnitudes (within the dtype's range)."""
    g = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    x = torch.randn(*shape, generator=g)
    lo, hi = (-12, 4) if dtype == torch.float16 else (-30, 30)
    groups = max(hidden // 16, 1)
    mags = 10.0 ** torch.empty(*shape[:-1], groups).uniform_(lo, hi, generator=g)
    return (x * mags.repeat_interleave(hidden // groups, dim=-1)).to(dtype)


def special_rows(x):
    """Rows 0..5 of a [T >= 6, H] input: all-zero, -0.0, an outlier, NaN, -NaN, +-Inf."""
    x = x.clone()
    x[0] = 0.0
    x[1] = -0.0
    x[2, 3] = torch.finfo(x.dtype).max / 2
    x[3, 5] = float("nan")
    x[4, -1] = -float("nan")
    x[5, 1] = float("inf")
    x[5, -2] = -float("inf")
    return x


def edge_rows(dtype, hidden=64):
    """Rows of edge values: zeros, tiny, the dtype's max, subnormals of the dtype, powers of two,
    +-Inf and NaN, values on the element formats' maxima."""
    finfo = torch.finfo(dtype)
    r = torch.linspace(-1, 1, hidden)
    rows = [
        torch.zeros(hidden),
        torch.full((hidden,), -0.0),
        r * finfo.tiny,
        r * finfo.tiny * finfo.eps,
        r * finfo.max,
        torch.full((hidden,), finfo.max),
        torch.tensor([2.0**k for k in range(-hidden // 2, hidden // 2)]),
        torch.where(torch.arange(hidden) == 5, torch.tensor(float("inf")), r),
        torch.where(torch.arange(hidden) == 40, torch.tensor(-float("inf")), r),
        torch.where(torch.arange(hidden) == 7, torch.tensor(float("nan")), r),
        torch.where(torch.arange(hidden) % 32 == 0, torch.tensor(448.0), r),
        torch.where(torch.arange(hidden) % 32 == 3, torch.tensor(6.0), r * 1e-3),
    ]
    return torch.stack(rows).to(dtype)
