# SPDX-License-Identifier: Apache-2.0
"""The platform matrix on this CPU machine: fake CUDA, ROCm and XLA devices through the
platform module (a fixture, not patched torch), missing ops, non-Inductor backends."""

import pytest
import torch
from torch._inductor.decomposition import select_decomp_table
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import fusion_passes
from fusion_kernels import platform
from fusion_kernels.testing import op_counts
from fusion_passes import FusionPass, registry
from fusion_passes import native_forms as nf
from fusion_passes.quant_key import Scheme

ops = torch.ops.fusion_kernels


def fake_graph(fn, device, *shapes, dtype=torch.bfloat16, native=False):
    """A graph traced entirely under fake tensors on ``device`` (no kernel runs, no GPU)."""
    with FakeTensorMode():
        args = [torch.empty(s, device=device, dtype=torch.float32 if s == () else dtype) for s in shapes]
        kw = {"decomposition_table": select_decomp_table()} if native else {}
        return make_fx(fn, **kw)(*args)


def custom_fn(fp8):
    def fn(x, w, s):
        return ops.static_scaled_fp8_quant(ops.rms_norm(x, w, 1e-6), s, fp8)

    return fn


def native_fn(fp8, bound=None):
    def fn(x, w, s):
        y = nf.rms_norm_hf(x, w, 1e-6)
        if bound is None:
            return nf.quant_fp8_static(y, s, fp8)
        return (y.float() / s).clamp(-bound, bound).to(fp8)

    return fn


def test_fake_cuda_graph_is_rewritten_with_the_cuda_ops():
    gm = fake_graph(custom_fn(torch.float8_e4m3fn), "cuda", (4, 256), (256,), ())
    with platform.override(kind="cuda", arch="sm_90", kernels_for=("cpu", "cuda")):
        p = FusionPass(native="always")
        p(gm.graph)
    assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}
    (node,) = [n for n in gm.graph.nodes if "rms_norm_static_fp8_quant" in str(n.target)]
    assert node.meta["val"].device.type == "cuda"


def test_fake_cuda_graph_without_cuda_kernels_is_left_alone():
    gm = fake_graph(custom_fn(torch.float8_e4m3fn), "cuda", (4, 256), (256,), ())
    with platform.override(kernels_for=("cpu",)):
        p = FusionPass(native="always")
        p(gm.graph)
    assert op_counts(gm) == {"rms_norm": 1, "static_scaled_fp8_quant": 1}
    assert p.report.refusals_per_reason() == {"no_kernel_for_device": 1}


def test_fake_xla_graph_is_left_alone():
    for fn, native in ((custom_fn(torch.float8_e4m3fn), False), (native_fn(torch.float8_e4m3fn), True)):
        gm = fake_graph(fn, "xla", (4, 256), (256,), (), native=native)
        before = str(gm.graph)
        p = FusionPass(native="always")
        p(gm.graph)
        assert str(gm.graph) == before
        assert p.report.refusals_per_reason() == {"no_kernel_for_device": 1}, p.report


@pytest.mark.parametrize("arch, expected", [("gfx942", torch.float8_e4m3fnuz), ("gfx950", torch.float8_e4m3fn)])
def test_rocm_platform_selects_its_fp8_flavour(arch, expected):
    with platform.override(kind="rocm", arch=arch):
        info = platform.device_info("cuda")
        assert info.kind == "rocm" and info.warp_size == 64
        assert platform.fp8_dtype("cuda") == expected
        keys = registry.fp8_keys_for("cuda")
        assert keys and all(k.dtype == expected for k in keys)
        assert {k.scheme for k in keys} == {Scheme.STATIC, Scheme.PER_TOKEN, Scheme.PER_GROUP}
    assert all(k.dtype == torch.float8_e4m3fn for k in registry.fp8_keys_for("cpu"))


def test_rocm_fake_graph_is_rewritten_to_the_fnuz_ops():
    with platform.override(kind="rocm", arch="gfx942", kernels_for=("cpu", "cuda")):
        for fn, native in ((custom_fn(torch.float8_e4m3fnuz), False), (native_fn(torch.float8_e4m3fnuz), True)):
            gm = fake_graph(fn, "cuda", (4, 256), (256,), (), native=native)
            p = FusionPass(native="always")
            p(gm.graph)
            assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}, p.report
            (node,) = [n for n in gm.graph.nodes if "rms_norm_static_fp8_quant" in str(n.target)]
            assert node.args[-1] == torch.float8_e4m3fnuz


def test_rocm_native_quant_uses_the_fnuz_bound_240_not_224():
    """240 is float8_e4m3fnuz's max and what our kernels clamp to; code written for vLLM on
    ROCm clamps at 224 for accuracy, which is a different function: refused."""
    with platform.override(kind="rocm", arch="gfx942", kernels_for=("cpu", "cuda")):
        gm = fake_graph(native_fn(torch.float8_e4m3fnuz, bound=240.0), "cuda", (4, 256), (256,), (), native=True)
        p = FusionPass(native="always")
        p(gm.graph)
        assert op_counts(gm) == {"rms_norm_static_fp8_quant": 1}
        gm = fake_graph(native_fn(torch.float8_e4m3fnuz, bound=224.0), "cuda", (4, 256), (256,), (), native=True)
        p = FusionPass(native="always")
        p(gm.graph)
        assert op_counts(gm) == {}
        assert p.report.refusals_per_reason() == {"clamp_bound_mismatch": 1}


def test_an_op_missing_from_the_library_removes_only_its_patterns(monkeypatch):
    real = registry._lookup_op
    monkeypatch.setattr(
        registry, "_lookup_op", lambda name: None if name == "per_token_group_fp8_quant" else real(name)
    )
    p = FusionPass(native="always")
    # (other libraries' patterns are inactive where their ops are not loaded: not ours to count)
    inactive = {k: v for k, v in p.report.inactive_patterns.items() if not k.startswith("foreign:")}
    assert set(inactive) == {"rms_norm+per_token_group_fp8_quant", "fused_add_rms_norm+per_token_group_fp8_quant"}
    assert all("per_token_group_fp8_quant" in why for why in inactive.values())
    assert "native:rms_norm_hf+fp8_per_group" in p.report.active_patterns  # needs only the fused op
    registry.get_registry(refresh=True)


def test_non_inductor_backends_never_call_the_pass(fresh_dynamo):
    p = FusionPass(native="always")
    x, w, s = torch.randn(4, 64, dtype=torch.bfloat16), torch.ones(64, dtype=torch.bfloat16), torch.tensor(0.01)
    fn = custom_fn(torch.float8_e4m3fn)
    with torch._inductor.config.patch(post_grad_custom_post_pass=p):
        out = torch.compile(fn, backend="aot_eager")(x, w, s)
    assert p.report.graphs == []
    assert torch.equal(out.view(torch.uint8), fn(x, w, s).view(torch.uint8))
    with pytest.raises(ValueError, match="needs the Inductor backend"):
        fusion_passes.compile(fn, backend="aot_eager")
