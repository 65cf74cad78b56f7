# SPDX-License-Identifier: Apache-2.0
"""examples/hf_torchao.py at tiny sizes on CPU: transformers models whose linears quantize their
activations with torchao's functions (PerRow and PerTensor), a compressed-tensors FP8 checkpoint
written to disk with random weights, and a run with autograd on. Skipped without the [hf] extra.

The PerRow and compressed-tensors scale rules (the scale rounded to bf16, no floor) are fused
into the rule op ``rms_norm_dynamic_quant``; a library without it refuses those sites as
``scale_rule_unsupported``, which is what these tests then expect.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed ([hf] extra)")
pytest.importorskip("torchao", reason="torchao is not installed ([hf] extra)")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--device", "cpu", "--hidden", "256", "--layers", "1", "--vocab", "256", "--tokens", "8"]
pytestmark = pytest.mark.slow  # each test compiles a model twice (about 10-30 s on 2 cores)


def _example():
    """The example as a module (registered in sys.modules: Dynamo looks its classes up there)."""
    if "hf_torchao" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hf_torchao", ROOT / "examples" / "hf_torchao.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["hf_torchao"]


def _rule_op() -> bool:
    return hasattr(torch.ops.fusion_kernels, "rms_norm_dynamic_quant")


def _modules(result) -> list[str]:
    """The module path of each site's norm, as the report names it ("<path>, node <name>")."""
    return sorted(name.split(", node ")[0] for name in result["sites"])


def _assert_norm_sites(result, layers: int, head: bool) -> None:
    """One site per RMSNorm that feeds quantized linears, each named by its module path (the
    q/k/v and gate/up quantizers of one norm are one site)."""
    expected = [f"layers.{i}.{n}" for i in range(layers) for n in ("input_layernorm", "post_attention_layernorm")]
    expected += ["norm"] if head else []
    assert result["expected_sites"] == len(expected)
    got = _modules(result)
    assert len(got) == len(expected), result["report"]
    for path, want in zip(got, sorted(expected)):
        assert path == want or path.endswith("." + want), (path, want)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_torchao_per_row_every_site_fused(arch, fresh_dynamo, capsys):
    result = _example().main([*TINY, "--arch", arch, "--granularity", "row"])
    out = capsys.readouterr().out
    assert "_choose_scale_float8 + _quantize_affine_float8" in out  # says how it quantized on CPU
    _assert_norm_sites(result, layers=1, head=True)
    if _rule_op():
        assert result["fused"] == 3 and result["refused"] == 0, result["report"]
        assert result["ok"] and "outputs agree" in out
        assert 'sites: 3 of 3 fused with native="always"' in out
    else:
        assert result["reasons"] == {"scale_rule_unsupported": 3}, result["report"]
        assert result["rel_between"] == 0.0  # nothing rewritten: the same code both ways


def test_torchao_per_tensor_fuses_every_site(fresh_dynamo, capsys):
    """One scale for the whole tensor (torchao PerTensor): every site is fused into the rule op
    with group_size -1, and the outputs agree with the compile without the plugin."""
    result = _example().main([*TINY, "--arch", "qwen3", "--granularity", "tensor"])
    _assert_norm_sites(result, layers=1, head=True)
    if _rule_op():
        assert result["fused"] == 3 and result["refused"] == 0, result["report"]
        assert result["ok"] and "outputs agree" in capsys.readouterr().out
    else:
        assert result["reasons"] == {"scale_rule_unsupported": 3}, result["report"]


def write_fp8_checkpoint(path: Path, layers: int = 1, hidden: int = 256) -> None:
    """A compressed-tensors FP8 checkpoint (FP8_DYNAMIC: per-channel FP8 weights, dynamic
    per-token FP8 activations; the output head left in bf16) of a tiny Llama with random weights,
    written the way the library compresses a calibrated model."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, vocab_size=256)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and hasattr(module, "weight_scale"):
            amax = module.weight.detach().abs().amax(dim=1, keepdim=True).float()
            module.weight_scale.data.copy_((amax / torch.finfo(torch.float8_e4m3fn).max).to(module.weight_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="float-quantized")
    compressor.compress_model(model)
    model.save_pretrained(path)
    compressor.update_config(path)


def test_compressed_tensors_checkpoint(tmp_path, fresh_dynamo, capsys):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed ([hf] extra)")
    write_fp8_checkpoint(tmp_path / "ckpt")
    result = _example().main(["--checkpoint", str(tmp_path / "ckpt"), "--device", "cpu", "--tokens", "8"])
    out = capsys.readouterr().out
    assert "float 8-bit token dynamic" in out  # the checkpoint's activation quantizer, as loaded
    _assert_norm_sites(result, layers=1, head=False)  # the output head is not quantized
    if _rule_op():
        assert result["fused"] == 2 and result["refused"] == 0 and result["ok"], result["report"]
    else:
        assert result["reasons"] == {"scale_rule_unsupported": 2}, result["report"]


def test_autograd_refusal_says_why(fresh_dynamo, capsys):
    """With autograd on, the forward graph returns the norm's and the quantizer's intermediates
    (rsqrt, the absmax) for the backward pass: nothing is fused, the model runs as compiled
    without the plugin, and the example and the report name the fix."""
    result = _example().main([*TINY, "--grad"])
    out = capsys.readouterr().out
    assert result["fused"] == 0 and result["refused"] == 3 and result["rel_between"] == 0.0, result["report"]
    assert "run inference under torch.no_grad() or torch.inference_mode()" in out
    assert result["reasons"] == {"intermediate_needed_for_backward": 3}, result["report"]
    assert "torch.no_grad()" in result["report"] and "torch.inference_mode()" in result["report"]


def test_example_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"pip install -e \"\.\[hf\]\""):
        _example().main(["--device", "cpu"])


def test_torchao_inductor_settings_are_torchaos_unless_asked():
    """--inductor-config: torchao's config applies its recommended Inductor settings (coordinate
    descent tuning, process-wide) by default, as a user's quantize_ call does; "torch" keeps torch's."""
    ex = _example()
    assert ex.torchao_config("row").set_inductor_config is True
    assert ex.torchao_config("tensor", "torch").set_inductor_config is False
    with pytest.raises(ValueError, match="inductor_config"):
        ex.torchao_config("row", "max-autotune")
