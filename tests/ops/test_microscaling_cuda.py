# SPDX-License-Identifier: Apache-2.0
"""The microscaling quant ops' GPU kernels (csrc/cuda/mx_kernels.cuh), on the GPU machine: the
unfused ops give the CPU kernels' bytes (which are the reference's, test_microscaling_ops.py),
the fused ops give our GPU norm op followed by our GPU quant op's bytes, every output byte is
written (the swizzled padding too), a row's bytes do not depend on the batch, and strided,
misaligned and very long rows take their own paths to the same bytes.

One difference from the CPU is allowed and stated: a block holding both a NaN and an infinity
(floor/ceil/even modes) turns the infinity into the platform's default NaN, whose sign differs
between x86 and the GPU; no input here mixes them in one block."""

import itertools

import pytest
import torch

from fusion_kernels.fake import MX_OP_NAMES
from fusion_kernels.testing_mx import (
    DTYPES,
    FORMATS,
    LAYOUTS,
    assert_same,
    block_of,
    global_scale_of,
    hiddens,
    modes,
    mx_input,
    run_fused,
    special_rows,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ops = torch.ops.fusion_kernels


@pytest.fixture(autouse=True, scope="module")
def _cuda_kernels():
    missing = [n for n in MX_OP_NAMES if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fusion_kernels::{n}", "CUDA")]
    if missing:
        pytest.fail(f"the library has no CUDA kernel for {missing}")


def quant(fmt, x, mode, layout, g=None):
    sw = layout == "swizzled"
    if fmt.startswith("mxfp8"):
        f8 = torch.float8_e4m3fn if fmt == "mxfp8_e4m3" else torch.float8_e5m2
        return ops.mxfp8_quant(x, f8, mode, sw)
    if fmt == "mxfp4":
        return ops.mxfp4_quant(x, mode, sw)
    return ops.nvfp4_quant(x, g.to(x.device), mode == "multiplier", sw)


def check_quant(fmt, x_cpu, mode, layout, what, g=None, x_gpu=None):
    """The GPU op on x (or on the given GPU view of it) against the CPU op, byte for byte."""
    if fmt == "nvfp4" and g is None:
        g = global_scale_of(x_cpu, mode)
    x_gpu = x_cpu.cuda() if x_gpu is None else x_gpu
    gpu = quant(fmt, x_gpu, mode, layout, g)
    cpu = quant(fmt, x_cpu, mode, layout, g)
    assert_same([t.cpu() for t in gpu], cpu, what)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_quant_matches_cpu(fmt, dtype, layout):
    for tokens, hidden in itertools.product([(1,), (7,), (130,), (2, 3, 5), (1000,)], hiddens(fmt) + [4096]):
        x = mx_input((*tokens, hidden), dtype, seed=hidden + len(tokens))
        if x.dim() == 2 and x.shape[0] >= 6:
            x = special_rows(x)
        for mode in modes(fmt):
            check_quant(fmt, x, mode, layout, f"{fmt} {mode} {layout} {tuple(x.shape)}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_quant_edge_values_match_cpu(fmt):
    """Every bf16 bit pattern once (NaN and Inf in their own blocks), at every scale mode."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(torch.bfloat16).reshape(-1, 1024)
    x = torch.where(x.isnan(), torch.zeros_like(x), x)
    x = torch.where(x.isinf(), torch.full_like(x, 3.0), x)
    specials = special_rows(mx_input((6, 1024), torch.bfloat16))
    x = torch.cat([x, specials])
    for mode, layout in itertools.product(modes(fmt), LAYOUTS):
        check_quant(fmt, x, mode, layout, f"{fmt} {mode} {layout}")
        if fmt == "nvfp4":
            for g in (1e-6, 1.0, 1e6):
                check_quant(fmt, x, mode, layout, f"{fmt} {mode} g={g}", g=torch.tensor(g))
            # Global scales that make every block's factor 0 or NaN (the blocks then take the
            # spec's element-by-element path on the GPU), on the finite rows only: the sign of a
            # NaN made from 0 * Inf is the CPU's own (x86 gives a negative one, the GPU positive).
            degenerate = (float("inf"), float("nan")) if mode == "divisor" else (0.0, float("nan"))
            for g in degenerate:
                check_quant(fmt, x[:-6], mode, layout, f"{fmt} {mode} g={g}", g=torch.tensor(g))


def anchored_sweep(block: int, exponent: int) -> torch.Tensor:
    """Every bf16 value of magnitude <= 6 (both signs, subnormals and zeros), times 2^exponent,
    block - 1 to a block behind an anchor 6 * 2^exponent: the block's absmax, so one block
    scale brings every value of the sweep into the e2m1 range at the same factor (FLOOR and RCEIL:
    1 at exponent 0; NVFP4: the factor the global scale gives). Rows of 1024."""
    mags = torch.arange(0, 0x40C1, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    vals = torch.cat([mags, -mags]) * 2.0**exponent
    per = block - 1
    n = -(-vals.numel() // per) * per
    vals = torch.cat([vals, torch.zeros(n - vals.numel())]).reshape(-1, per)
    anchor = torch.full((vals.shape[0], 1), 6.0 * 2.0**exponent)
    x = torch.cat([anchor, vals], dim=1).reshape(-1)
    pad = -x.numel() % 1024
    return torch.cat([x, torch.zeros(pad)]).reshape(-1, 1024).to(torch.bfloat16)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_fp4_every_bf16_value_at_fixed_block_factors(fmt):
    """The packed bf16 conversion of the FP4 kernels (two elements an instruction) on every bf16
    value in the e2m1 range, each at several block factors: 2^0, tiny and huge ones (blocks whose
    absmax is below 2^-118 take the fp32 path; those just above it have subnormal elements), and
    for NVFP4 global scales that make the factor no power of two."""
    for exponent in (0, -60, 60, -116, -125):
        x = anchored_sweep(block_of(fmt), exponent)
        for mode in modes(fmt):
            if fmt == "nvfp4":
                for g in (global_scale_of(x, mode), torch.tensor(0.3), torch.tensor(7.77)):
                    check_quant(fmt, x, mode, "row_major", f"{fmt} {mode} 2^{exponent} g={float(g)}", g=g)
            else:
                check_quant(fmt, x, mode, "row_major", f"{fmt} {mode} 2^{exponent}")


@pytest.mark.parametrize("residual", [False, True], ids=["norm", "add_norm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_equals_unfused_on_gpu(fmt, dtype, residual):
    g = torch.Generator().manual_seed(1)
    for tokens, hidden in itertools.product([(1,), (130,), (2, 3), (2048,)], [3 * block_of(fmt), 4096, 7168]):
        x = (torch.randn(*tokens, hidden, generator=g) * 3).to(dtype)
        if x.dim() == 2 and x.shape[0] >= 6:
            x = special_rows(x)
        res = torch.randn(*tokens, hidden, generator=g).to(dtype).cuda() if residual else None
        for wdtype, mode, layout in itertools.product([dtype, torch.float32], modes(fmt), LAYOUTS):
            w = (1.0 + 0.5 * torch.randn(hidden, generator=g)).to(wdtype).cuda()
            gs = torch.tensor(0.37 if mode == "divisor" else 2.7).cuda()
            fused, unfused = run_fused(fmt, x.cuda(), w, 1e-6, mode, layout, res, gs)
            assert_same([t.cpu() for t in fused], [t.cpu() for t in unfused], f"{fmt} {mode} {layout} w={wdtype} {tuple(x.shape)}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_matches_cpu_fused_up_to_reduction_order(fmt):
    """The GPU's fused op against the CPU's: the new residual exactly, q and the scales on nearly
    every byte (the norm's sum of squares is reduced in another order)."""
    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(257, 4096, generator=g).to(dtype)
    r = torch.randn(257, 4096, generator=g).to(dtype)
    w = (1.0 + 0.5 * torch.randn(4096, generator=g)).to(dtype)
    mode = modes(fmt)[1]
    gs = torch.tensor(0.01 if mode == "divisor" else 100.0)
    cpu, _ = run_fused(fmt, x, w, 1e-6, mode, "swizzled", r, gs)
    gpu, _ = run_fused(fmt, x.cuda(), w.cuda(), 1e-6, mode, "swizzled", r.cuda(), gs.cuda())
    assert_same([gpu[2].cpu()], [cpu[2]], "residual_out")
    for a, e in zip(gpu[:2], cpu[:2]):
        same = (a.cpu().view(torch.uint8) == e.view(torch.uint8)).float().mean().item()
        assert same >= 0.98, f"{fmt}: only {same:.3f} of the bytes match the CPU's"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_byte_written_and_batch_invariant(fmt):
    """Outputs allocated over memory full of 0xFF still come out as the CPU's (the swizzled
    padding included), and each row's bytes are those of the row quantized alone."""
    mode = modes(fmt)[0]
    x = mx_input((300, 7168), torch.bfloat16, seed=5)
    w = (1.0 + 0.5 * torch.randn(7168)).to(torch.bfloat16)
    gs = torch.tensor(0.02)
    for layout in LAYOUTS:
        junk = torch.full((64 * 2**20,), 255, dtype=torch.uint8, device="cuda")
        del junk  # the caching allocator hands these bytes to the next allocations
        check_quant(fmt, x, mode, layout, f"{fmt} {layout} over junk", g=gs)
    full, _ = run_fused(fmt, x.cuda(), w.cuda(), 1e-6, mode, "row_major", None, gs.cuda())
    for t in (0, 1, 17, 299):
        alone, _ = run_fused(fmt, x[t : t + 1].cuda(), w.cuda(), 1e-6, mode, "row_major", None, gs.cuda())
        assert_same([a.cpu() for a in alone], [f[t : t + 1].cpu() for f in full], f"{fmt} row {t}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_strided_misaligned_and_long_rows(fmt):
    mode = modes(fmt)[1]
    # Row-strided (a slice of wider rows) and misaligned (starting one element in).
    base = mx_input((9, 4096 + 64), torch.bfloat16, seed=7)
    check_quant(fmt, base[:, :4096], mode, "row_major", f"{fmt} strided", x_gpu=base.cuda()[:, :4096])
    flat = mx_input((9 * 4096 + 16,), torch.float16, seed=8)
    x = flat[1 : 1 + 9 * 4096].view(9, 4096)
    check_quant(fmt, x, mode, "swizzled", f"{fmt} misaligned", x_gpu=flat.cuda()[1 : 1 + 9 * 4096].view(9, 4096))
    # Rows longer than the registers hold (re-read for the quantization), fused and unfused.
    for hidden, dtype in [(16384 + 512, torch.bfloat16), (8192 + 256, torch.float32)]:
        x = mx_input((33, hidden), dtype, seed=hidden)
        check_quant(fmt, x, mode, "swizzled", f"{fmt} H={hidden}")
        w = (1.0 + 0.5 * torch.randn(hidden)).to(dtype).cuda()
        r = torch.randn(33, hidden).to(dtype).cuda()
        x = torch.randn(33, hidden).to(dtype).cuda()
        fused, unfused = run_fused(fmt, x, w, 1e-6, mode, "swizzled", r, torch.tensor(0.02).cuda())
        assert_same([t.cpu() for t in fused], [t.cpu() for t in unfused], f"{fmt} fused H={hidden}")


def test_under_cuda_graph_and_streams():
    """The ops run on the caller's stream and replay inside a CUDA graph."""
    x = mx_input((64, 4096), torch.bfloat16).cuda()
    w = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
    expected = ops.rms_norm_nvfp4_quant(x, w, 1e-6, torch.tensor(0.02, device="cuda"), False, True)
    gs = torch.tensor(0.02, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=s):
            out = ops.rms_norm_nvfp4_quant(x, w, 1e-6, gs, False, True)
    graph.replay()
    torch.cuda.synchronize()
    assert_same([t.cpu() for t in out], [t.cpu() for t in expected], "graph replay")
