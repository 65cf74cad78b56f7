# SPDX-License-Identifier: Apache-2.0
"""Inspection: dumps, reports, logging, the CLI and the example model."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusion_passes
from fusion_passes import native_forms as nf

ROOT = Path(__file__).resolve().parents[2]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_inspect_writes_graphs_depyf_dumps_and_report(tmp_path, fresh_dynamo):
    quickstart = _load_example("quickstart")
    model = quickstart.TwoLayer(128, torch.float8_e4m3fn)
    x = torch.randn(2, 8, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        report = fusion_passes.inspect(model, x, out_dir=tmp_path)
    assert report.fused == 2 and report.refused == 0
    after = (tmp_path / "graphs" / "graph_0_after.py").read_text()
    assert after.count("fusion_kernels.rms_norm_static_fp8_quant.default(") == 1
    assert after.count("fusion_kernels.fused_add_rms_norm_static_fp8_quant.default(") == 1
    assert "fusion_kernels.static_scaled_fp8_quant" not in after
    assert "fusion_kernels.static_scaled_fp8_quant.default(" in (tmp_path / "graphs" / "graph_0_before.py").read_text()
    post_grad = list((tmp_path / "depyf").glob("*AFTER_POST_GRAD*.py"))
    kernels = list((tmp_path / "depyf").glob("*.kernel_*.py"))
    assert post_grad and kernels, sorted(p.name for p in (tmp_path / "depyf").iterdir())
    assert "fused_add_rms_norm_static_fp8_quant" in post_grad[0].read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["fused"] == 2
    assert data["matches_per_pattern"] == {
        "rms_norm+static_scaled_fp8_quant": 1,
        "fused_add_rms_norm+static_scaled_fp8_quant": 1,
    }
    text = (tmp_path / "report.txt").read_text()
    assert "-> fused_add_rms_norm_static_fp8_quant" in text and "quickstart.py:" in text


def test_logging_one_info_line_per_graph_and_a_warning_when_nothing_fused(caplog, fresh_dynamo):
    def fused_ok(x, w, s):
        return nf.quant_fp8_static(nf.rms_norm_hf(x, w, 1e-6), s)

    def nothing_fusable(x, w, s):  # a norm and a quant, but the quant clamps to 224: refused
        return (nf.rms_norm_hf(x, w, 1e-6).float() / s).clamp(-224, 224).to(torch.float8_e4m3fn)

    def ours():  # our logger's records, not torch's (e.g. its "No CUDA runtime" warning on a CUDA build)
        return [r for r in caplog.records if r.name.startswith("fusion_passes")]

    x, w, s = torch.randn(4, 64, dtype=torch.bfloat16), torch.ones(64, dtype=torch.bfloat16), torch.tensor(0.01)
    with caplog.at_level(logging.INFO, logger="fusion_passes"):
        fusion_passes.compile(fused_ok, native="always")(x, w, s)
    infos = [r for r in ours() if r.levelno == logging.INFO and "site(s) fused" in r.getMessage()]
    assert len(infos) == 1 and "1 site(s) fused, 0 refused" in infos[0].getMessage()
    assert not [r for r in ours() if r.levelno == logging.WARNING]
    caplog.clear()
    torch._dynamo.reset()
    with caplog.at_level(logging.INFO, logger="fusion_passes"):
        fusion_passes.compile(nothing_fusable, native="always")(x, w, s)
    warnings = [r.getMessage() for r in ours() if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nothing was fused" in warnings[0] and "clamp_bound_mismatch" in warnings[0]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fusion_passes", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)  # fmt: skip


def test_cli_report_prints_the_platform_table():
    proc = _cli("report")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "torch" in out and torch.__version__ in out
    assert "library" in out and "loaded" in out
    assert "rms_norm+static_scaled_fp8_quant" in out and "native:add+rms_norm_hf+fp8_per_group" in out
    header = next(line for line in out.splitlines() if line.startswith("pattern"))
    assert "cpu" in header
    assert all(line == line.rstrip() for line in out.splitlines()), "trailing spaces in the tables"


def test_cli_inspect_runs_an_example_and_writes_dumps(tmp_path):
    proc = _cli("inspect", "quickstart", "--out", str(tmp_path), "--", "--device", "cpu", "--hidden", "128")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 site(s) fused" in proc.stdout
    assert (tmp_path / "report.txt").is_file()
    # As the README says: one folder per FusionPass the script created.
    after = tmp_path / "graphs" / "pass0" / "graph_0_after.py"
    assert "fused_add_rms_norm_static_fp8_quant" in after.read_text()
    assert list((tmp_path / "depyf").glob("*AFTER_POST_GRAD*.py"))
    # depyf's dumps say which compile had the plugin.
    index = (tmp_path / "depyf" / "INDEX.txt").read_text()
    assert "with the plugin: FusionPass 0, its graph 0: 2 site(s) fused, 0 refused" in index, index
    # No warning caused by us: depyf's reminder and Dynamo's note on force_disable_caches.
    assert "You are trying to debug" not in proc.stderr and "dynamo_pgo" not in proc.stderr, proc.stderr


def test_cli_inspect_help_shows_the_script_arguments_and_forgetting_the_separator_says_how(capsys):
    from fusion_passes.__main__ import main

    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    assert "[-- SCRIPT_ARGS ...]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["inspect", "llama_fp8", "--out", "dump", "--quant", "per_token"])
    assert exc.value.code == 2
    assert "inspect llama_fp8 --out dump -- --quant per_token" in capsys.readouterr().err
