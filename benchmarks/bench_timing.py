# SPDX-License-Identifier: Apache-2.0
"""The kernel benchmark's inputs, correctness check and GPU timer.

GPU time per call comes from CUDA-graph replay of many calls over rotating input sets (so no
call finds its inputs in L2), after about 100 ms of warm-up replays, median of 15 replays. The
device's copy bandwidth is measured with the same care, so results can be reported as a fraction
of it.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from bench_cases import DTYPE, Cell, composed


def input_sets(cell: Cell) -> int:
    """How many input sets the timer rotates over: enough that together they are 3x the L2, so
    no call finds its inputs there (at most 1000: T = 1 inputs stay L2-resident)."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    input_bytes = cell.tokens * cell.hidden * DTYPE.itemsize * (2 if cell.spec[2] else 1)
    return int(min(1000, max(2, math.ceil(3 * l2 / max(input_bytes, 1)))))


def make_inputs(cell: Cell, sets: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t, h = cell.tokens, cell.hidden
    w = (1 + 0.2 * torch.randn(h, generator=g, device="cuda")).to(DTYPE)
    s = torch.tensor(4.0 / (127.0 if "int8" in cell.case else 448.0), device="cuda")
    xs = [torch.randn(t, h, generator=g, device="cuda").to(DTYPE) for _ in range(sets)]
    rs = [torch.randn(t, h, generator=g, device="cuda").to(DTYPE) for _ in range(sets)]
    return xs, rs, w, s


def check(cell: Cell, name: str, outs, x, r, w, s) -> None:
    """Compare a variant's outputs with the reference (the spec) before timing it (the
    microscaling cases: bench_cases.check_microscaling)."""
    from bench_cases import MX_SCHEMES, check_microscaling

    if cell.spec[1] in MX_SCHEMES:
        return check_microscaling(cell, name, outs, x, r, w, s)
    from fusion_kernels import reference as ref
    from fusion_kernels.testing import SCALE_RTOL, assert_quant_close, quant_steps, scale_mask

    residual = cell.spec[2]
    *exp, r_new = composed(cell, ref)(x, r, w, s) + ((None,) if not residual else ())
    if cell.spec[1] == "group_packed":
        # The packed scales: the reference's layout exactly (strides, padding bytes 0), then
        # compared as the fp32 scales they hold.
        from fusion_kernels.testing import unpack_ue8m0_scales

        got = outs[1]
        # (A compiled baseline may return a size-1 dim with another stride, and at T = 1 Inductor
        # drops the padding rows of the plain-torch function's output: for it the values count.)
        same = got.stride() == exp[1].stride() or (name not in ("fused", "unfused") and got.shape[0] == 1)
        assert got.dtype == torch.int32 and got.shape == exp[1].shape and same, (
            f"{cell} {name} packed scales {got.dtype}{tuple(got.shape)} strides {got.stride()}"
        )
        if got.stride() == exp[1].stride():
            padded = got.stride(1)
            storage = torch.as_strided(got, (padded, got.shape[1]), (1, padded))
            assert not bool(storage[got.shape[0]:].any()), f"{cell} {name}: padding rows not 0"
        groups = cell.hidden // cell.spec[3]
        outs = (outs[0], unpack_ue8m0_scales(got, groups), *outs[2:])
        exp[1] = unpack_ue8m0_scales(exp[1], groups)
    # Our kernels follow the spec's rounding points (1% of elements may sit on the other side of
    # a boundary); plain-torch code rounds elsewhere (checked more loosely below).
    ours = name in ("fused", "unfused")
    same_scale = None
    if len(exp) > 1:
        scales = outs[1].reshape(exp[1].shape).float()
        if cell.spec[1] == "group_packed":
            # Powers of two: a group whose absmax sits at a binade boundary (a norm rounded
            # elsewhere) takes the neighbouring scale; every other scale is equal.
            ratio = scales / exp[1]
            assert bool(((ratio == 1) | (ratio == 2) | (ratio == 0.5)).all()), f"{cell} {name} scales"
            flips = float((ratio != 1).float().mean())
            assert flips <= (0.01 if ours else 0.05), f"{cell} {name}: {flips:.1%} of the scales differ"
        else:
            rtol = SCALE_RTOL[DTYPE] if ours else 0.01
            torch.testing.assert_close(scales, exp[1], rtol=rtol, atol=0, msg=f"{cell} {name} scales")
        same_scale = scale_mask(scales, exp[1], exp[0].shape)
    # Plain-torch F.rms_norm rounds once where the spec rounds twice: for INT8, whose steps are
    # finer, that moves up to ~7% of values by one step; FP8 groups of 128 reach ~6%.
    if ours:
        assert_quant_close(outs[0], exp[0], 0.01, what=f"{cell} {name} q", same_scale=same_scale)
    else:
        # The plain-torch variants only need to compute the same function: a dynamic INT8 scale
        # taken from a differently rounded row can move a value by two of its fine steps.
        steps = quant_steps(outs[0], exp[0])
        if cell.spec[1] == "group_packed":  # a group on the neighbouring power-of-two scale is on another grid
            steps = steps.masked_fill(~same_scale, 0)
        assert int(steps.max()) <= (2 if "int8" in cell.case else 1), f"{cell} {name}: {int(steps.max())} steps"
        assert float((steps > 0).float().mean()) <= 0.10, f"{cell} {name}: too many elements differ"
    if residual:
        torch.testing.assert_close(outs[-1], r_new, rtol=0, atol=0, msg=f"{cell} {name} residual")


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth, bytes read + written per second (1 GiB buffers), after
    about 100 ms of copies: like the kernels' timer, not in the GPU's warm-up transient (a run
    that timed its copies after 3 warm-up copies once measured 11% below every other run)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.1:
        b.copy_(a)
        torch.cuda.synchronize()
    times = []
    for _ in range(20):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        b.copy_(a)
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) / 1e3)
    return 2 * n / statistics.median(times)


def time_graph(fn, xs, rs, w, s, est_seconds: float) -> float:
    """Median GPU seconds per call from CUDA-graph replays of many calls over rotating inputs,
    after a warm-up of about 100 ms of replays."""
    sets = len(xs)
    calls = int(min(1000, max(10, math.ceil(1e-3 / max(est_seconds, 1e-7)))))
    calls = max(calls, sets)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(xs[i % sets], rs[i % sets], w, s)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    keep = [None] * sets  # outputs rotate over `sets` buffers too
    with torch.cuda.graph(graph):
        for c in range(calls):
            keep[c % sets] = fn(xs[c % sets], rs[c % sets], w, s)
    # Warm-up: replay for about 100 ms before timing. After a pause or heavy compute (the
    # reference check of a large cell) the first ~15 ms of replays ran up to 15% slower on an
    # H100, for every variant; a median over those would measure the transient, not the kernel.
    graph.replay()
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    graph.replay()
    en.record()
    en.synchronize()
    for _ in range(min(200, math.ceil(0.1 / max(st.elapsed_time(en) / 1e3, 1e-6)))):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(15):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        graph.replay()
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) / 1e3 / calls)
    del graph, keep
    return statistics.median(times)
