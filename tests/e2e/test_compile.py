# SPDX-License-Identifier: Apache-2.0
"""Full torch.compile runs (kept few: each costs seconds on a 2-core machine)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fusion_passes
from fusion_kernels import platform

ROOT = Path(__file__).resolve().parents[2]
ops = torch.ops.fusion_kernels


def _quickstart():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


@pytest.fixture
def two_layer(device):
    mod = _quickstart()
    fp8 = platform.fp8_dtype(device)
    model = mod.TwoLayer(256, fp8).to(device)
    x = torch.randn(2, 16, 256, dtype=torch.bfloat16, device=device)
    return model, x


def test_plugin_replaces_both_pairs_and_matches_eager_bit_for_bit(two_layer, tmp_path, fresh_dynamo):
    model, x = two_layer
    p = fusion_passes.FusionPass(dump_dir=tmp_path)
    with torch.no_grad():
        compiled = fusion_passes.compile(model, fusion_pass=p)
        out, code = run_and_get_code(compiled, x)
        eager = model(x)
    # From the post-grad graph: the fused ops replaced both unfused pairs, exact counts.
    after = (tmp_path / "graph_0_after.py").read_text()
    before = (tmp_path / "graph_0_before.py").read_text()
    assert before.count("fusion_kernels.rms_norm.default(") == 1
    assert before.count("fusion_kernels.static_scaled_fp8_quant.default(") == 2
    assert after.count("fusion_kernels.rms_norm_static_fp8_quant.default(") == 1
    assert after.count("fusion_kernels.fused_add_rms_norm_static_fp8_quant.default(") == 1
    for unfused in ("fusion_kernels.rms_norm.default(", "fusion_kernels.fused_add_rms_norm.default(",
                    "fusion_kernels.static_scaled_fp8_quant.default("):  # fmt: skip
        assert unfused not in after
    # ... and in the output code that runs.
    src = "\n".join(code)
    assert src.count("fusion_kernels.rms_norm_static_fp8_quant") >= 1
    assert "fusion_kernels.static_scaled_fp8_quant" not in src
    assert p.report.matches_per_pattern() == {
        "rms_norm+static_scaled_fp8_quant": 1,
        "fused_add_rms_norm+static_scaled_fp8_quant": 1,
    }
    # The rounding points make fused == unfused exact; the FP8 matmuls are the same extern
    # kernels in both runs.
    for a, b in zip(out, eager):
        assert torch.equal(_bits(a), _bits(b))


def test_warm_fx_graph_cache_still_serves_the_fused_code(two_layer, fresh_dynamo, fresh_inductor_cache):
    model, x = two_layer
    torch._dynamo.utils.counters.clear()
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=True, force_disable_caches=False):
        first = fusion_passes.compile(model)
        _, code1 = run_and_get_code(first, x)
        torch._dynamo.reset()
        second = fusion_passes.compile(model)  # a new pass with the same options: same uuid
        out, code2 = run_and_get_code(second, x)
    assert fusion_passes.report(first).fused == 2
    assert torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"] >= 1
    assert "fusion_kernels.fused_add_rms_norm_static_fp8_quant" in "\n".join(code2)
    torch.testing.assert_close(out[0], model(x)[0].detach(), rtol=0, atol=0)
    # The pass did not run on the hit, yet its report lists the sites recorded when the code was
    # compiled: the headline never says 0 while the code that runs is fused.
    warm, cold = fusion_passes.report(second), fusion_passes.report(first)
    assert len(warm.graphs) == 1 and warm.graphs[0].from_cache and warm.graphs[0].seconds == 0
    assert [(s.name, s.pattern, s.detail, s.where) for s in warm.sites] == [
        (s.name, s.pattern, s.detail, s.where) for s in cold.sites
    ]
    assert "graphs: 1 (1 served from Inductor's cache)   sites fused: 2   refused: 0" in str(warm)
    assert warm.to_dict()["graphs_from_cache"] == 1


def test_a_cache_hit_without_a_record_reads_the_fused_ops_from_the_output_code(two_layer, fresh_dynamo,
                                                                               fresh_inductor_cache):  # fmt: skip
    import shutil

    from fusion_passes import reporting

    model, x = two_layer
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=True, force_disable_caches=False):
        fusion_passes.compile(model)(x)
        shutil.rmtree(reporting._store_dir())  # e.g. an entry written before the records existed
        torch._dynamo.reset()
        hit = fusion_passes.compile(model)
        hit(x)
    rep = fusion_passes.report(hit)
    assert len(rep.graphs) == 1 and rep.graphs[0].from_cache
    assert rep.fused_ops() == {"rms_norm_static_fp8_quant": 1, "fused_add_rms_norm_static_fp8_quant": 1}


def test_changed_options_miss_the_cache(two_layer, fresh_dynamo, fresh_inductor_cache):
    model, x = two_layer
    torch._dynamo.utils.counters.clear()
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=True, force_disable_caches=False):
        fusion_passes.compile(model, native="auto")(x)
        torch._dynamo.reset()
        p = fusion_passes.FusionPass(patterns=["rms_norm+static_scaled_fp8_quant"])
        fusion_passes.compile(model, fusion_pass=p)(x)
    assert len(p.report.graphs) == 1 and not p.report.graphs[0].from_cache, "a different uuid must recompile"
    assert p.report.matches_per_pattern() == {"rms_norm+static_scaled_fp8_quant": 1}


def _run_python(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_import_starts_no_compiler_no_cuda_and_loads_nothing():
    proc = _run_python(
        """
        import subprocess, sys
        import torch  # torch's own import may start processes (2.14 runs ldconfig): not ours to test
        def refuse(*a, **k):
            raise AssertionError(f"a process was started at import: {a[0] if a else k}")
        subprocess.Popen = refuse
        import fusion_passes, fusion_kernels
        import fusion_kernels.platform, fusion_passes.registry
        assert not torch.cuda.is_initialized(), "CUDA was initialised at import"
        assert not hasattr(torch.ops.fusion_kernels, "rms_norm"), "the library was loaded at import"
        assert fusion_kernels.state().status == "not_loaded"
        assert "torch._inductor.pattern_matcher" not in sys.modules, "pattern tracing machinery imported"
        print("clean")
        """,
        {},
    )
    assert proc.returncode == 0, proc.stderr
    assert "clean" in proc.stdout


def test_disabled_library_degrades_cleanly():
    proc = _run_python(
        """
        import torch, fusion_passes, fusion_kernels
        p = fusion_passes.FusionPass(native="always")
        r = p.report
        assert r.active_patterns == [], r.active_patterns
        assert r.inactive_patterns and all("disabled" in why for why in r.inactive_patterns.values()), r.inactive_patterns
        print(r)

        class PlainTorch(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.rand(64) + 0.5)
            def forward(self, x):
                y = torch.nn.functional.rms_norm(x, (64,), self.w, 1e-6)
                s = y.abs().amax(-1, keepdim=True).clamp(min=1e-6) / 448
                return (y / s).clamp(-448, 448).to(torch.float8_e4m3fn), s

        m = PlainTorch()
        x = torch.randn(8, 64)
        with torch.no_grad():
            q, s = fusion_passes.compile(m, fusion_pass=p)(x)
            rq, rs = m(x)
        torch.testing.assert_close(s, rs)
        assert (q.float() - rq.float()).abs().max() <= 32  # one fp8 step at the top of the range
        print("degraded ok")
        """,
        {"FUSION_KERNELS_DISABLE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "degraded ok" in proc.stdout
    assert "FUSION_KERNELS_DISABLE=1" in proc.stdout
