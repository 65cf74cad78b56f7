# SPDX-License-Identifier: Apache-2.0
"""The native-torch catalogue on captured graphs (AOTAutograd with Inductor's decompositions:
the graph the post-grad pass sees, without Inductor's code generation)."""

import pytest
import torch
import torch.utils._pytree as pytree
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.decomposition import select_decomp_table

from fusion_kernels import platform
from fusion_kernels.testing import SCALE_RTOL, assert_quant_close, op_counts, scale_mask
from fusion_passes import FusionPass
from fusion_passes import native_forms as nf

FP8 = torch.float8_e4m3fn
QUANTS = {
    "fp8_static": (lambda y, s: nf.quant_fp8_static(y, s), "static_fp8"),
    "fp8_per_token": (lambda y, s: nf.quant_fp8_per_token(y), "dynamic_per_token"),
    "fp8_group64": (lambda y, s: nf.quant_fp8_per_group(y, 64), "per_token_group"),
    "fp8_group128": (lambda y, s: nf.quant_fp8_per_group(y, 128), "per_token_group"),
    "int8_static": (lambda y, s: nf.quant_int8_static(y, s), "static_int8"),
    "int8_per_token": (lambda y, s: nf.quant_int8_per_token(y), "dynamic_per_token"),
}
NORMS = {"hf": nf.rms_norm_hf, "functional": nf.rms_norm_functional, "fp32_output": nf.rms_norm_fp32_output}


def run_pass(fn, args, fusion_pass, **compile_kw):
    """Compile ``fn`` through AOTAutograd with Inductor's decompositions, run ``fusion_pass`` on
    the forward graph (the graph Inductor's post-grad passes see), and run the rewritten graph
    (no Inductor code generation: milliseconds instead of seconds). Returns (graph module, outputs)."""
    graphs = []

    def fw(gm, example_inputs):
        fusion_pass(gm.graph)
        gm.recompile()
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=fw, decompositions=select_decomp_table())
    out = torch.compile(fn, backend=backend, **compile_kw)(*args)
    torch._dynamo.reset()
    assert len(graphs) == 1
    return graphs[0], out


def model_fn(norm, quant, residual, eps=1e-6):
    def fn(x, r, w, s):
        if residual:
            x, r = nf.add_residual(x, r)
        out = QUANTS[quant][0](NORMS[norm](x, w, eps), s)
        out = out if isinstance(out, tuple) else (out,)
        return (*out, r) if residual else out

    return fn


def inputs(dtype, rank, hidden=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 5, hidden) if rank == 3 else (15, hidden)
    x = torch.randn(*shape, generator=g).to(dtype)
    r = torch.randn(*shape, generator=g).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype)
    s = torch.tensor(4.0 / 448)
    return x, r, w, s


def assert_equivalent(got, expected, dtype_of_model=torch.bfloat16):
    """The README's "equivalent": quantized values within one step of the native result on at most
    5% of elements, scales within 1% relative; the new residual is computed identically (exact).
    Where a dynamic scale differs from the native one, every element may sit one step away."""
    got, expected = pytree.tree_leaves(got), pytree.tree_leaves(expected)
    assert len(got) == len(expected)
    q_got, q_exp = got[0], expected[0]
    same = None
    for a, e in zip(got[1:], expected[1:]):
        assert a.shape == e.shape and a.dtype == e.dtype
        if a.dtype == torch.float32 and a.shape[:-1] == q_got.shape[:-1]:  # scales
            # 1% would be too tight: two roundings of bf16 (the absmax of a row normalized in another
            # reduction order) can reach 1.6%: the bound is two roundings of the model dtype.
            torch.testing.assert_close(a, e, rtol=SCALE_RTOL[dtype_of_model], atol=0)
            same = scale_mask(a, e, q_exp.shape)
        else:  # the new residual
            torch.testing.assert_close(a, e, rtol=0, atol=0)
    assert q_got.dtype == q_exp.dtype and q_got.shape == q_exp.shape
    assert_quant_close(q_got, q_exp, 0.05, what="q", same_scale=same)


@pytest.mark.parametrize("quant", list(QUANTS))
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_catalogue_entry_is_fused_and_equivalent(quant, norm, residual, dtype):
    rank = 3 if dtype == torch.bfloat16 else 2  # both ranks, and both reduction-dim spellings
    fn = model_fn(norm, quant, residual)
    args = inputs(dtype, rank)
    p = FusionPass(native="always")
    gm, got = run_pass(fn, args, p)
    once = norm in ("functional", "fp32_output") and dtype != torch.float32
    if once and ("int8" in quant or (dtype == torch.float16 and quant != "fp8_static")):
        # Not equivalent in the README's sense (F.rms_norm rounds once): refused, left as written.
        # INT8 steps are too fine for it; in fp16, a dynamic scale amplifies subnormal outputs.
        reason = "int8_rounding_points_differ" if "int8" in quant else "rounding_points_differ_fp16"
        assert op_counts(gm) == {}
        assert p.report.refusals_per_reason() == {reason: 1}
        torch.testing.assert_close(got[0].float(), fn(*args)[0].float(), rtol=0, atol=0)
        return
    expected_op = ("fused_add_rms_norm_" if residual else "rms_norm_") + QUANTS[quant][1] + "_quant"
    assert op_counts(gm) == {expected_op: 1}, p.report
    assert not any(n.target is torch.ops.aten.rsqrt.default for n in gm.graph.nodes)
    assert p.report.fused == 1 and p.report.refused == 0
    assert_equivalent(got, fn(*args), dtype)


@pytest.mark.parametrize("quant", ["fp8_static", "fp8_per_token", "fp8_group128", "int8_per_token"])
def test_native_never_leaves_native_code_alone(quant):
    fn = model_fn("hf", quant, True)
    p = FusionPass(native="never")
    gm, _ = run_pass(fn, inputs(torch.bfloat16, 2), p)
    assert op_counts(gm) == {}
    assert p.report.fused == 0


def test_auto_policy_rewrites_only_measured_cases(monkeypatch):
    from fusion_passes import policy

    fn = model_fn("hf", "fp8_static", False)
    # This CPU as the table keys it (by its instruction set), measured.
    cpu = policy.platform_key(platform.device_info("cpu"))
    monkeypatch.setattr(policy, "MEASURED_DEVICES", {cpu: "a record"})
    monkeypatch.setattr(policy, "MEASURED_FASTER", {})
    p = FusionPass(native="auto")
    gm, _ = run_pass(fn, inputs(torch.bfloat16, 2), p)
    assert op_counts(gm) == {}
    assert p.report.refusals_per_reason() == {"native_policy_not_faster": 1}
    # Measured faster from 16 tokens on: the 15-token site stays with Inductor ...
    monkeypatch.setattr(policy, "MEASURED_FASTER", {(*cpu, "fp8_static", False): ((16, None),)})
    p = FusionPass(native="auto")
    gm, _ = run_pass(fn, inputs(torch.bfloat16, 2), p)
    assert p.report.refusals_per_reason() == {"native_policy_not_faster_at_this_size": 1}
    # ... and so it does where ours was faster only up to 8 tokens ...
    monkeypatch.setattr(policy, "MEASURED_FASTER", {(*cpu, "fp8_static", False): ((1, 8),)})
    p = FusionPass(native="auto")
    gm, _ = run_pass(fn, inputs(torch.bfloat16, 2), p)
    assert p.report.refusals_per_reason() == {"native_policy_not_faster_at_this_size": 1}
    # ... and inside a range (8 to 16 tokens), it is rewritten.
    monkeypatch.setattr(policy, "MEASURED_FASTER", {(*cpu, "fp8_static", False): ((1, 4), (8, 16))})
    p = FusionPass(native="auto")
    gm, _ = run_pass(fn, inputs(torch.bfloat16, 2), p)
    assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}


def test_policy_ranges_from_measured_speedups():
    from fusion_passes.policy import ranges_from_speedups

    assert ranges_from_speedups({1: 1.1, 16: 1.0, 128: 0.9, 1024: 1.2, 16384: 1.3}) == ((1, 16), (1024, None))
    assert ranges_from_speedups({1: 0.9, 16: 0.99}) == ()
    assert ranges_from_speedups({1: 1.0, 4096: 0.96}) == ((1, 1),)


def test_policy_table_keys_are_well_formed():
    from fusion_passes import policy

    for (kind, arch, device, scheme, residual), ranges in policy.MEASURED_FASTER.items():
        assert kind in ("cuda", "rocm", "cpu") and isinstance(residual, bool) and ranges
        assert (kind, arch, device) in policy.MEASURED_DEVICES  # every row names its record
        for lo, hi in ranges:
            assert lo >= 1 and (hi is None or hi >= lo)
        assert kind == "cpu" or arch.startswith(("sm_", "gfx"))
        assert scheme.split("_", 1)[0] in ("fp8", "int8")
    for kind, arch, device in policy.MEASURED_DEVICES:
        # A GPU by its arch and name; a CPU by its instruction set alone.
        assert (kind == "cpu") == (device == "") and arch


# --- what must NOT be rewritten ----------------------------------------------------------------


def _refused(fn, args, reason=None):
    p = FusionPass(native="always")
    gm, got = run_pass(fn, args, p)
    assert op_counts(gm) == {}, p.report
    if reason is not None:
        assert reason in p.report.refusals_per_reason(), p.report
    # Left alone: the graph computes what the function computes.
    for a, e in zip(pytree.tree_leaves(got), pytree.tree_leaves(fn(*args))):
        torch.testing.assert_close(a.float(), e.float(), rtol=0.07, atol=0.07)
    return p


def test_layer_norm_is_not_rewritten():
    def fn(x, r, w, s):
        y = torch.nn.functional.layer_norm(x, (x.shape[-1],), w, None, 1e-6)
        return nf.quant_fp8_static(y, s)

    p = _refused(fn, inputs(torch.bfloat16, 2))
    assert p.report.sites == []  # not a site at all: no RMSNorm there


def test_eps_added_after_the_sqrt_is_not_rewritten():
    def fn(x, r, w, s):
        xf = x.float()
        y = (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)).to(x.dtype) * w
        return nf.quant_fp8_static(y, s)

    p = _refused(fn, inputs(torch.bfloat16, 2))
    assert p.report.sites == []


def test_gemma_one_plus_weight_is_a_supported_variant():
    """Gemma scales by (1 + weight) in fp32: the norm with weight W = 1 + w, which the matcher
    accepts as any [H] weight tensor computed in the graph (fp32 here), and is equivalent."""

    def fn(x, r, w, s):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
        y = y * (1.0 + w.float())
        return (nf.quant_fp8_static(y.to(x.dtype), s),)

    args = inputs(torch.bfloat16, 2)
    p = FusionPass(native="always")
    gm, got = run_pass(fn, args, p)
    assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}
    assert_equivalent(got, fn(*args))


def test_weight_that_is_not_a_per_channel_vector_is_not_rewritten():
    def fn(x, r, w, s):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
        y = y * x.float()  # an element-wise product with the input, not a [H] weight
        return nf.quant_fp8_static(y.to(x.dtype), s)

    p = _refused(fn, inputs(torch.bfloat16, 2))
    assert p.report.fused == 0


@pytest.mark.parametrize("bound", [224.0, 400.0])
def test_quant_clamping_to_another_bound_is_refused(bound):
    def fn(x, r, w, s):
        y = nf.rms_norm_hf(x, w, 1e-6)
        return (y.float() / s).clamp(-bound, bound).to(FP8)

    _refused(fn, inputs(torch.bfloat16, 2), "clamp_bound_mismatch")


def test_norm_output_with_another_consumer_is_refused_and_stays_correct():
    def fn(x, r, w, s):
        y = nf.rms_norm_hf(x, w, 1e-6)
        return nf.quant_fp8_static(y, s), y * 3

    _refused(fn, inputs(torch.bfloat16, 2), "norm_output_has_other_users")


def test_per_token_quant_over_another_axis_is_refused():
    def fn(x, r, w, s):
        y = nf.rms_norm_hf(x, w, 1e-6)
        amax = y.abs().amax(dim=0, keepdim=True).float()
        scale = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
        return (y.float() / scale).clamp(-448, 448).to(FP8), scale

    _refused(fn, inputs(torch.bfloat16, 2), "absmax_not_over_last_dim")


def test_per_token_with_another_min_scale_is_fused_with_its_own_rule():
    """A floor other than vLLM's is not the per-token op's rule: the rule op takes it instead."""

    def fn(x, r, w, s):
        y = nf.rms_norm_hf(x, w, 1e-6)
        amax = y.abs().amax(dim=-1, keepdim=True).float()
        scale = (amax / 448.0).clamp(min=1e-12)
        return (y.float() / scale).clamp(-448, 448).to(FP8), scale

    args = inputs(torch.bfloat16, 2)
    p = FusionPass(native="always")
    gm, got = run_pass(fn, args, p)
    assert op_counts(gm) == {"rms_norm_dynamic_quant": 1}, p.report
    (node,) = [n for n in gm.graph.nodes if "rms_norm_dynamic_quant" in str(n.target)]
    assert node.args[7] == pytest.approx(1e-12)  # the scale floor, read from the graph
    assert_equivalent(got, fn(*args))


def test_dynamic_true_is_refused_with_a_reason_or_fused_never_wrong():
    class HFNorm(torch.nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(hidden, dtype=torch.bfloat16))
            self.eps = 1e-6

        def forward(self, x, s):
            return nf.quant_fp8_static(nf.rms_norm_hf(x, self.weight, self.eps), s)

    m = HFNorm(256)
    x, _, _, s = inputs(torch.bfloat16, 2)
    p = FusionPass(native="always")
    with torch.no_grad():
        run_pass(m, (x, s), p, dynamic=True)
    reasons = p.report.refusals_per_reason()
    assert p.report.fused == 1 or reasons == {"eps_not_constant": 1}, p.report


def test_fnuz_bound_on_a_rocm_platform():
    def fn(x, r, w, s):
        return nf.quant_fp8_static(nf.rms_norm_hf(x, w, 1e-6), s, torch.float8_e4m3fnuz)

    with platform.override(kind="rocm", arch="gfx942"):
        p = FusionPass(native="always")
        gm, _ = run_pass(fn, inputs(torch.bfloat16, 2), p)
    assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function" and "rms_norm_static_fp8_quant" in str(n.target)]
    assert node.args[-1] == torch.float8_e4m3fnuz


def test_policy_table_is_the_one_its_record_implies(monkeypatch):
    """MEASURED_FASTER's rows are what the benchmarks derive from the records MEASURED_DEVICES
    names: a GPU's from its record's default and plain-launch runs (`bench_kernels.py --policy`),
    the CPU rows from `bench_cpu_policy.py --policy`. The table cannot drift from the measurements."""
    import ast
    import importlib.util
    import json
    import re
    import sys
    from pathlib import Path

    from fusion_passes import policy

    root = Path(__file__).resolve().parents[2]
    assert re.search(r"Source: (benchmarks/results/\S+)", policy.__doc__).group(1) in policy.MEASURED_DEVICES.values()

    def load(name):
        spec = importlib.util.spec_from_file_location(name, root / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, mod)  # its dataclasses look themselves up there
        monkeypatch.syspath_prepend(str(root / "benchmarks"))
        spec.loader.exec_module(mod)
        return mod

    def rows(text):
        return ast.literal_eval(
            "{" + "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")) + "}"
        )

    derived = {}
    for (kind, arch, _), record in policy.MEASURED_DEVICES.items():
        if kind == "cpu":
            runs = [root / record / "cpu.json"]
            assert all(r.is_file() for r in runs), runs
            derived.update(rows(load("bench_cpu_policy").policy_table([json.loads(r.read_text()) for r in runs])))
        else:
            runs = [root / record / "bench.json", root / record / "plain-launch" / "bench.json"]
            assert all(r.is_file() for r in runs), runs
            derived.update(rows(load("bench_kernels").policy_table(runs, kind, arch)))
    assert policy.MEASURED_FASTER == derived
