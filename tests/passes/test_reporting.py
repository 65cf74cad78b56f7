# SPDX-License-Identifier: Apache-2.0
"""reporting: how sites and reports read, as text and as JSON."""

import json

from fusion_passes.fx_utils import Location
from fusion_passes.reporting import Report, Site


def _report() -> Report:
    r = Report(["p1"], {"p2": "not selected (patterns=...)"}, "loaded (jit-cache, cpu)", "torch x, cpu", "auto")
    g = r.new_graph()
    where = Location("model.py:42 (forward): y = self.norm(x)", "layers.3.post_attention_layernorm")
    g.sites.append(Site(g.index, "rms_norm+static_scaled_fp8_quant", True, "rms_norm_static_fp8_quant",
                        "rms_norm_static_fp8_quant_default", where))  # fmt: skip
    g.sites.append(Site(g.index, "native:rms_norm_hf+fp8_static", False, "clamp_bound_mismatch", "rsqrt_1",
                        Location("", "layers.4.input_layernorm"), "clamp to 224"))  # fmt: skip
    return r


def test_sites_are_named_by_module_path_and_node_in_text_and_json():
    r = _report()
    text = str(r)
    assert "layers.3.post_attention_layernorm, node rms_norm_static_fp8_quant_default" in text
    assert "rms_norm+static_scaled_fp8_quant -> rms_norm_static_fp8_quant" in text
    assert "at model.py:42 (forward): y = self.norm(x)" in text
    assert "layers.4.input_layernorm, node rsqrt_1" in text and "refused: clamp_bound_mismatch (clamp to 224)" in text
    data = json.loads(json.dumps(r.to_dict()))
    assert [(s["module"], s["node"]) for s in data["sites"]] == [
        ("layers.3.post_attention_layernorm", "rms_norm_static_fp8_quant_default"),
        ("layers.4.input_layernorm", "rsqrt_1"),
    ]
    assert data["sites"][0]["where"] == "model.py:42 (forward): y = self.norm(x)"


def test_report_text_has_no_trailing_spaces():
    for text in (str(_report()), str(Report([], {}, "disabled", "cpu", "never"))):
        assert all(line == line.rstrip() for line in text.splitlines()), text


def test_a_graph_from_the_cache_counts_in_the_headline():
    r = _report()
    recorded = {"sites": [s.__dict__ for s in r.sites], "norms": 2, "quants": 2}
    code = "buf0 = torch.ops.fusion_kernels.rms_norm_static_fp8_quant.default(arg0_1, arg1_1)\n"
    r.add_cached_graph(recorded, code)
    r.add_cached_graph(None, code)  # no record: the fused op read from the output code
    assert [g.from_cache for g in r.graphs] == [False, True, True]
    assert "graphs: 3 (2 served from Inductor's cache)   sites fused: 3   refused: 2" in str(r)
    assert r.graphs[2].sites[0].detail == "rms_norm_static_fp8_quant" and r.graphs[2].sites[0].fused


def test_other_libraries_ops_not_loaded_read_as_one_line_by_library():
    """A process without vLLM or FBGEMM gets one line for all their inactive patterns (the ops
    named by library), not a line per op; the JSON keeps every pattern with its reason."""
    inactive = {
        "foreign:_C.rms_norm+_C.static_scaled_fp8_quant": "torch.ops._C.rms_norm: not loaded (defined by vLLM)",
        "foreign:rms_norm+_C.static_scaled_fp8_quant": "torch.ops._C.static_scaled_fp8_quant: not loaded (defined by vLLM)",
        "foreign:rms_norm+triton.quantize_fp8_row": "torch.ops.triton.quantize_fp8_row: not loaded (defined by FBGEMM GenAI / MSLK)",
        "rms_norm+per_token_group_fp8_quant": "per_token_group_fp8_quant: not defined by the loaded library",
    }  # fmt: skip
    text = str(Report(["p1"], inactive, "loaded (jit-cache, cpu)", "torch x, cpu", "auto"))
    lines = text.splitlines()
    assert "  inactive patterns: 4" in lines
    assert "    1: not defined by the loaded library (rms_norm+per_token_group_fp8_quant)" in lines
    assert ("    3: other libraries' ops, not loaded in this process (FBGEMM GenAI / MSLK: triton.quantize_fp8_row; "
            "vLLM: _C.rms_norm, _C.static_scaled_fp8_quant); their patterns are active where the library is imported"
            in lines)  # fmt: skip
    assert sum("not loaded" in line for line in lines) == 1
    data = json.loads(json.dumps(Report(["p1"], inactive, "", "", "auto").to_dict()))
    assert data["inactive_patterns"] == inactive
