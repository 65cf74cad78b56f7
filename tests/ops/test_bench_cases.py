# SPDX-License-Identifier: Apache-2.0
"""The kernel benchmark's cases compute what they claim: for every case, our fused op, our
unfused pair and the plain-torch function that Inductor compiles pass the benchmark's own check
against the reference (on CPU tensors: the check is the one the GPU run makes before timing).
The microscaling cases' grid, packed byte counts, check (not vacuous) and compiled baseline too."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)  # its dataclasses and imports look it up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return _load("bench_cases", monkeypatch), _load("bench_timing", monkeypatch)


def _inputs(cases, name, tokens=33, hidden=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(cases.DTYPE)
    r = torch.randn(tokens, hidden, generator=g).to(cases.DTYPE)
    w = (1 + 0.2 * torch.randn(hidden, generator=g)).to(cases.DTYPE)
    s = torch.tensor(4.0 / (127.0 if "int8" in name else 448.0))  # as bench_timing.make_inputs
    return x, r, w, s


def test_every_case_passes_the_benchmark_check(bench):
    cases, _ = bench
    for name in cases.CASE_NAMES:
        cell = cases.Cell(name, 512, 33)
        x, r, w, s = _inputs(cases, name)
        fused, unfused = cases.ours_fns(cell)
        for variant, fn in (("fused", fused), ("unfused", unfused), ("eager", cases.native_fn(cell))):
            cases.check_cell(cell, variant, fn(x, r, w, s), x, r, w, s)
        assert cases.min_bytes(cell) >= 33 * 512 * (2.5 if cases.is_microscaling(name) else 3)


MX_CASES = ["nvfp4", "nvfp4+res", "nvfp4_swizzled", "nvfp4_swizzled+res", "mxfp8", "mxfp8+res",
            "mxfp4_swizzled", "mxfp4_swizzled+res"]  # fmt: skip


def test_microscaling_cases_and_grid(bench):
    """The issue's cells: H = 4096, 7168, 8192, T = 1 .. 16384, every case with and without the
    residual; a hidden size the block does not divide gets no cell."""
    cases, _ = bench
    assert [n for n in cases.CASE_NAMES if cases.is_microscaling(n)] == MX_CASES
    grid = cases.cells(False, MX_CASES)
    assert {(c.hidden, c.tokens) for c in grid} == {(h, t) for h in (4096, 7168, 8192) for t in cases.FULL_T}
    assert len(grid) == len(MX_CASES) * 3 * 6
    assert {c.hidden for c in cases.cells(False, MX_CASES, hidden=[2880, 4100])} == {2880}
    assert {c.hidden for c in cases.cells(True, MX_CASES)} == {7168}


def test_microscaling_bytes_count_the_packed_outputs(bench):
    cases, _ = bench
    t, h = 16384, 7168
    read = 2 * t * h + 2 * h  # x, weight (bf16)
    res = 4 * t * h  # read the residual, write the new one
    swizzled_mx = 512 * (t // 128) * (h // 32 // 4)  # 128x4 tiles, no padding here
    assert swizzled_mx == t * h // 32
    expect = {
        "nvfp4": read + t * h // 2 + t * h // 16 + 4,
        "nvfp4_swizzled": read + t * h // 2 + t * h // 16 + 4,
        "mxfp8": read + t * h + t * h // 32,
        "mxfp4_swizzled": read + t * h // 2 + swizzled_mx,
    }
    for name, n in expect.items():
        assert cases.min_bytes(cases.Cell(name, h, t)) == n, name
        assert cases.min_bytes(cases.Cell(name + "+res", h, t)) == n + res, name
    # One token: the swizzled buffer is whole tiles (128 rows, 4 scale columns each), padding included.
    assert cases.min_bytes(cases.Cell("nvfp4_swizzled", 4096, 1)) == 2 * 4096 + 2 * 4096 + 2048 + 512 * 64 + 4
    assert cases.min_bytes(cases.Cell("mxfp4_swizzled", 7168, 1)) == 2 * 7168 + 2 * 7168 + 3584 + 512 * 56


def test_microscaling_check_catches_a_wrong_quantizer(bench):
    """The check is not vacuous: outputs of another convention (another MX scale rule, the NVFP4
    global scale read as a multiplier, the other scale layout) or one byte off fail it."""
    cases, _ = bench
    from fusion_kernels import microscaling as mx

    x, r, w, s = _inputs(cases, "mxfp8")
    y = torch.ops.fusion_kernels.rms_norm(x, w, cases.EPS)
    wrong = {
        "mxfp8": mx.mxfp8_quantize(y, "ceil"),
        "mxfp4_swizzled": mx.mxfp4_quantize(y, "rceil", "swizzled"),
        "nvfp4": mx.nvfp4_quantize(y, s, "multiplier"),  # the divisor read as a multiplier
        "nvfp4_swizzled": mx.nvfp4_quantize(y, s, "divisor", "row_major"),  # layout
    }
    for name, outs in wrong.items():
        cell = cases.Cell(name, 512, 33)
        for variant in ("fused", "inductor[default]"):
            with pytest.raises(AssertionError):
                cases.check_cell(cell, variant, outs, x, r, w, s)
    cell = cases.Cell("mxfp4_swizzled", 512, 33)
    q, scales = cases.ours_fns(cell)[0](x, r, w, s)
    q[3, 7] ^= 0x10
    with pytest.raises(AssertionError, match="bytes differ"):
        cases.check_cell(cell, "fused", (q, scales), x, r, w, s)


def test_microscaling_baseline_compiles(bench, monkeypatch, fresh_dynamo):
    """Inductor compiles the plain-torch baseline (on CPU here) and it passes the benchmark's
    check; with the bf16 rounding of the norm output emulated its bytes are eager's, bit for bit
    (by default Inductor's fused kernel quantizes the unrounded norm output: close, not equal).
    CPU Inductor has no float8_e8m0fnu type, which the MX scales are (the GPU lowering handles it
    as a byte view): it is given the byte type here, the bits are the same."""
    cases, _ = bench
    from torch._inductor import config
    from torch._inductor.codegen import cpp_utils

    name = "mxfp4_swizzled+res"  # one compile (seconds on CPU); the NVFP4 cases compile alike
    monkeypatch.setitem(cpp_utils.DTYPE_TO_CPP, torch.float8_e8m0fnu, "uint8_t")
    cell = cases.Cell(name, 256, 130)  # two row tiles of the swizzled layout, the second padded
    x, r, w, s = _inputs(cases, name, 130, 256)
    eager = cases.native_fn(cell)(x, r, w, s)
    # (config.patch, not monkeypatch: a config module's entries are not in its __dict__, and
    # pytest >= 9.2 then undoes a monkeypatch by deleting the entry, hiding it from Inductor)
    with config.patch(emulate_precision_casts=True):
        compiled = torch.compile(cases.native_fn(cell), dynamic=False)(x, r, w, s)
    cases.check_cell(cell, "inductor[default]", compiled, x, r, w, s)
    for a, b in zip(compiled, eager):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(*(t.view(torch.uint8) if t.element_size() == 1 else t for t in (a, b)))


def test_the_neighbour_benchmark_steps_compute_the_op(bench, monkeypatch, fresh_dynamo):
    """bench_neighbour.py's model step (FP8 matmul, the op, FP8 matmul) with our op and with
    Inductor's compile in the middle: both pass the benchmark's check, on CPU (two compiles)."""
    neighbour = _load("bench_neighbour", monkeypatch)
    neighbour.check("cpu", ["static+res", "group128"])


def test_packed_group_cases_grid_bytes_and_baseline(bench, fresh_dynamo):
    """FP8 group-128 with DeepGEMM's packed UE8M0 scales: the issue's grid (H = 4096, 7168, 8192,
    T = 1 .. 16384, with and without the residual), the bytes of the padded int32 scales, and the
    plain-torch baseline: eager and Inductor's compile both pass the benchmark's check, and (with
    the norm output's rounding emulated) the compiled scales are eager's, padding included (one
    compile on CPU)."""
    cases, _ = bench
    names = ["group128_packed", "group128_packed+res"]
    assert cases.PACKED_CASE_NAMES == names and not set(names) & set(cases.RECORD_CASE_NAMES)
    grid = cases.cells(False, names)
    assert {(c.hidden, c.tokens) for c in grid} == {(h, t) for h in (4096, 7168, 8192) for t in cases.FULL_T}
    t, h = 16384, 7168
    assert cases.min_bytes(cases.Cell("group128_packed", h, t)) == 2 * t * h + t * h + 2 * h + t * (h // 128)
    assert cases.min_bytes(cases.Cell("group128_packed", 7168, 1)) == 2 * 7168 * 2 + 7168 + 4 * 4 * 14
    cell = cases.Cell("group128_packed+res", 384, 7)  # 3 groups: one int32 column, 1 unused byte
    x, r, w, s = _inputs(cases, cell.case, 7, 384)
    eager = cases.native_fn(cell)(x, r, w, s)
    from torch._inductor import config

    with config.patch(emulate_precision_casts=True):  # the bf16 rounding of the norm output, as eager
        compiled = torch.compile(cases.native_fn(cell), dynamic=False)(x, r, w, s)
    for variant, outs in (("eager", eager), ("inductor[default]", compiled)):
        cases.check_cell(cell, variant, outs, x, r, w, s)
    assert compiled[1].stride() == eager[1].stride() == (1, 8)
    assert torch.equal(torch.as_strided(compiled[1], (8, 1), (1, 8)), torch.as_strided(eager[1], (8, 1), (1, 8)))
    with pytest.raises(AssertionError, match="packed scales"):  # a row-major int32 buffer is not the layout
        cases.check_cell(cell, "fused", (eager[0], eager[1].clone(memory_format=torch.contiguous_format), eager[2]), x, r, w, s)


def test_int8_group_cases(bench):
    """INT8 per-token-group-128 (the rule ops): named only (not in the FP8 / INT8 record), the
    group cells' grid and bytes, and the plain-torch quantizer Inductor compiles is what the pass
    fuses into the rule op (group 128, INT8, the cases' rule) after a Hugging Face norm (after
    F.rms_norm, which rounds once, INT8 is refused: int8_rounding_points_differ)."""
    cases, _ = bench
    names = ["int8_group128", "int8_group128+res"]
    assert cases.INT8_GROUP_CASE_NAMES == names and not set(names) & set(cases.RECORD_CASE_NAMES)
    assert {(c.hidden, c.tokens) for c in cases.cells(False, names[:1])} == {
        (h, t) for h in (4096, 7168, 8192) for t in cases.FULL_T
    }
    t, h = 4096, 7168
    assert cases.min_bytes(cases.Cell("int8_group128", h, t)) == 2 * t * h + t * h + 2 * h + 4 * t * (h // 128)

    from fusion_kernels.testing import op_counts
    from fusion_passes import FusionPass

    spec = importlib.util.spec_from_file_location("fusion_corpus", BENCH.parent / "tests/passes/corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, corpus)
    spec.loader.exec_module(corpus)
    cell = cases.Cell("int8_group128+res", 512, 9)
    x, r, w, s = _inputs(cases, cell.case, 9, 512)
    from fusion_passes import native_forms as nf

    def fn(x, r, w, s):
        x, r = nf.add_residual(x, r)
        return (*nf.quant_int8_per_group(nf.rms_norm_hf(x, w, cases.EPS), 128), r)

    p = FusionPass(native="always")
    gm, outs = corpus.run_pass(fn, (x, r, w, s), p)  # the post-grad graph, rewritten
    assert op_counts(gm) == {"fused_add_rms_norm_dynamic_quant": 1}, p.report
    (node,) = [n for n in gm.graph.nodes if "dynamic_quant" in str(n.target)]
    got, want = node.args[4:12], (torch.int8, 128, *cases.INT8_GROUP_RULE)
    assert got[:2] == want[:2] and got[6:] == want[6:], node.args
    assert got[2:6] == pytest.approx(want[2:6], rel=1e-6), node.args  # (the constants as float32)
    cases.check_cell(cell, "fused", outs, x, r, w, s)
