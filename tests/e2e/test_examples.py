# SPDX-License-Identifier: Apache-2.0
"""The examples run as a user runs them: at their tiny sizes, and without the op library."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_llama_example_runs_at_its_tiny_size_and_names_each_site(fresh_dynamo):
    llama = _load_example("llama_fp8")
    result = llama.main(["--device", "cpu", "--quant", "per_token"])
    assert result["ok"] and result["fused"] == 4 and result["refused"] == 0
    # Each site by its norm's module path and its graph node (all four share one source line).
    modules = sorted(name.split(", node ")[0] for name in result["sites"])
    assert modules == [f"layers.{i}.{n}" for i in (0, 1) for n in ("input_layernorm", "post_attention_layernorm")]
    assert len(set(result["sites"])) == 4
    assert "layers.1.post_attention_layernorm, node " in result["report"]
    torch._dynamo.reset()
    result = llama.main(["--device", "cpu", "--quant", "group128", "--form", "native", "--layers", "1"])
    assert result["ok"] and result["fused"] == 2


def _run_examples(runs, env) -> dict:
    """Each example run as __main__ with its own argv, in one process: its output per script."""
    driver = textwrap.dedent(
        f"""
        import runpy, sys
        for script, argv in {runs!r}:
            sys.argv = [script, *argv]
            print(f"== {{script}}", flush=True)
            try:
                runpy.run_path({str(ROOT / "examples")!r} + "/" + script, run_name="__main__")
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    raise
            print(f"== {{script}} exited 0", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=env, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    sections = {s.split("\n", 1)[0].strip(): s for s in out.split("== ")[1:]}
    for script, _ in runs:
        assert f"{script} exited 0" in sections, out
    return sections


def test_examples_run_in_plain_torch_without_the_op_library(tmp_path):
    """FUSION_KERNELS_DISABLE=1 (as after a failed build): each example runs the model in plain
    torch, says why nothing was fused, and exits 0. One process for the three, at small sizes."""
    runs = [
        ("quickstart.py", ["--device", "cpu", "--hidden", "128", "--tokens", "8"]),
        ("llama_fp8.py", ["--device", "cpu", "--hidden", "128", "--heads", "2", "--layers", "1", "--tokens", "8"]),
        ("inspect_with_depyf.py", ["--out", str(tmp_path / "dump")]),
    ]
    sections = _run_examples(runs, {**os.environ, "FUSION_KERNELS_DISABLE": "1"})
    for script, _ in runs:
        text = sections[script]
        assert "FUSION_KERNELS_DISABLE=1" in text, text  # the reason nothing was fused
        assert "nothing was fused" in text or "nothing was rewritten" in text, text
    assert "outputs agree" in sections["llama_fp8.py"]
    assert (tmp_path / "dump" / "report.txt").is_file()


def test_examples_run_eagerly_without_a_cxx_compiler(tmp_path):
    """No C++ compiler (CXX names none): the op library cannot be built and torch.compile cannot
    generate CPU code. Each example runs its model eagerly, says both, and exits 0."""
    runs = [
        ("quickstart.py", ["--device", "cpu", "--hidden", "128", "--tokens", "8"]),
        ("llama_fp8.py", ["--device", "cpu", "--hidden", "128", "--heads", "2", "--layers", "1", "--tokens", "8"]),
        ("inspect_with_depyf.py", ["--out", str(tmp_path / "dump")]),
    ]
    # (No prebuilt library either: one left in a source checkout's kernels/_prebuilt would load.)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "FUSION_KERNELS_CACHE_DIR": str(tmp_path / "cache"),
           "FUSION_KERNELS_NO_PREBUILT": "1"}  # fmt: skip
    env.pop("FUSION_KERNELS_DISABLE", None)
    sections = _run_examples(runs, env)
    for script, _ in runs:
        text = sections[script]
        assert "torch.compile on CPU needs a C++ compiler" in text and "install g++ or set CXX" in text, text
        assert "nothing was fused" in text or "nothing was rewritten" in text, text
        assert "Traceback" not in text, text
    for script in ("quickstart.py", "llama_fp8.py"):  # the op library's own reason, in one line
        assert "no C++ compiler" in sections[script], sections[script]
        assert "the model ran eagerly" in sections[script], sections[script]
    assert not (tmp_path / "dump").exists()


def test_decode_kernel_diff_names_the_kernels_that_differ():
    """hf_timing's per-variant kernel table (the decode diagnosis of --profile): launches and
    GPU time per step, and the kernels whose time differs most from the compile without the
    plugin, largest difference first."""
    timing = _load_example("hf_timing")
    base = timing.per_step([("rsqrt_fused", 4.0), ("gemm", 20.0)] * 2, steps=2)
    plugin = timing.per_step([("row_op_kernel", 3.0), ("gemm", 20.0), ("copy", 0.5)] * 2, steps=2)
    assert base == {"rsqrt_fused": (4.0, 1.0), "gemm": (20.0, 1.0)}
    lines = timing.kernel_diff(base, plugin, top=2)
    assert lines[0].startswith("kernels per step 3 (without the plugin 2), GPU time 23.5 us (-0.5 us)")
    assert "rsqrt_fused" in lines[1] and "-4.0 us" in lines[1]
    assert "row_op_kernel" in lines[2] and "+3.0 us" in lines[2]
    assert len(lines) == 3


def test_again_is_a_second_compile_without_the_plugin(monkeypatch):
    """hf_timing's ``again`` variant: a separate compile without the plugin (the compile-to-compile
    floor next to ``without``); a native= value goes through the plugin."""
    timing = _load_example("hf_timing")
    calls = []
    monkeypatch.setattr(timing.torch, "compile", lambda m, **kw: calls.append(("torch", kw)) or m)
    monkeypatch.setattr(timing.fusion_passes, "compile", lambda m, **kw: calls.append(("plugin", kw)) or m)
    model = object()
    for v in ("without", "again", "auto"):
        assert timing.compile_variant(model, v, dynamic=False) is model
    assert calls == [("torch", {"dynamic": False}), ("torch", {"dynamic": False}), ("plugin", {"native": "auto", "dynamic": False})]
