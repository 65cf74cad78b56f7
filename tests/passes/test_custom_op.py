# SPDX-License-Identifier: Apache-2.0
"""The custom-op matcher on traced graphs (no Inductor compile: milliseconds per case).

Each case traces a function of our unfused ops with make_fx under fake tensors (the post-grad
graph of the same code has the same nodes), runs the pass, checks exact node counts, then runs
the rewritten graph on real tensors and compares with the function run eagerly, bit for bit.
"""

import dataclasses
import operator

import pytest
import torch
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

import fusion_kernels
from fusion_kernels import platform
from fusion_kernels.testing import op_counts
from fusion_passes import FusionPass

ops = torch.ops.fusion_kernels
FP8 = torch.float8_e4m3fn
EPS = 1e-6


def trace(fn, *args):
    return make_fx(fn, tracing_mode="fake")(*args)


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def assert_same(a, b):
    a, b = pytree.tree_leaves(a), pytree.tree_leaves(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype and x.stride() == y.stride()
        assert torch.equal(bits(x), bits(y))


def run_pass(gm, **kw):
    p = FusionPass(native="never", **kw)
    p(gm.graph)
    gm.recompile()
    return p


def inputs(tokens=(6,), hidden=256, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*tokens, hidden, generator=g).to(dtype)
    r = torch.randn(*tokens, hidden, generator=g).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype)
    return x, r, w, torch.tensor(0.03), torch.tensor(3.0)


# One entry per quant family: (quant call on y, expected fused op, residual fused op)
FAMILIES = {
    "fp8_static": (lambda y, s, ub: ops.static_scaled_fp8_quant(y, s, FP8),
                   "rms_norm_static_fp8_quant", "fused_add_rms_norm_static_fp8_quant"),
    "fp8_static_fnuz": (lambda y, s, ub: ops.static_scaled_fp8_quant(y, s, torch.float8_e4m3fnuz),
                        "rms_norm_static_fp8_quant", "fused_add_rms_norm_static_fp8_quant"),
    "fp8_per_token": (lambda y, s, ub: ops.dynamic_per_token_scaled_fp8_quant(y, None, FP8),
                      "rms_norm_dynamic_per_token_quant", "fused_add_rms_norm_dynamic_per_token_quant"),
    "fp8_per_token_ub": (lambda y, s, ub: ops.dynamic_per_token_scaled_fp8_quant(y, ub, FP8),
                         "rms_norm_dynamic_per_token_quant", "fused_add_rms_norm_dynamic_per_token_quant"),
    "fp8_group128": (lambda y, s, ub: ops.per_token_group_fp8_quant(y, 128, False, False, FP8),
                     "rms_norm_per_token_group_quant", "fused_add_rms_norm_per_token_group_quant"),
    "fp8_group64_colmajor_ue8m0": (lambda y, s, ub: ops.per_token_group_fp8_quant(y, 64, True, True, FP8),
                                   "rms_norm_per_token_group_quant", "fused_add_rms_norm_per_token_group_quant"),
    # column-major scales with TMA-aligned (padded to 4 rows) columns: DeepGEMM's sm_90 layout
    "fp8_group128_colmajor_tma": (lambda y, s, ub: ops.per_token_group_fp8_quant(y, 128, True, False, FP8, True),
                                  "rms_norm_per_token_group_quant", "fused_add_rms_norm_per_token_group_quant"),
    # UE8M0 scales packed for DeepGEMM (int32 over the flattened rows)
    "fp8_group128_packed": (lambda y, s, ub: ops.per_token_group_fp8_quant_packed(y, 128, FP8),
                            "rms_norm_per_token_group_quant_packed", "fused_add_rms_norm_per_token_group_quant_packed"),
    "fp8_group32_packed": (lambda y, s, ub: ops.per_token_group_fp8_quant_packed(y, 32, FP8),
                           "rms_norm_per_token_group_quant_packed", "fused_add_rms_norm_per_token_group_quant_packed"),
    "int8_static": (lambda y, s, ub: ops.static_scaled_int8_quant(y, s),
                    "rms_norm_static_int8_quant", "fused_add_rms_norm_static_int8_quant"),
    "int8_per_token": (lambda y, s, ub: ops.dynamic_scaled_int8_quant(y),
                       "rms_norm_dynamic_per_token_quant", "fused_add_rms_norm_dynamic_per_token_quant"),
    # the rule op: torchao's per-row rule (scale rounded to bf16, no floor), an INT8 group rule
    "rule_fp8_row_bf16_scale": (
        lambda y, s, ub: ops.dynamic_quant(y, FP8, 0, 448.0, 0.0, 0.0, 0.0, torch.bfloat16, False),
        "rms_norm_dynamic_quant", "fused_add_rms_norm_dynamic_quant"),
    "rule_int8_group64": (
        lambda y, s, ub: ops.dynamic_quant(y, torch.int8, 64, 127.0, 1e-10, 0.0, 0.0, torch.float32, False),
        "rms_norm_dynamic_quant", "fused_add_rms_norm_dynamic_quant"),
    # the rule op per tensor (group_size -1): torchao's PerTensor rule
    "rule_fp8_per_tensor": (
        lambda y, s, ub: ops.dynamic_quant(y, FP8, -1, 448.0, 0.0, 0.0, 0.0, torch.bfloat16, False),
        "rms_norm_dynamic_quant", "fused_add_rms_norm_dynamic_quant"),
}  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_norm_then_quant_is_fused(family, dtype):
    quant, fused, _ = FAMILIES[family]

    def fn(x, r, w, s, ub):
        return quant(ops.rms_norm(x, w, EPS), s, ub)

    args = inputs(dtype=dtype)
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert op_counts(gm) == {fused: 1}
    assert p.report.fused == 1 and p.report.refused == 0
    assert_same(gm(*args), fn(*args))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("residual_used", [True, False], ids=["residual-used", "last-layer"])
def test_add_norm_then_quant_is_fused(family, residual_used):
    quant, _, fused = FAMILIES[family]

    def fn(x, r, w, s, ub):
        y, new_r = ops.fused_add_rms_norm(x, r, w, EPS)
        q = quant(y, s, ub)
        return (q, new_r) if residual_used else q

    args = inputs(tokens=(10,) if "colmajor" in family else (2, 5))  # column-major scales are 2-D only
    gm = trace(fn, *args)
    run_pass(gm)
    assert op_counts(gm) == {fused: 1}
    assert_same(gm(*args), fn(*args))


def test_decoder_stack_fuses_every_site_and_threads_the_residual():
    """Four layers: the new residual of each fused site feeds the next layer's add."""

    def fn(x, r, w, s, ub):
        h, res = x, r
        outs = []
        for _ in range(4):
            y, res = ops.fused_add_rms_norm(h, res, w, EPS)
            q = ops.static_scaled_fp8_quant(y, s, FP8)
            h = q.to(torch.bfloat16) * 0.5  # stand-in for the layer's matmuls
            outs.append(q)
        return *outs, res

    args = inputs()
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert op_counts(gm) == {"fused_add_rms_norm_static_fp8_quant": 4}
    assert p.report.fused == 4
    assert_same(gm(*args), fn(*args))


def test_mixed_schemes_each_get_their_own_fused_op():
    def fn(x, r, w, s, ub):
        y, res = ops.fused_add_rms_norm(x, r, w, EPS)
        q1, s1 = ops.dynamic_per_token_scaled_fp8_quant(y, None, FP8)
        h = q1.to(torch.bfloat16) * s1.to(torch.bfloat16)
        y2, res2 = ops.fused_add_rms_norm(h, res, w, EPS)
        q2, s2 = ops.per_token_group_fp8_quant(y2, 128, False, False, FP8)
        q3 = ops.static_scaled_int8_quant(ops.rms_norm(res2, w, EPS), s)
        return q1, s1, q2, s2, q3

    args = inputs()
    gm = trace(fn, *args)
    run_pass(gm)
    assert op_counts(gm) == {
        "fused_add_rms_norm_dynamic_per_token_quant": 1,
        "fused_add_rms_norm_per_token_group_quant": 1,
        "rms_norm_static_int8_quant": 1,
    }
    assert_same(gm(*args), fn(*args))


@pytest.mark.parametrize("family", ["fp8_static", "fp8_per_token", "fp8_group128", "fp8_group128_packed", "int8_per_token",
                                    "rule_fp8_per_tensor"])  # fmt: skip
@pytest.mark.parametrize("residual", [False, True])
def test_quant_through_a_token_flattening_view_is_fused(family, residual):
    quant, fused, fused_res = FAMILIES[family]

    def fn(x, r, w, s, ub):
        if residual:
            y, new_r = ops.fused_add_rms_norm(x, r, w, EPS)
        else:
            y, new_r = ops.rms_norm(x, w, EPS), None
        out = quant(y.view(-1, y.shape[-1]), s, ub)
        return (out, new_r) if residual else out

    args = inputs(tokens=(3, 4))
    gm = trace(fn, *args)
    run_pass(gm)
    assert op_counts(gm) == {fused_res if residual else fused: 1}
    assert_same(gm(*args), fn(*args))


def test_view_that_changes_the_hidden_dim_is_refused():
    def fn(x, r, w, s, ub):
        y = ops.rms_norm(x, w, EPS)
        return ops.static_scaled_fp8_quant(y.view(6, 2, 128), s, FP8)

    args = inputs()
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert op_counts(gm) == {"rms_norm": 1, "static_scaled_fp8_quant": 1}
    assert p.report.refusals_per_reason() == {"view_changes_hidden_dim": 1}
    assert_same(gm(*args), fn(*args))


def test_column_major_scales_through_a_3d_view_are_refused():
    def fn(x, r, w, s, ub):
        y = ops.rms_norm(x, w, EPS)
        return ops.per_token_group_fp8_quant(y.view(-1, 256), 128, True, False, FP8)

    args = inputs(tokens=(2, 3))
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert p.report.refusals_per_reason() == {"column_major_needs_2d_input": 1}
    assert_same(gm(*args), fn(*args))


@pytest.mark.parametrize("residual", [False, True])
def test_norm_output_with_another_user_is_left_alone(residual):
    def fn(x, r, w, s, ub):
        if residual:
            y, new_r = ops.fused_add_rms_norm(x, r, w, EPS)
        else:
            y, new_r = ops.rms_norm(x, w, EPS), x
        q = ops.static_scaled_fp8_quant(y, s, FP8)
        return q, y * 2, new_r  # y is needed unquantized too

    args = inputs()
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert op_counts(gm) == {"fused_add_rms_norm" if residual else "rms_norm": 1, "static_scaled_fp8_quant": 1}
    assert p.report.refusals_per_reason() == {"norm_output_has_other_users": 1}
    assert_same(gm(*args), fn(*args))


@pytest.mark.parametrize("family", ["fp8_per_token", "fp8_group128", "int8_per_token", "rule_fp8_row_bf16_scale",
                                    "rule_int8_group64", "rule_fp8_per_tensor"])  # fmt: skip
@pytest.mark.parametrize("residual", [False, True])
def test_norm_output_with_another_user_fuses_into_the_variant(family, residual):
    """y also read elsewhere: the rule op's norm-output variant returns q, the scales and y (our
    norm's y, bit for bit), every reader rewired; the fixed rules through their rule."""
    quant = FAMILIES[family][0]

    def fn(x, r, w, s, ub):
        if residual:
            y, new_r = ops.fused_add_rms_norm(x, r, w, EPS)
        else:
            y, new_r = ops.rms_norm(x, w, EPS), None
        out = quant(y, s, ub)
        return (*out, y * 2, y.sum(), *((new_r,) if residual else ()))

    args = inputs()
    gm = trace(fn, *args)
    p = run_pass(gm)
    name = ("fused_add_" if residual else "") + "rms_norm_dynamic_quant_with_norm_out"
    assert op_counts(gm) == {name: 1}, p.report
    assert p.report.sites[0].note == "normalised output returned too"
    assert_same(gm(*args), fn(*args))


@pytest.mark.parametrize("family", ["fp8_per_token_ub", "fp8_group64_colmajor_ue8m0"])
def test_norm_output_with_another_user_and_no_variant_is_refused(family):
    quant = FAMILIES[family][0]

    def fn(x, r, w, s, ub):
        y = ops.rms_norm(x, w, EPS)
        return (*quant(y, s, ub), y * 2)

    args = inputs(tokens=(10,))
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert p.report.refusals_per_reason() == {"norm_output_has_other_users": 1}
    assert_same(gm(*args), fn(*args))


def test_group_size_not_dividing_hidden_is_refused_with_its_reason():
    def fn(x, r, w, s, ub):
        return ops.per_token_group_fp8_quant(ops.rms_norm(x, w, EPS), 64, False, False, FP8)

    gm = trace(fn, *inputs(hidden=192))
    # A graph where the group size does not divide H cannot be traced (the fake rejects it), so
    # edit a traced one: the pass must check, not trust the graph.
    (q,) = [n for n in gm.graph.nodes if n.target is ops.per_token_group_fp8_quant.default]
    q.args = (q.args[0], 128, *q.args[2:])
    p = run_pass(gm)
    assert p.report.refusals_per_reason() == {"group_size_not_dividing_hidden": 1}
    assert op_counts(gm) == {"rms_norm": 1, "per_token_group_fp8_quant": 1}


def test_no_kernel_for_the_device_is_refused():
    def fn(x, r, w, s, ub):
        return ops.static_scaled_fp8_quant(ops.rms_norm(x, w, EPS), s, FP8)

    gm = trace(fn, *inputs())
    with platform.override(kernels_for=("cuda",)):  # a library without CPU kernels
        p = run_pass(gm)
    assert p.report.refusals_per_reason() == {"no_kernel_for_device": 1}
    assert op_counts(gm) == {"rms_norm": 1, "static_scaled_fp8_quant": 1}


def test_pattern_selection_and_unknown_names():
    def fn(x, r, w, s, ub):
        a = ops.static_scaled_fp8_quant(ops.rms_norm(x, w, EPS), s, FP8)
        b = ops.static_scaled_int8_quant(ops.rms_norm(r, w, EPS), s)
        return a, b

    args = inputs()
    gm = trace(fn, *args)
    p = run_pass(gm, patterns=["rms_norm+static_scaled_int8_quant"])
    assert op_counts(gm) == {"rms_norm": 1, "static_scaled_fp8_quant": 1, "rms_norm_static_int8_quant": 1}
    assert "rms_norm+static_scaled_fp8_quant" in p.report.inactive_patterns
    with pytest.raises(ValueError, match="unknown pattern names"):
        FusionPass(patterns=["no_such_pattern"])


def test_fused_node_keeps_source_location_and_metadata():
    def fn(x, r, w, s, ub):
        return ops.rms_norm_static_fp8_quant(x, w, s, EPS, FP8), ops.static_scaled_fp8_quant(
            ops.rms_norm(r, w, EPS), s, FP8
        )

    gm = trace(fn, *inputs())
    run_pass(gm)
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is not operator.getitem:
            assert "val" in n.meta, n


def test_uuid_tracks_options_and_is_stable():
    a, b = FusionPass(native="always"), FusionPass(native="always")
    assert a.uuid() == b.uuid()
    assert FusionPass(native="never").uuid() != a.uuid()
    assert FusionPass(native="always", patterns=["rms_norm+static_scaled_fp8_quant"]).uuid() != a.uuid()
    with pytest.raises(ValueError, match="native must be one of"):
        FusionPass(native="sometimes")


def test_uuid_tracks_what_the_library_is_not_how_it_was_obtained(monkeypatch):
    """A fresh build and the same library from the cache give one key (else the second run of a
    program misses Inductor's FX graph cache); another library gives another."""
    from fusion_kernels.build import loader

    st = fusion_kernels.state()
    monkeypatch.setattr(loader, "_state", dataclasses.replace(st, source="jit-build", build_seconds=12.0))
    built = FusionPass(native="always").uuid()
    monkeypatch.setattr(loader, "_state", dataclasses.replace(st, source="jit-cache", build_seconds=None))
    assert FusionPass(native="always").uuid() == built
    monkeypatch.setattr(loader, "_state", dataclasses.replace(st, source_hash="0" * 16))
    assert FusionPass(native="always").uuid() != built


def test_report_of_a_pass_that_saw_no_graph_says_why():
    p = FusionPass(native="never")
    text = str(p.report)
    assert "graphs: 0" in text and "FX graph cache" in text and "force_disable_caches" in text
    gm = trace(lambda x, r, w, s, ub: ops.static_scaled_fp8_quant(ops.rms_norm(x, w, EPS), s, FP8), *inputs())
    p(gm.graph)
    assert "FX graph cache" not in str(p.report) and p.report.fused == 1


# --- the microscaling formats ------------------------------------------------------------------

MX_QUANTS = {
    "mxfp8_rceil": (lambda y, g: ops.mxfp8_quant(y, FP8, "rceil", False), "mxfp8"),
    "mxfp8_floor_swizzled": (lambda y, g: ops.mxfp8_quant(y, torch.float8_e5m2, "floor", True), "mxfp8"),
    "mxfp4_even": (lambda y, g: ops.mxfp4_quant(y, "even", False), "mxfp4"),
    "mxfp4_ceil_swizzled": (lambda y, g: ops.mxfp4_quant(y, "ceil", True), "mxfp4"),
    "nvfp4_divisor": (lambda y, g: ops.nvfp4_quant(y, g, False, False), "nvfp4"),
    "nvfp4_multiplier_swizzled": (lambda y, g: ops.nvfp4_quant(y, g, True, True), "nvfp4"),
}


@pytest.fixture
def mx_ops():
    missing = [n for n in ("mxfp8_quant", "mxfp4_quant", "nvfp4_quant") if not hasattr(ops, n)]
    if missing:
        pytest.skip(f"the loaded library does not define {missing}")


@pytest.mark.parametrize("quant", list(MX_QUANTS))
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("view", [False, True], ids=["direct", "flattening-view"])
def test_microscaling_quant_after_the_norm_is_fused(quant, residual, view, mx_ops):
    q, fmt = MX_QUANTS[quant]
    fused = ("fused_add_" if residual else "") + f"rms_norm_{fmt}_quant"

    def fn(x, r, w, s, ub):
        g = s * 0.01  # a global scale for NVFP4
        if residual:
            y, new_r = ops.fused_add_rms_norm(x, r, w, EPS)
        else:
            y, new_r = ops.rms_norm(x, w, EPS), None
        out = q(y.view(-1, y.shape[-1]) if view else y, g)
        return (*out, new_r) if residual else out

    args = inputs(tokens=(3, 50) if view else (130,))  # 130 rows: the swizzled layout pads to 256
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert op_counts(gm) == {fused: 1}, p.report
    assert_same(gm(*args), fn(*args))


def test_microscaling_norm_output_read_elsewhere_is_refused(mx_ops):
    def fn(x, r, w, s, ub):
        y = ops.rms_norm(x, w, EPS)
        return (*ops.mxfp8_quant(y, FP8, "rceil", False), y * 2)

    args = inputs()
    gm = trace(fn, *args)
    p = run_pass(gm)
    assert p.report.refusals_per_reason() == {"norm_output_has_other_users": 1}
    assert_same(gm(*args), fn(*args))
