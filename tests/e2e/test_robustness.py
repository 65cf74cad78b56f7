# SPDX-License-Identifier: Apache-2.0
"""Enabling the plugin never breaks a model: threads, several option sets, chained passes,
training, recompiles, tensor parallelism, CUDA graphs."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import fusion_passes
from fusion_passes import native_forms as nf

ops = torch.ops.fusion_kernels
FP8 = torch.float8_e4m3fn


def custom_site(x, w, s):
    return ops.static_scaled_fp8_quant(ops.rms_norm(x, w, 1e-6), s, FP8)


def native_site(x, w, s):
    return nf.quant_fp8_static(nf.rms_norm_hf(x, w, 1e-6), s)


def _args(device="cpu", tokens=8):
    g = torch.Generator().manual_seed(tokens)
    return (torch.randn(tokens, 128, generator=g).to(device=device, dtype=torch.bfloat16),
            torch.ones(128, dtype=torch.bfloat16, device=device), torch.tensor(0.01, device=device))  # fmt: skip


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def test_compiling_from_a_worker_thread(fresh_dynamo):
    result = {}

    def work():
        c = fusion_passes.compile(custom_site)
        result["out"] = c(*_args())
        result["report"] = fusion_passes.report(c)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result["report"].fused == 1
    assert torch.equal(_bits(result["out"]), _bits(custom_site(*_args())))


def test_two_models_with_different_options_in_one_process(fresh_dynamo):
    always = fusion_passes.compile(native_site, native="always")
    never = fusion_passes.compile(lambda x, w, s: native_site(x, w, s) * 1, native="never")
    args = _args()
    always(*args)
    never(*args)
    assert fusion_passes.report(always).fused == 1
    assert fusion_passes.report(never).fused == 0
    assert fusion_passes.fusion_pass_of(always) is not fusion_passes.fusion_pass_of(never)


def test_a_users_post_grad_pass_is_chained_with_ours(fresh_dynamo):
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class CountingPass(CustomGraphPass):
        calls = 0

        def __call__(self, graph):
            CountingPass.calls += 1
            # sees the graph before our rewrite: the unfused ops are still there
            assert any("static_scaled_fp8_quant" in str(n.target) for n in graph.nodes)

        def uuid(self):
            return "counting-pass-v1"

    p = fusion_passes.FusionPass()
    opts = fusion_passes.inductor_options(p, options={"post_grad_custom_post_pass": CountingPass()})
    assert isinstance(opts["post_grad_custom_post_pass"], fusion_passes.ComposedPass)
    out = torch.compile(custom_site, options=opts)(*_args())
    assert CountingPass.calls == 1 and p.report.fused == 1
    assert torch.equal(_bits(out), _bits(custom_site(*_args())))


def test_a_training_step_keeps_correct_gradients(fresh_dynamo):
    """The normalized output is saved for backward (another user): refused cleanly, and the
    gradients of the unquantized path match eager."""

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(64) + 0.1 * torch.randn(64))
            self.proj = torch.nn.Parameter(torch.randn(64, 64) / 8)

        def forward(self, x, s):
            y = nf.rms_norm_hf(x, self.w, 1e-6)
            q = nf.quant_fp8_static(y.detach(), s)  # the quantized copy feeds an FP8 consumer
            return (y @ self.proj).square().mean(), q

    torch.manual_seed(0)
    m = Layer()
    x, s = torch.randn(8, 64), torch.tensor(0.01)
    loss, q = m(x, s)
    loss.backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    compiled = fusion_passes.compile(m, native="always")
    loss2, q2 = compiled(x, s)
    loss2.backward()
    for g, r in zip((p.grad for p in m.parameters()), ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    rep = fusion_passes.report(compiled)
    assert rep.fused == 0 and rep.refused >= 1, rep
    torch.testing.assert_close(q2.float(), q.float(), rtol=0.07, atol=0)


def test_recompiles_on_new_token_counts_keep_fusing(fresh_dynamo):
    c = fusion_passes.compile(custom_site, dynamic=False)
    for tokens in (4, 9, 33):
        out = c(*_args(tokens=tokens))
        assert out.shape[0] == tokens
    rep = fusion_passes.report(c)
    assert rep.fused == len(rep.graphs) >= 2


@pytest.mark.slow
def test_tensor_parallel_ranks_fuse_and_match_the_single_process_result(tmp_path):
    script = tmp_path / "tp.py"
    script.write_text(
        textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        import torch.distributed._functional_collectives as funcol
        import fusion_passes, fusion_kernels
        from fusion_passes import native_forms as nf

        def layer(partial, residual, w, group):
            # a row-parallel linear's partial sums are all-reduced before the norm (what tensor-
            # parallel inference engines produce), then residual add -> RMSNorm -> per-token quant
            full = funcol.all_reduce(partial, "sum", group) if group is not None else partial
            h, residual = nf.add_residual(full, residual)
            q, s = nf.quant_fp8_per_token(nf.rms_norm_hf(h, w, 1e-6))
            return q, s, residual

        torch.manual_seed(0)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        parts = [torch.randn(16, 128).bfloat16() for _ in range(2)]
        residual, w = torch.randn(16, 128).bfloat16(), (1 + 0.1 * torch.randn(128)).bfloat16()
        out_dir = sys.argv[1]
        if world == 1:
            q, s, r = layer(parts[0] + parts[1], residual, w, None)
            torch.save((q.view(torch.uint8), s, r), os.path.join(out_dir, "single.pt"))
        else:
            dist.init_process_group("gloo")
            rank = dist.get_rank()
            group = dist.group.WORLD
            c = fusion_passes.compile(layer, native="always")
            q, s, r = c(parts[rank], residual, w, group)
            rep = fusion_passes.report(c)
            torch.save((q.view(torch.uint8), s, r, rep.fused), os.path.join(out_dir, f"rank{rank}.pt"))
            dist.destroy_process_group()
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, env=env, timeout=600)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    q0, s0, r0 = torch.load(tmp_path / "single.pt")
    for rank in range(2):
        q, s, r, fused = torch.load(tmp_path / f"rank{rank}.pt")
        assert fused == 1, f"rank {rank} did not fuse"
        # bf16 sums of two partials are order-independent here (a + b == b + a): exact
        torch.testing.assert_close(r, r0, rtol=0, atol=0)
        torch.testing.assert_close(s, s0, rtol=1.6e-2, atol=0)
        steps = (q.view(torch.float8_e4m3fn).float() - q0.view(torch.float8_e4m3fn).float()).abs()
        assert float((steps > 0).float().mean()) <= 0.05


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reduce_overhead_cuda_graphs_give_the_same_results(fresh_dynamo):
    args = _args("cuda", tokens=16)
    c = fusion_passes.compile(custom_site, mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay
        out = c(*args)
    assert fusion_passes.report(c).fused == 1
    assert torch.equal(_bits(out), _bits(custom_site(*args)))
