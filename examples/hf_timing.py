# SPDX-License-Identifier: Apache-2.0
"""Prefill and decode step times for ``hf_torchao.py`` on CUDA: the model compiled without the
plugin, with ``native="always"`` and with the default ``native="auto"``, in one process, timed
interleaved (A, B, C, A, B, C, ...) with CUDA events so that clock drift affects them alike.

* prefill: ``batch x tokens`` prompt tokens, no KV cache, logits for the last token only (as
  ``generate`` computes them), default compile mode;
* decode: one token per sequence for batch 1, 8, 64 against a static KV cache holding
  ``--context`` tokens, compiled with ``mode="reduce-overhead"`` (CUDA graphs).

``--profile`` also splits the GPU time of the compile without the plugin into kernel classes
(torch.profiler, default mode, no CUDA graphs): the share of the RMSNorm kernels (with the
quantization Inductor fused into them) bounds what fusing them can gain; and for decode it lists
each variant's kernels under its CUDA graphs against the compile without the plugin (launches and
GPU time per step, the kernels that differ most).
"""

from __future__ import annotations

import statistics

import torch

import fusion_passes

# Kernel classes by name: Inductor names a fused kernel after the aten ops in it (an RMSNorm
# kernel contains rsqrt); ours are row_op_kernel instances.
KERNEL_CLASSES = [
    ("rmsnorm (+ fused quant)", ("rsqrt", "row_op_kernel")),
    ("other activation quant", ("amax", "clamp")),
    ("matmul", ("gemm", "sm90", "sm80", "cutlass", "nvjet", "xmma", "scaled_mm", "cublas")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
]


#: Variants without the plugin: ``again`` is a second, separate compile of the same model, whose
#: difference from ``without`` is the compile-to-compile floor (Inductor's autotuning, which
#: torchao's recommended settings turn on, picks kernel configs from timings).
PLAIN = ("without", "again")


def compile_variant(model, variant: str, **kwargs):
    if variant in PLAIN:
        return torch.compile(model, **kwargs)
    return fusion_passes.compile(model, native=variant, **kwargs)


def gpu_times(calls: dict, steps: int, mark_steps: bool = False) -> dict[str, float]:
    """Median GPU time (ms) of one call of each, interleaved."""
    for _ in range(3):
        for call in calls.values():
            if mark_steps:
                torch.compiler.cudagraph_mark_step_begin()
            call()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            if mark_steps:
                torch.compiler.cudagraph_mark_step_begin()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: statistics.median(ts) for name, ts in times.items()}


def site_summary(compiled) -> str:
    rep = fusion_passes.report(compiled)
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(rep.refusals_per_reason().items()))
    return f"{rep.fused} fused, {rep.refused} refused" + (f" ({reasons})" if reasons else "")


def profile_shares(call, steps: int = 5) -> dict[str, float]:
    """Share of GPU kernel time per kernel class over ``steps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            call()
        torch.cuda.synchronize()
    per_class: dict[str, float] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name.lower()
        cls = next((c for c, keys in KERNEL_CLASSES if any(k in name for k in keys)), "other")
        per_class[cls] = per_class.get(cls, 0.0) + e.time_range.elapsed_us()
    total = sum(per_class.values()) or 1.0
    return {c: t / total for c, t in sorted(per_class.items(), key=lambda kv: -kv[1])}


def kernel_times(call, steps: int = 5, mark_steps: bool = False) -> dict[str, tuple[float, float]]:
    """GPU time (µs) and launches per step of every kernel name over ``steps`` calls of ``call``
    (CUDA graph replays included: the profiler sees the kernels a graph launches)."""
    from torch.profiler import ProfilerActivity, profile

    if mark_steps:
        torch.compiler.cudagraph_mark_step_begin()
    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            if mark_steps:
                torch.compiler.cudagraph_mark_step_begin()
            call()
        torch.cuda.synchronize()
    events = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return per_step(events, steps)


def per_step(events, steps: int) -> dict[str, tuple[float, float]]:
    """(name, µs) events -> name: (µs per step, launches per step)."""
    out: dict[str, list[float]] = {}
    for name, us in events:
        t = out.setdefault(name, [0.0, 0.0])
        t[0] += us / steps
        t[1] += 1.0 / steps
    return {n: (t[0], t[1]) for n, t in out.items()}


def kernel_diff(base: dict, other: dict, top: int = 6) -> list[str]:
    """Lines comparing two kernel_times tables: totals, then the kernels whose time per step
    differs most."""
    tb, tk = sum(t for t, _ in base.values()), sum(t for t, _ in other.values())
    nb, nk = sum(n for _, n in base.values()), sum(n for _, n in other.values())
    lines = [f"kernels per step {nk:.0f} (without the plugin {nb:.0f}), GPU time {tk:.1f} us ({tk - tb:+.1f} us)"]
    names = set(base) | set(other)
    delta = sorted(names, key=lambda n: -abs(other.get(n, (0.0, 0.0))[0] - base.get(n, (0.0, 0.0))[0]))
    for n in delta[:top]:
        b, k = base.get(n, (0.0, 0.0)), other.get(n, (0.0, 0.0))
        lines.append(f"  {k[0] - b[0]:+8.1f} us  {b[0]:8.1f} -> {k[0]:8.1f} us  x{k[1]:.0f}  {n[:90]}")
    return lines


def _rows(phase: str, batch: int, tokens: int, times: dict[str, float], sites: dict[str, str]) -> list[dict]:
    base = times.get("without")
    rows = []
    for v, ms in times.items():
        rows.append({"phase": phase, "batch": batch, "tokens": tokens, "variant": v, "ms": ms,
                     "tokens_per_s": tokens / ms * 1e3, "speedup": base / ms if base else None,
                     "sites": sites.get(v, "")})  # fmt: skip
        extra = f"  {base / ms:.3f}x" if base and v != "without" else ""
        print(f"  {phase:7s} batch {batch:3d}  {v:8s} {ms:9.3f} ms  {tokens / ms * 1e3:12.0f} tokens/s{extra}"
              + (f"   sites: {sites[v]}" if v in sites else ""), flush=True)  # fmt: skip
    return rows


def prefill(model, variants, batch: int, tokens: int, steps: int, profile: bool) -> tuple[list[dict], dict]:
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), device=device)
    torch._dynamo.reset()
    fns = {v: compile_variant(model, v, dynamic=False) for v in variants}
    calls = {v: (lambda f=f: f(input_ids=ids, use_cache=False, logits_to_keep=1)) for v, f in fns.items()}
    with torch.no_grad():
        times = gpu_times(calls, steps)
        shares = profile_shares(calls["without"]) if profile and "without" in calls else {}
    sites = {v: site_summary(f) for v, f in fns.items() if v not in PLAIN}
    return _rows("prefill", batch, batch * tokens, times, sites), shares


def decode(model, variants, batch: int, context: int, steps: int, profile: bool) -> tuple[list[dict], dict]:
    from transformers import StaticCache

    device = next(model.parameters()).device
    # Recent transformers write each step at the cache's own running length (not cache_position):
    # every call, timed or not, takes a slot. Room for all of them; a static cache attends over
    # its whole length (masked), so a step's work does not depend on the slot.
    calls = len(variants) * (steps + 8) + 16
    cache = StaticCache(config=model.config, max_cache_len=context + calls)
    prompt = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)  # fills the cache
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
    pos = torch.tensor([context], device=device)

    def step(f):
        return lambda: f(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True)

    shares = {}
    if profile and "without" in variants:
        torch._dynamo.reset()
        with torch.no_grad():
            shares = profile_shares(step(compile_variant(model, "without", dynamic=False)))
    torch._dynamo.reset()
    fns = {v: compile_variant(model, v, mode="reduce-overhead", dynamic=False) for v in variants}
    with torch.no_grad():
        times = gpu_times({v: step(f) for v, f in fns.items()}, steps, mark_steps=True)
        if profile and "without" in fns:
            # Each variant's kernels under its CUDA graphs, against the compile without the plugin:
            # where a difference in step time comes from (kernels, or time between them).
            tables = {v: kernel_times(step(f), mark_steps=True) for v, f in fns.items()}
            for v in fns:
                if v != "without":
                    print(f"  decode batch {batch} {v}: " + "\n".join(kernel_diff(tables["without"], tables[v])), flush=True)
    sites = {v: site_summary(f) for v, f in fns.items() if v not in PLAIN}
    return _rows("decode", batch, batch, times, sites), shares


def run(model, args) -> dict:
    variants = [v for v in args.variants.split(",") if v]
    phases = {p for p in args.time.split(",") if p}
    print(f"\ntimings on {torch.cuda.get_device_name()} (torch {torch.__version__}), median of {args.steps} "
          f"interleaved steps, CUDA events; variants: {', '.join(variants)}", flush=True)  # fmt: skip
    rows, shares = [], {}
    if "prefill" in phases:
        r, s = prefill(model, variants, args.prefill_batch, args.prefill_tokens, args.steps, args.profile)
        rows += r
        shares["prefill"] = s
    if "decode" in phases:
        for b in [int(x) for x in args.batches.split(",") if x]:
            r, s = decode(model, variants, b, args.context, args.steps, args.profile)
            rows += r
            if s:
                shares[f"decode batch {b}"] = s
    for what, s in shares.items():
        if s:
            print(f"  GPU time shares without the plugin, {what}: "
                  + ", ".join(f"{c} {100 * f:.1f}%" for c, f in s.items()))  # fmt: skip
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows, "shares": shares}
