# SPDX-License-Identifier: Apache-2.0
"""fx_utils: where a site is (module path of its norm, the user's source line)."""

import pytest
import torch
import torch.fx as fx

from fusion_passes import fx_utils

ops = torch.ops.fusion_kernels


@pytest.mark.parametrize(
    "dynamo_path, expected",
    [
        ("L['self'].layers.3.post_attention_layernorm", "layers.3.post_attention_layernorm"),
        ("L['self'].layers[3].post_attention_layernorm", "layers.3.post_attention_layernorm"),
        ("L['self']._modules['model']._modules['layers']['3']", "model.layers.3"),
        ("L['self']", ""),
        ("L['mod'].norm", "norm"),
    ],
)
def test_module_paths_are_relative_to_the_compiled_module(dynamo_path, expected):
    assert fx_utils._normalize_module_path(dynamo_path) == expected


def _trace(user_file: str, helper_file: str) -> str:
    return (
        '  File "/x/torch/nn/modules/module.py", line 1, in _call_impl\n    return forward_call(*args)\n'
        f'  File "{user_file}", line 42, in forward\n    y = quantize(self.norm(x))\n'
        f'  File "{helper_file}", line 7, in quantize\n    return (y / s).to(fp8)\n'
    )


def test_a_site_is_named_after_its_norms_module_and_the_users_line():
    g = fx.Graph()
    x, w, s = g.placeholder("x"), g.placeholder("w"), g.placeholder("s")
    norm = g.call_function(ops.rms_norm.default, (x, w, 1e-6))
    q = g.call_function(ops.static_scaled_fp8_quant.default, (norm, s, torch.float8_e4m3fn))
    norm.meta["nn_module_stack"] = {
        "a": ("L['self'].layers.0", torch.nn.Module),
        "b": ("L['self'].layers.0.input_layernorm", torch.nn.Module),
    }
    q.meta["nn_module_stack"] = {"a": ("L['self'].layers.0", torch.nn.Module)}
    # The quantizer sits in a helper of this package: its caller's line names the site.
    helper = fx_utils.__file__.replace("fx_utils.py", "native_forms.py")
    q.meta["stack_trace"] = _trace("/home/u/model.py", helper)
    loc = fx_utils.source_line(q)
    assert loc.module == "layers.0.input_layernorm"
    assert loc == "model.py:42 (forward): y = quantize(self.norm(x))"
    # A helper of the user's own is the user's line.
    q.meta["stack_trace"] = _trace("/home/u/model.py", "/home/u/quant.py")
    assert fx_utils.source_line(q) == "quant.py:7 (quantize): return (y / s).to(fp8)"
    # No norm upstream and no module stack: nothing to name it by but its node.
    assert fx_utils.source_line(x).module == "" and fx_utils.source_line(x) == ""
