# SPDX-License-Identifier: Apache-2.0
"""A Hugging Face transformers model with FP8 linears (torchao), compiled with and without the
fusion_passes plugin: every RMSNorm -> quantize site by its module path, whether the outputs
agree, and on CUDA the prefill and decode step times.

    pip install -e ".[hf]"                                     # transformers, torchao, compressed-tensors
    python examples/hf_torchao.py                              # CPU: hidden 512, 2 layers, in seconds
    python examples/hf_torchao.py --arch qwen3 --granularity tensor
    python examples/hf_torchao.py --checkpoint DIR             # a compressed-tensors FP8 checkpoint
    python examples/hf_torchao.py --layers 8                   # CUDA: Llama-3.1-8B dims, timed
    python examples/hf_torchao.py --grad                       # autograd on: why nothing fuses then

The model is built from a config with random weights (nothing is downloaded): Llama-3.1-8B's
dimensions (hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256) or Qwen3-32B's
(hidden 5120, 64 heads, 8 KV heads, MLP 25600, vocabulary 151936), ``--layers`` decoder layers.
On a GPU torchao supports (CUDA sm_89+, MI300, XPU), torchao's
Float8DynamicActivationFloat8WeightConfig quantizes every linear (``--granularity row``: PerRow,
one scale per token and per output channel; ``tensor``: PerTensor). The config does not run on
CPU; there each linear quantizes its activation with torchao's own functions
(``_choose_scale_float8``, ``_quantize_affine_float8``: the arithmetic the config runs) and
multiplies with ``torch._scaled_mm``, at small default sizes. ``--checkpoint`` loads a
compressed-tensors FP8 checkpoint instead (dynamic per-token FP8 activations).

The model is compiled without the plugin and with ``native="always"`` (every supported site is
rewritten), run under ``torch.no_grad()``, and the plugin's report printed. On CUDA
``hf_timing.py`` then times prefill (``--prefill-batch`` x 2048 tokens) and decode (batch 1, 8,
64, a static KV cache, CUDA graphs through ``mode="reduce-overhead"``) without the plugin, with
``native="always"`` and with the default ``native="auto"``, in this process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import fusion_passes
from fusion_kernels import platform

# Dimensions of the published models (their config.json); --hidden shrinks them proportionally.
ARCHS = {
    "llama": dict(config="LlamaConfig", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=128256, rms_norm_eps=1e-5),
    "qwen3": dict(config="Qwen3Config", hidden_size=5120, intermediate_size=25600, num_attention_heads=64,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6),
}  # fmt: skip
CPU_DEFAULTS = dict(hidden=512, layers=2, vocab=1024)
FP8 = torch.float8_e4m3fn


def _need_hf():
    try:
        import torchao  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise SystemExit(f'this example needs the [hf] extra: pip install -e ".[hf]" ({e})') from e


def build_model(arch: str, layers: int, hidden: int | None, vocab: int | None, device: torch.device):
    """A transformers causal LM with ``arch``'s dimensions and random weights, in bf16."""
    import transformers

    dims = dict(ARCHS[arch])
    config_cls = getattr(transformers, dims.pop("config"))
    if hidden is not None and hidden != dims["hidden_size"]:
        ratio = hidden / dims["hidden_size"]
        dims["head_dim"] = 64 if hidden < 2048 else 128
        dims["num_attention_heads"] = max(1, hidden // dims["head_dim"])
        dims["num_key_value_heads"] = max(1, dims["num_attention_heads"] // 4)
        dims["intermediate_size"] = int(dims["intermediate_size"] * ratio) // 128 * 128
        dims["hidden_size"] = hidden
    if vocab is not None:
        dims["vocab_size"] = vocab
    config = config_cls(**dims, num_hidden_layers=layers, max_position_embeddings=8192, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


class PrimitivesFP8Linear(torch.nn.Module):
    """A linear with an FP8 weight whose activation is quantized by torchao's quantization
    functions, then multiplied with ``torch._scaled_mm`` (which also runs on CPU)."""

    def __init__(self, linear: torch.nn.Linear, row: bool):
        super().__init__()
        from torchao.quantization.quant_primitives import _choose_scale_float8, _quantize_affine_float8

        self.row = row
        w = linear.weight.detach()
        scale = _choose_scale_float8(w, block_size=[1, w.shape[1]] if row else list(w.shape), float8_dtype=FP8)
        self.register_buffer("weight", _quantize_affine_float8(w, scale, FP8))
        self.register_buffer("weight_scale", scale.reshape(1, -1) if row else scale.reshape(()))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.quantization.quant_primitives import _choose_scale_float8, _quantize_affine_float8

        x2 = x.reshape(-1, x.shape[-1])
        scale = _choose_scale_float8(x2, block_size=[1, x2.shape[1]] if self.row else list(x2.shape), float8_dtype=FP8)
        q = _quantize_affine_float8(x2, scale, FP8)
        x_scale = scale.reshape(-1, 1) if self.row else scale.reshape(())
        if torch.is_grad_enabled():
            # torch._scaled_mm has no derivative: with autograd on, multiply the dequantized
            # values instead (as quantization-aware training does); the quantizer is the same.
            w = (
                self.weight.float() * self.weight_scale.reshape(-1, 1)
                if self.row
                else self.weight.float() * self.weight_scale
            )
            out = torch.nn.functional.linear((q.float() * x_scale).to(x.dtype), w.to(x.dtype), self.bias)
        else:
            out = torch._scaled_mm(q, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=self.bias,
                                   out_dtype=x.dtype)  # fmt: skip
        return out.reshape(*x.shape[:-1], -1)


def torchao_config(granularity: str, inductor_config: str = "torchao"):
    """torchao's float8 dynamic-activation config. ``inductor_config="torchao"`` (its default)
    lets ``quantize_`` apply torchao's recommended Inductor settings, process-wide: coordinate
    descent tuning among them, which times kernel configs in each compile's first call (slower
    compiles, and kernel choices that follow timings); ``"torch"`` leaves torch's defaults."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor

    if inductor_config not in ("torchao", "torch"):
        raise ValueError(f"inductor_config: 'torchao' or 'torch', not {inductor_config!r}")
    return Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow() if granularity == "row" else PerTensor(), set_inductor_config=inductor_config == "torchao"
    )


def quantize(model: torch.nn.Module, granularity: str, use_config: bool = True, inductor_config: str = "torchao") -> str:
    """Quantize every linear: torchao's config where torchao supports the hardware (and
    ``use_config``), else torchao's quantization functions per linear. Returns what was done."""
    from torchao.quantization import quantize_

    config = torchao_config(granularity, inductor_config)
    refusal = "its linears have no backward (--grad)"
    if next(model.parameters()).device.type == "cpu":
        use_config, refusal = False, "torchao's float8 config needs CUDA sm_89+, MI300 or XPU, not a CPU"
    try:
        if use_config:
            quantize_(model, config)
            settings = "torchao's Inductor settings" if inductor_config == "torchao" else "torch's Inductor settings"
            return f"torchao Float8DynamicActivationFloat8WeightConfig({'PerRow' if granularity == 'row' else 'PerTensor'}), {settings}"
    except AssertionError as e:  # torchao's hardware check, raised before any linear is replaced
        refusal = f"torchao's config refuses this hardware ({str(e).splitlines()[0]})"
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, PrimitivesFP8Linear(child, granularity == "row"))
    return (f"not torchao's config: {refusal}. Each linear quantizes its activation with torchao's "
            f"_choose_scale_float8 + _quantize_affine_float8 ({granularity}-wise), then runs torch._scaled_mm "
            "(with autograd on: a matmul of the dequantized values)")  # fmt: skip


def load_checkpoint(path: Path, device: torch.device):
    """A compressed-tensors FP8 checkpoint through transformers, ready for torch.compile."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    with torch.no_grad():  # the first forward decompresses the weights (compressed-tensors' hook)
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    try:  # compressed-tensors >= 0.20 wraps each module for offloading: a graph break per module
        from compressed_tensors.offload import remove_dispatch

        remove_dispatch(model)
    except ImportError:
        pass
    schemes = set()
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if isinstance(module, torch.nn.Linear) and scheme is not None and scheme.input_activations is not None:
            module.forward = _ct_forward.__get__(module)
            a = scheme.input_activations
            schemes.add(f"{a.type} {a.num_bits}-bit {a.strategy} {'dynamic' if a.dynamic else 'static'}")
    return model, f"compressed-tensors checkpoint {path} (activations: {', '.join(sorted(schemes)) or 'none'})"


def _ct_forward(self, x: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' quantized forward for decompressed weights: the activation quantized
    and dequantized by the library's own function, then the linear. (Its own forward swaps the
    weight's ``.data`` around the call, which graph-breaks under torch.compile.)"""
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    x = forward_quantize(self, x, "input", self.quantization_scheme.input_activations)
    return torch.nn.functional.linear(x, self.weight, self.bias)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def compile_and_compare(model, ids: torch.Tensor, grad: bool = False) -> dict:
    """Eager, compiled without the plugin, compiled with native="always": the plugin's report and
    whether the outputs agree. With ``grad`` the forward runs with autograd on (as in training)."""
    mode = torch.enable_grad() if grad else torch.no_grad()
    with mode:
        eager = model(ids).logits
        torch._dynamo.reset()
        ref = torch.compile(model)(ids).logits
        fused = fusion_passes.compile(model, native="always")
        out = fused(ids).logits
    report = fusion_passes.report(fused)
    r_plugin, r_plain, r_between = rel(out, eager), rel(ref, eager), rel(out, ref)
    # A native rewrite moves rounding points (the README's "equivalent": one FP8 step on a few
    # elements per site); Inductor's own code differs from eager the same way. The plugin must
    # not make the compiled model worse than Inductor alone by more than that.
    ok = r_plugin <= 2 * r_plain + 1e-2
    return {"report": report, "ok": ok, "rel_plugin": r_plugin, "rel_plain": r_plain, "rel_between": r_between,
            "fused": report.fused, "refused": report.refused, "sites": [s.name for s in report.sites],
            "reasons": dict(report.refusals_per_reason())}  # fmt: skip


def norm_quant_sites(model) -> int:
    """RMSNorms whose output feeds quantized linears: two per decoder layer, and the final norm
    when the output head is quantized (torchao swaps the weight for its own tensor type)."""
    head = model.get_output_embeddings()
    quantized_head = not isinstance(head, torch.nn.Linear) or type(head.weight) is not torch.nn.Parameter
    quantized_head |= getattr(head, "quantization_scheme", None) is not None
    return 2 * model.config.num_hidden_layers + int(quantized_head)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--arch", choices=tuple(ARCHS), default="llama")
    parser.add_argument("--layers", type=int, help="decoder layers (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--hidden", type=int, help="shrink the model to this hidden size (default: 512 on CPU)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: 1024 on CPU, the model's on CUDA)")
    parser.add_argument("--granularity", choices=("row", "tensor"), default="row")
    parser.add_argument("--checkpoint", type=Path, help="load a compressed-tensors FP8 checkpoint instead")
    parser.add_argument("--tokens", type=int, default=16, help="tokens of the correctness check")
    parser.add_argument("--grad", action="store_true", help="run with autograd on (shows why nothing is fused)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-timing", action="store_true", help="on CUDA, skip the prefill/decode timings")
    parser.add_argument("--skip-check", action="store_true", help="skip the report and agreement check (timings only)")
    parser.add_argument("--time", default="prefill,decode", help="on CUDA: which timings (prefill, decode)")
    parser.add_argument("--prefill-batch", type=int, default=1)
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--batches", default="1,8,64", help="decode batch sizes")
    parser.add_argument("--context", type=int, default=1024, help="tokens in the KV cache when decoding")
    parser.add_argument(
        "--variants",
        default="without,always,auto",
        help="timed: without (the plugin), again (a second compile without it), or a native= value",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument(
        "--inductor-config",
        choices=("torchao", "torch"),
        default="torchao",
        help="on CUDA: torchao's recommended Inductor settings (its default: coordinate descent tuning) or torch's",
    )
    parser.add_argument(
        "--profile", action="store_true", help="on CUDA: GPU time shares of the compile without the plugin"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    _need_hf()
    device = torch.device(args.device)
    small = device.type == "cpu"
    if args.checkpoint is not None:
        model, how = load_checkpoint(args.checkpoint, device)
    else:
        layers = args.layers or (CPU_DEFAULTS["layers"] if small else 8)
        hidden = args.hidden or (CPU_DEFAULTS["hidden"] if small else None)
        vocab = args.vocab or (CPU_DEFAULTS["vocab"] if small else None)
        model = build_model(args.arch, layers, hidden, vocab, device)
        how = quantize(model, args.granularity, use_config=not args.grad, inductor_config=args.inductor_config)
    c = model.config
    print(f"model: {type(model).__name__}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"MLP {c.intermediate_size}, vocabulary {c.vocab_size}, bf16, random weights, on {device}")  # fmt: skip
    print(f"quantization: {how}")
    if small and args.checkpoint is None and args.hidden is None:
        print(f"(small defaults on CPU: hidden {CPU_DEFAULTS['hidden']}, {c.num_hidden_layers} layers; "
              f"--hidden/--layers/--vocab change them)")  # fmt: skip
    result = {"ok": True, "quantization": how}
    cannot_compile = platform.inductor_unavailable(device)
    if cannot_compile:
        print(f"nothing was fused: {cannot_compile}")
        args.skip_check = True
    if not args.skip_check:
        result.update(check(model, args, device))
    if device.type == "cuda" and not args.no_timing and not args.grad:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import hf_timing

        result["timing"] = hf_timing.run(model, args)
    if args.json:
        import json

        args.json.write_text(json.dumps(result, indent=1, default=str))
    if not result["ok"]:
        raise SystemExit(1)
    return result


def check(model, args, device: torch.device) -> dict:
    """The report of the compile with native="always", and whether the outputs agree."""
    gen = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=gen, device=device)
    result = compile_and_compare(model, ids, grad=args.grad)
    print(result["report"])
    expected = norm_quant_sites(model)
    print(f"\nnorm -> quantize sites: {result['fused']} of {expected} fused with native=\"always\""
          + (f" (refused: {', '.join(f'{n} {r}' for r, n in result['reasons'].items())})" if result["refused"] else ""))  # fmt: skip
    print(f"relative error of the logits vs eager: with the plugin {result['rel_plugin']:.2e}, without "
          f"{result['rel_plain']:.2e}; between the two compiled models {result['rel_between']:.2e}")  # fmt: skip
    print("outputs agree within the rounding-point tolerance" if result["ok"] else "OUTPUTS DIFFER")
    if result["fused"] == 0 and (args.grad or "intermediate_needed_for_backward" in result["reasons"]):
        print("autograd is on: the forward graph keeps the norm's intermediates for the backward pass, so the "
              "sites cannot be fused; run inference under torch.no_grad() or torch.inference_mode()")  # fmt: skip
    result.update(expected_sites=expected, report=str(result["report"]))
    return result


if __name__ == "__main__":
    main()
