# SPDX-License-Identifier: Apache-2.0
"""A small Llama-style decoder with FP8 linears, compiled with and without the fusion_passes
plugin: what was fused, whether the outputs agree, and (on CUDA) the step time of both.

    python examples/llama_fp8.py                         # tiny, our unfused ops, CPU or CUDA
    python examples/llama_fp8.py --quant group128         # per-token-group (1x128) activations
    python examples/llama_fp8.py --form native           # plain torch, compiled with native="always"
    python examples/llama_fp8.py --hidden 4096 --layers 8 --tokens 2048 --quant per_token   # on a GPU

Each layer: RMSNorm -> QKV (FP8) -> scaled_dot_product_attention -> O (FP8) -> residual add ->
RMSNorm -> gate/up (FP8) -> SiLU * up -> down (FP8) -> residual add. Weights are random; the
FP8 linears go through torch._scaled_mm with static per-tensor, dynamic per-token or group-128
activation scales (--quant). The default form calls our unfused ops (torch.ops.fusion_kernels),
so the plugin's rewrite is visible on CPU too; --form native writes the norms and quantizers in
plain torch (fusion_passes.native_forms), which the plugin rewrites only with native="always"
(or where "auto"'s measured policy says ours is faster).

Without the compiled op library (FUSION_KERNELS_DISABLE=1, no C++ compiler, a failed build) it
runs the plain-torch form, says why nothing was fused, and still compares the two compiles.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import fusion_kernels
import fusion_passes
from fusion_kernels import platform
from fusion_passes import native_forms as nf

ops = torch.ops.fusion_kernels
_SCALED_MM_SUPPORT: dict[tuple[str, str], bool] = {}


def scaled_mm_supports(device: torch.device, scaling: str) -> bool:
    """Whether torch._scaled_mm takes row-wise ("rowwise": [M, 1] x [1, N]) or block
    ("blockwise": 1x128 activation, 128x128 weight) scales on this device and torch."""
    key = (str(device), scaling)
    if key not in _SCALED_MM_SUPPORT:
        try:
            fp8 = platform.fp8_dtype(device)
            a = torch.zeros(128, 256, device=device).to(fp8)
            b = torch.zeros(128, 256, device=device).to(fp8).t()
            if scaling == "rowwise":
                sa, sb = torch.ones(128, 1, device=device), torch.ones(1, 128, device=device)
            else:
                sa, sb = torch.ones(128, 2, device=device).t().contiguous().t(), torch.ones(2, 1, device=device)
            torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
            _SCALED_MM_SUPPORT[key] = True
        except Exception:
            _SCALED_MM_SUPPORT[key] = False
    return _SCALED_MM_SUPPORT[key]


class FP8Linear(torch.nn.Module):
    """y = dequant(q, x_scales) @ dequant(W)^T with an FP8 weight (per-tensor, per-channel or
    128x128 blocks to match the activation scheme)."""

    def __init__(self, in_f: int, out_f: int, quant: str, fp8: torch.dtype, gen: torch.Generator):
        super().__init__()
        self.quant, self.fp8 = quant, fp8
        fmax = platform.FP8_MAX[fp8]
        w = torch.randn(out_f, in_f, generator=gen) * in_f**-0.5
        if quant == "static":
            ws = w.abs().amax() / fmax
            wq = (w / ws).to(fp8)
            ws = ws.reshape(())
        elif quant == "per_token":
            ws = w.abs().amax(dim=1, keepdim=True) / fmax  # per output channel
            wq = (w / ws).to(fp8)
            ws = ws.t().contiguous()  # [1, out]
        else:  # 128x128 blocks
            blocks = w.reshape(out_f // 128, 128, in_f // 128, 128)
            ws = blocks.abs().amax(dim=(1, 3)) / fmax  # [out/128, in/128]
            wq = (blocks / ws[:, None, :, None]).reshape(out_f, in_f).to(fp8)
        self.register_buffer("weight", wq)
        self.register_buffer("weight_scale", ws.float())
        # Dequantized copy for where _scaled_mm lacks the activation's scaling.
        if quant == "group128":
            deq = wq.float().reshape(out_f // 128, 128, in_f // 128, 128) * ws[:, None, :, None]
        elif quant == "per_token":
            deq = wq.float() * ws.t()
        else:
            deq = wq.float() * ws
        self.register_buffer("weight_deq", deq.reshape(out_f, in_f).to(torch.bfloat16))

    def forward(self, q: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        shape = q.shape
        q2 = q.reshape(-1, shape[-1])
        if self.quant == "static":
            out = torch._scaled_mm(q2, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                   out_dtype=torch.bfloat16)  # fmt: skip
        elif self.quant == "per_token":
            if scaled_mm_supports(q.device, "rowwise"):
                out = torch._scaled_mm(q2, self.weight.t(), scale_a=x_scale.reshape(-1, 1),
                                       scale_b=self.weight_scale, out_dtype=torch.bfloat16)  # fmt: skip
            else:
                out = (q2.float() * x_scale.reshape(-1, 1)).to(torch.bfloat16) @ self.weight_deq.t()
        else:
            s = x_scale.reshape(q2.shape[0], -1)
            if scaled_mm_supports(q.device, "blockwise"):
                # cuBLAS's blockwise kernels want the row count (and so the column-major scale's
                # leading dimension) a multiple of 16: pad with zero rows, drop them after.
                rows = q2.shape[0]
                pad = -rows % 16
                if pad:
                    q2 = torch.cat([q2, q2.new_zeros(pad, q2.shape[1])])
                    s = torch.cat([s, s.new_ones(pad, s.shape[1])])
                out = torch._scaled_mm(q2, self.weight.t(), scale_a=s.t().contiguous().t(),
                                       scale_b=self.weight_scale.t(), out_dtype=torch.bfloat16)[:rows]  # fmt: skip
            else:
                x = (q2.float().reshape(q2.shape[0], -1, 128) * s[..., None]).reshape(q2.shape).to(torch.bfloat16)
                out = x @ self.weight_deq.t()
        return out.reshape(*shape[:-1], -1)


class Quantize:
    """The activation quantizer of one scheme, as our unfused ops or in plain torch."""

    def __init__(self, quant: str, form: str, fp8: torch.dtype, scale: float = 4.0):
        self.quant, self.form, self.fp8 = quant, form, fp8
        self.static_scale = scale / platform.FP8_MAX[fp8]

    def __call__(self, y: torch.Tensor, scale_buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.form == "ops":
            if self.quant == "static":
                return ops.static_scaled_fp8_quant(y, scale_buf, self.fp8), scale_buf
            if self.quant == "per_token":
                return ops.dynamic_per_token_scaled_fp8_quant(y, None, self.fp8)
            return ops.per_token_group_fp8_quant(y, 128, False, False, self.fp8)
        if self.quant == "static":
            return nf.quant_fp8_static(y, scale_buf, self.fp8), scale_buf
        if self.quant == "per_token":
            return nf.quant_fp8_per_token(y, self.fp8)
        return nf.quant_fp8_per_group(y, 128, self.fp8)


class RMSNorm(torch.nn.Module):
    """RMSNorm, optionally after the residual add (returns the new residual), as our unfused ops
    or in plain torch."""

    def __init__(self, hidden: int, form: str, gen: torch.Generator, eps: float = 1e-6):
        super().__init__()
        self.form, self.eps = form, eps
        self.weight = torch.nn.Parameter((1 + 0.1 * torch.randn(hidden, generator=gen)).bfloat16(), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.form == "ops":
            if residual is None:
                return ops.rms_norm(x, self.weight, self.eps), x
            return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x, residual = nf.add_residual(x, residual)
        else:
            residual = x
        return nf.rms_norm_hf(x, self.weight, self.eps), residual


class DecoderLayer(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, quant: str, form: str, fp8: torch.dtype, gen: torch.Generator):
        super().__init__()
        self.heads = heads
        inter = 2 * hidden
        # Named as in Hugging Face's Llama: the report names each site by its norm's module path.
        self.input_layernorm = RMSNorm(hidden, form, gen)
        self.post_attention_layernorm = RMSNorm(hidden, form, gen)
        self.qkv = FP8Linear(hidden, 3 * hidden, quant, fp8, gen)
        self.o = FP8Linear(hidden, hidden, quant, fp8, gen)
        self.gate_up = FP8Linear(hidden, 2 * inter, quant, fp8, gen)
        self.down = FP8Linear(inter, hidden, quant, fp8, gen)
        self.quantize = Quantize(quant, form, fp8)
        for name in ("s_qkv", "s_o", "s_gu", "s_down"):
            self.register_buffer(name, torch.tensor(self.quantize.static_scale))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h = x.shape
        y, residual = self.input_layernorm(x, residual)
        qkv = self.qkv(*self.quantize(y, self.s_qkv))
        q, k, v = qkv.view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, h)
        attn = self.o(*self.quantize(attn.contiguous(), self.s_o))
        y, residual = self.post_attention_layernorm(attn, residual)
        gate, up = self.gate_up(*self.quantize(y, self.s_gu)).chunk(2, dim=-1)
        act = (F.silu(gate) * up).contiguous()
        return self.down(*self.quantize(act, self.s_down)), residual


class TinyLlama(torch.nn.Module):
    def __init__(self, hidden, layers, heads, quant, form, fp8, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = torch.nn.ModuleList(DecoderLayer(hidden, heads, quant, form, fp8, gen) for _ in range(layers))
        self.final_norm = torch.nn.Parameter(torch.ones(hidden, dtype=torch.bfloat16), requires_grad=False)

    def forward(self, x):
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual)
        h = x + residual
        return nf.rms_norm_hf(h, self.final_norm, 1e-6)


def gpu_step_times(fns, x, steps=20) -> list[float]:
    """Median GPU time (ms, CUDA events) of one call of each of `fns`, the calls interleaved (A, B,
    A, B, ...) so that clock and thermal drift during the measurement affects them alike."""
    for _ in range(3):
        for fn in fns:
            fn(x)
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for _ in range(steps):
        for fn, ts in zip(fns, times):
            st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            st.record()
            fn(x)
            en.record()
            en.synchronize()
            ts.append(st.elapsed_time(en))
    return [statistics.median(ts) for ts in times]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--quant", choices=("static", "per_token", "group128"), default="static")
    parser.add_argument("--form", choices=("ops", "native"), default="ops")
    parser.add_argument(
        "--native",
        choices=("auto", "always", "never"),
        default=None,
        help='native policy (default: "always" with --form native, else "auto")',
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.hidden % 128 or args.hidden % args.heads:
        parser.error("--hidden must be a multiple of 128 and of --heads")

    state = fusion_kernels.load()
    if not state.loaded:
        # Without the library our unfused ops do not exist either: run the plain-torch form.
        print(f"note: the op library is unavailable ({state.reason}): the plugin fuses nothing"
              + ("; the model runs in plain torch (--form native)" if args.form == "ops" else ""))  # fmt: skip
        args.form = "native"
    device = torch.device(args.device)
    fp8 = platform.fp8_dtype(device)
    native = args.native or ("always" if args.form == "native" else "auto")
    if args.form == "native" and native == "always" and state.loaded:
        print('note: --form native compiles with native="always": plain-torch norms and quantizers are '
              "rewritten into our fused ops even where Inductor's own kernel may be as fast")  # fmt: skip
    needed = {"per_token": "rowwise", "group128": "blockwise"}.get(args.quant)
    if needed and not scaled_mm_supports(device, needed):
        print(f"note: torch._scaled_mm has no {needed} scaling on {device.type} in torch {torch.__version__}: "
              f"these linears dequantize and use a bf16 matmul")  # fmt: skip

    model = TinyLlama(args.hidden, args.layers, args.heads, args.quant, args.form, fp8).to(device)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(args.batch, args.tokens, args.hidden, generator=gen, device=device).to(torch.bfloat16)
    cannot_compile = platform.inductor_unavailable(device)
    if cannot_compile:
        with torch.no_grad():
            model(x)
        print(f"note: {cannot_compile}: the model ran eagerly, not compiled")
        print(f"nothing was fused: {cannot_compile}")
        return {"fused": 0, "refused": 0, "relative_error": 0.0, "ok": True, "sites": [], "report": ""}
    with torch.no_grad():
        eager = model(x)
        torch._dynamo.reset()
        plain = torch.compile(model)
        ref = plain(x)
        fused_model = fusion_passes.compile(model, native=native)
        out = fused_model(x)

    rep = fusion_passes.report(fused_model)
    print(rep)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    rel_plugin, rel_plain, rel_between = rel(out, eager), rel(ref, eager), rel(out, ref)
    print(f"\nrelative error vs eager: with the plugin {rel_plugin:.2e}, without {rel_plain:.2e}; "
          f"between the two compiled models {rel_between:.2e}")  # fmt: skip
    if args.form == "ops":
        # Our fused ops equal the unfused pairs bit for bit: the two compiled models must agree.
        ok = rel_between == 0.0
        verdict = "outputs agree bit for bit" if ok else "OUTPUTS DIFFER"
        if not ok:
            # On a GPU, two compiles of the model without the plugin can themselves differ in the
            # last bits (the kernels around our ops, chosen afresh by each compile). Compile it
            # once more, without caches: the plugin's output must equal the second, or differ from
            # the first by at most 4x what the two differ by (one sample of that variation).
            torch._dynamo.reset()
            plain = torch.compile(model)
            with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
                ref2 = plain(x)
            fused_model = fusion_passes.compile(model, native=native)
            rel_plain_runs = rel(ref2, ref)
            print(f"a second compile without the plugin differs from the first by {rel_plain_runs:.2e}, "
                  f"from the model with the plugin by {rel(out, ref2):.2e}")  # fmt: skip
            if torch.equal(out, ref2):
                ok, verdict = True, "outputs agree bit for bit (with the second compile without the plugin)"
            elif rel_plain_runs > 0 and rel_between <= 4 * rel_plain_runs:
                ok = True
                verdict = "outputs agree within the compile-to-compile variation of the model without the plugin"
    else:
        # A native rewrite changes rounding points (the README's "equivalent": one FP8 step on a few
        # elements); Inductor's own code differs from eager in the same way. The plugin must not
        # make the compiled model worse than Inductor alone by more than that.
        ok = rel_plugin <= 2 * rel_plain + 1e-2
        verdict = "outputs agree within the rounding-point tolerance" if ok else "OUTPUTS DIFFER"
    print(verdict)
    if rep.fused == 0:
        why = state.reason if not state.loaded else "; ".join(sorted(rep.refusals_per_reason())) or "no site matched"
        print(f"nothing was fused: {why}")
    result = {"fused": rep.fused, "refused": rep.refused, "relative_error": rel_plugin, "ok": ok,
              "sites": [s.name for s in rep.sites], "report": str(rep)}  # fmt: skip
    if device.type == "cuda":
        with torch.no_grad():
            t_plain, t_fused = gpu_step_times([plain, fused_model], x, args.steps)
        print(f"step time (median of {args.steps}, interleaved, CUDA events): without plugin {t_plain:.3f} ms, "
              f"with plugin {t_fused:.3f} ms ({t_plain / t_fused:.2f}x)")  # fmt: skip
        result.update(ms_without=t_plain, ms_with=t_fused)
    if not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
