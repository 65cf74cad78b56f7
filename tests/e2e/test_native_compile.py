# SPDX-License-Identifier: Apache-2.0
"""One full Inductor compile per native spelling: the catalogue works on real post-grad graphs."""

import pytest
import torch
import torch.utils._pytree as pytree

import fusion_passes
from fusion_kernels import platform
from fusion_kernels.testing import SCALE_RTOL, assert_quant_close, scale_mask
from fusion_passes import native_forms as nf


class HFRMSNorm(torch.nn.Module):
    """The Hugging Face Llama RMSNorm, verbatim in structure."""

    def __init__(self, hidden, eps=1e-6, dtype=torch.bfloat16):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden, dtype=dtype) + 0.1 * torch.randn(hidden).to(dtype))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class Block(torch.nn.Module):
    """Two pre-norm sublayers with residual adds, per-token FP8 quant after each norm."""

    def __init__(self, norm_kind, hidden, device, dtype=torch.bfloat16):
        super().__init__()

        def make():
            if norm_kind == "hf":
                return HFRMSNorm(hidden, dtype=dtype)
            return torch.nn.RMSNorm(hidden, eps=1e-6, dtype=dtype)

        self.norm1, self.norm2 = make(), make()
        self.fp8 = platform.fp8_dtype(device)

    def forward(self, x, residual):
        h, residual = nf.add_residual(x, residual)
        q1, s1 = nf.quant_fp8_per_token(self.norm1(h), self.fp8)
        # The second sub-layer's input must not depend on the first site's quantized output:
        # that output may legitimately differ by one FP8 step (the equivalence tolerance), which
        # the second site would then see amplified. A stand-in for the attention output:
        mid = x * 0.5
        h, residual = nf.add_residual(mid, residual)
        q2, s2 = nf.quant_fp8_per_group(self.norm2(h), 128, self.fp8)
        return q1, s1, q2, s2, residual


@pytest.mark.parametrize("norm_kind", ["hf", "nn.RMSNorm"])
def test_native_block_compiles_with_both_sites_fused(norm_kind, device, fresh_dynamo):
    torch.manual_seed(0)
    m = Block(norm_kind, 256, device).to(device)
    x = torch.randn(2, 8, 256, dtype=torch.bfloat16, device=device)
    r = torch.randn_like(x)
    torch._dynamo.mark_dynamic(x, 1)  # token dims may vary
    torch._dynamo.mark_dynamic(r, 1)
    with torch.no_grad():
        compiled = fusion_passes.compile(m, native="always")
        got = compiled(x, r)
        expected = m(x, r)
    rep = fusion_passes.report(compiled)
    assert rep.fused_ops() == {
        "fused_add_rms_norm_dynamic_per_token_quant": 1,
        "fused_add_rms_norm_per_token_group_quant": 1,
    }, rep
    got, expected = pytree.tree_leaves(got), pytree.tree_leaves(expected)
    for q, s, (gq, gs) in [(expected[0], expected[1], got[:2]), (expected[2], expected[3], got[2:4])]:
        torch.testing.assert_close(gs.float(), s.float(), rtol=SCALE_RTOL[torch.bfloat16], atol=0)
        assert_quant_close(gq.cpu(), q.cpu(), 0.05, same_scale=scale_mask(gs.cpu(), s.cpu(), q.shape))
    torch.testing.assert_close(got[-1], expected[-1], rtol=0, atol=0)
    # A new token count recompiles (or reuses the dynamic graph) and still fuses.
    with torch.no_grad():
        x2 = torch.randn(2, 5, 256, dtype=torch.bfloat16, device=device)
        compiled(x2, torch.randn_like(x2))
    assert rep.fused >= 2 and rep.refused == 0
