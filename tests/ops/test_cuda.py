# SPDX-License-Identifier: Apache-2.0
"""CUDA-only checks (run on the GPU machine): model-sized grids, unwritten outputs, batch
invariance, 64-bit indexing. The CPU-and-CUDA numerics live in test_numerics.py."""

import pytest
import torch

from fusion_kernels import OP_NAMES
from fusion_kernels.testing import assert_outputs_match, make_args, reference_of

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ops = torch.ops.fusion_kernels

MODEL_HIDDEN = [2048, 4096, 5120, 7168, 8192, 16384]
MODEL_TOKENS = [1, 16, 1024, 16384]


def _kw(op_name, hidden):
    return {"group_size": 128 if hidden % 128 == 0 else 64} if "group" in op_name else {}


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_model_sizes_against_reference(op_name, dtype):
    """Reference computed on the GPU with torch (same spec, torch's own reduction order)."""
    for hidden in MODEL_HIDDEN:
        for tokens in MODEL_TOKENS:
            if tokens * hidden > 64 * 2**20 and dtype == torch.float32:
                continue  # fp32 at 16384 x 16384 adds minutes of reference time, not coverage
            kw = _kw(op_name, hidden)
            args = make_args(op_name, (tokens,), hidden, dtype, "cuda", **kw)
            out = getattr(ops, op_name)(*args)
            expected = reference_of(op_name)(*args)
            try:
                assert_outputs_match(op_name, out, expected, dtype, group_size=kw.get("group_size", 128))
            except AssertionError as exc:
                raise AssertionError(f"T={tokens} H={hidden}: {exc}") from None


@pytest.mark.parametrize("hidden", [384, 2048, 5128, 16384])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_many_rows_with_an_fp32_weight(hidden, dtype):
    """Grids of many rows stage the norm weight in shared memory: with an fp32 weight two 16-byte
    copies per slot, at H=16384 a 16-bit model's block needs 64 KB (above the default limit), and
    at H <= 2048 several rows share a block and its staged weight."""
    for op_name in ("rms_norm", "rms_norm_static_fp8_quant", "fused_add_rms_norm_dynamic_per_token_quant",
                    "rms_norm_per_token_group_quant", "fused_add_rms_norm_per_token_group_quant"):  # fmt: skip
        kw = _kw(op_name, hidden)
        if "group" in op_name and hidden % kw["group_size"]:
            continue
        args = make_args(op_name, (2048,), hidden, dtype, "cuda", weight_dtype=torch.float32, **kw)
        try:
            assert_outputs_match(op_name, getattr(ops, op_name)(*args), reference_of(op_name)(*args), dtype)
        except AssertionError as exc:
            raise AssertionError(f"{op_name} H={hidden}: {exc}") from None


@pytest.mark.parametrize("hidden", [32768, 40000, 65536])
def test_hidden_sizes_beyond_the_register_path(hidden):
    """Rows too long to keep in registers take the re-reading path: same results."""
    for op_name in ("rms_norm", "fused_add_rms_norm_dynamic_per_token_quant", "rms_norm_per_token_group_quant",
                    "fused_add_rms_norm_static_int8_quant"):  # fmt: skip
        kw = {"group_size": 64} if "group" in op_name else {}
        if "group" in op_name and hidden % 64:
            continue
        for dtype in (torch.bfloat16, torch.float32):
            args = make_args(op_name, (5,), hidden, dtype, "cuda", **kw)
            assert_outputs_match(op_name, getattr(ops, op_name)(*args), reference_of(op_name)(*args), dtype)


def _poison_caching_allocator(byte: int) -> None:
    """Fill the caching allocator's free blocks with ``byte`` so a kernel that skips an output
    element leaves that byte behind."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full((n,), byte, dtype=torch.uint8, device="cuda") for n in [256 << 20] + [512 << 10] * 64]
    del blocks


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_every_output_element_is_written(op_name):
    for tokens, hidden, dtype in [((1,), 4096, torch.bfloat16), ((7,), 1025, torch.float16), ((33,), 7168, torch.bfloat16),
                                  ((3, 5), 384, torch.float32)]:  # fmt: skip
        kw = _kw(op_name, hidden)
        if "group" in op_name and hidden % kw["group_size"]:
            continue
        args = make_args(op_name, tokens, hidden, dtype, "cuda", **kw)
        results = []
        for byte in (0x00, 0xA5):
            _poison_caching_allocator(byte)
            out = getattr(ops, op_name)(*args)
            out = out if isinstance(out, tuple) else (out,)
            results.append([o.view(torch.uint8).clone() if o.element_size() == 1 else o.clone() for o in out])
        for a, b in zip(*results):
            assert torch.equal(a, b), f"{op_name} {tokens}x{hidden}: an output element was not written"


@pytest.mark.parametrize("hidden", [4096, 7168, 16384])
@pytest.mark.parametrize("op_name", [n for n in OP_NAMES if "quant" in n])
def test_batch_invariance(op_name, hidden):
    """A row's outputs do not depend on the batch it is computed in: alone, among 7, among 200,
    among 4096, among 16384 (few rows and many rows run different kernel variants, change the
    rows per block, split a row over up to 4 blocks when there are few, and run the dynamic
    quants of short rows under a larger register budget at 4096 rows (FK_WIDE_ROWS_PER_SM) than
    at 16384: same arithmetic, same bits)."""
    kw = _kw(op_name, hidden)
    big = make_args(op_name, (16384,), hidden, torch.bfloat16, "cuda", **kw)
    picks = [0, 3, 6]

    def take(args, rows):
        return tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() == 2 else a for a in args)

    def rows_of(out, rows_in_out):
        out = out if isinstance(out, tuple) else (out,)
        return [o[rows_in_out].contiguous().view(torch.uint8) if o.element_size() == 1 else o[rows_in_out].contiguous()
                for o in out]  # fmt: skip

    full = rows_of(getattr(ops, op_name)(*big), picks)
    seven = rows_of(getattr(ops, op_name)(*take(big, slice(0, 7))), picks)
    mid = rows_of(getattr(ops, op_name)(*take(big, slice(0, 200))), picks)
    wide = rows_of(getattr(ops, op_name)(*take(big, slice(0, 4096))), picks)
    for i, row in enumerate(picks):
        alone = rows_of(getattr(ops, op_name)(*take(big, slice(row, row + 1))), [0])
        for a, b, c, d, e in zip(full, seven, alone, mid, wide):
            assert torch.equal(a[i], b[i]) and torch.equal(a[i], c[0]) and torch.equal(a[i], d[i]), (
                f"{op_name}: row {row} depends on the batch"
            )
            assert torch.equal(a[i], e[i]), f"{op_name}: row {row} differs between 4096 and 16384 rows"


def test_more_than_2_pow_31_elements():
    """Index arithmetic is 64-bit: T * H > 2^31, checked on the last rows."""
    tokens, hidden = 131_200, 16_384  # 2.15e9 elements
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)
    q, s = ops.rms_norm_dynamic_per_token_quant(x, w, 1e-6, torch.float8_e4m3fn, None)
    tail = slice(tokens - 3, tokens)
    ref_q, ref_s = reference_of("rms_norm_dynamic_per_token_quant")(x[tail], w, 1e-6, torch.float8_e4m3fn, None)
    assert_outputs_match("rms_norm_dynamic_per_token_quant", (q[tail], s[tail]), (ref_q, ref_s), torch.bfloat16)
    del q, s
    y = ops.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(y[tail], reference_of("rms_norm")(x[tail], w, 1e-6), rtol=8e-3, atol=8e-3)


def _residual_chain(steps: int, x, r, w, s):
    outs = []
    for _ in range(steps):
        q, r = ops.fused_add_rms_norm_static_fp8_quant(x, r, w, s, 1e-6, torch.float8_e4m3fn)
        outs.append(q.view(torch.uint8))
        x = r * 0.5  # the next call reads what the previous one wrote
    return torch.stack(outs), r


@pytest.mark.parametrize("tokens", [1, 16, 4096])
def test_back_to_back_dependent_calls(tokens):
    """Each call reads the previous call's output: with programmatic dependent launch a kernel may
    start before its predecessor ends, so this fails if it ever read its inputs too early. Run on
    a stream and inside a CUDA graph, against the same chain with a synchronize after every call."""
    hidden = 4096
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
    r = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, generator=g)
    s = torch.tensor(0.05, device="cuda")
    steps = 24

    expected = []
    xe, re_ = x.clone(), r.clone()
    for _ in range(steps):
        q, re_ = ops.fused_add_rms_norm_static_fp8_quant(xe, re_, w, s, 1e-6, torch.float8_e4m3fn)
        torch.cuda.synchronize()
        expected.append(q.view(torch.uint8))
        xe = re_ * 0.5
        torch.cuda.synchronize()
    expected = torch.stack(expected)

    got, r_last = _residual_chain(steps, x, r, w, s)
    assert torch.equal(got, expected) and torch.equal(r_last, re_)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _residual_chain(2, x, r, w, s)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, r_captured = _residual_chain(steps, x, r, w, s)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, expected) and torch.equal(r_captured, re_)


def test_plain_launch_matches(tmp_path):
    """FUSION_KERNELS_PDL=0 (ordinary launches) gives the same bits as the default programmatic
    dependent launch (200 rows: the latency variant; 8192 rows: the throughput variant)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch, fusion_kernels\n"
        "fusion_kernels.load(strict=True)\n"
        "g = torch.Generator(device='cuda').manual_seed(3)\n"
        "out = []\n"
        "for rows in (200, 8192):\n"
        "    x = torch.randn(rows, 7168, device='cuda', dtype=torch.bfloat16, generator=g)\n"
        "    w = torch.randn(7168, device='cuda', dtype=torch.bfloat16, generator=g)\n"
        "    out += torch.ops.fusion_kernels.rms_norm_per_token_group_quant(x, w, 1e-6, 128, False, False, torch.float8_e4m3fn)\n"
        "torch.save([o.cpu() for o in out], sys.argv[1])\n"
    )
    results = []
    for pdl in ("1", "0"):
        path = tmp_path / f"pdl{pdl}.pt"
        env = dict(os.environ, FUSION_KERNELS_PDL=pdl)
        subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, timeout=300)
        results.append(torch.load(path))
    for a, b in zip(*results):
        assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                           b.view(torch.uint8) if b.element_size() == 1 else b)  # fmt: skip


def _positive_values(dtype):
    """Every positive finite value of a 16-bit float and +Inf; for float32 a spread of 2^20."""
    if dtype == torch.float32:
        g = torch.Generator().manual_seed(5)
        bits = torch.randint(1, 0x7F800000, (1 << 20,), generator=g, dtype=torch.int64)
        edges = torch.tensor([1, 0x007FFFFF, 0x00800000, 0x2EDBE6FF, 0x2EDBE700, 0x7F7FFFFF, 0x7F800000])
        return torch.cat([edges, bits]).to(torch.int32).view(torch.float32)
    inf = torch.tensor([float("inf")], dtype=dtype)
    top = 0x7F7F if dtype == torch.bfloat16 else 0x7BFF
    return torch.cat([torch.arange(1, top + 1, dtype=torch.int16).view(dtype), inf])


SCALE_OPS = {
    # op: (arguments after the input, elements per scale)
    "per_token_group_fp8_quant": (lambda qd: (64, False, False, qd), 64),
    "dynamic_per_token_scaled_fp8_quant": (lambda qd: (None, qd), 4096),
    "dynamic_scaled_int8_quant": (lambda qd: (), 4096),
}


@pytest.mark.parametrize(
    "op_name, qdtype",
    [
        ("per_token_group_fp8_quant", torch.float8_e4m3fn),
        ("per_token_group_fp8_quant", torch.float8_e4m3fnuz),
        ("dynamic_per_token_scaled_fp8_quant", torch.float8_e4m3fn),
        ("dynamic_scaled_int8_quant", torch.int8),
    ],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scale_of_every_absmax(op_name, qdtype, dtype):
    """A dynamic scale amax / qmax (computed by a multiply and an fma correction) and its
    reciprocal (an approximation and a Newton step) round as div.rn and rcp.rn do for every absmax
    a 16-bit input can have, and a spread of float32 ones; q follows from them."""
    values = _positive_values(dtype)
    args, per_scale = SCALE_OPS[op_name]
    if per_scale == 4096:  # per-token: rows of 4096 with one absmax each
        values = values[: 1 << 15]
    width = 4096
    slots = -(-values.numel() * per_scale // width) * (width // per_scale)
    x = torch.zeros(slots, per_scale, dtype=dtype)
    x[: values.numel(), 0] = values
    x[: values.numel(), 1] = -values / 3  # a smaller second element of the other sign
    x = x.reshape(-1, width).cuda()
    out = getattr(ops, op_name)(x, *args(qdtype))
    q, s = (t.cpu() for t in out)
    # The reference on the CPU: an independent device for the exact quotients and reciprocals.
    ref_q, ref_s = reference_of(op_name)(x.cpu(), *args(qdtype))
    assert torch.equal(s.view(torch.int32), ref_s.view(torch.int32))
    finite = torch.zeros(slots, dtype=torch.bool)  # an Inf quantizes to NaN
    finite[: values.numel()] = torch.isfinite(values)
    q, ref_q = (t.view(torch.uint8).reshape(-1, per_scale)[finite] for t in (q, ref_q))
    assert torch.equal(q, ref_q)
