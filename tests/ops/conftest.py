# SPDX-License-Identifier: Apache-2.0
import pytest
import torch


@pytest.fixture(autouse=True)
def _op_has_a_kernel_for_the_device(request):
    """A test of one op (parametrized by ``op_name``) on a device whose dispatch key the library
    registers no kernel for is skipped with that reason (the rule ops in a build with
    FK_GPU_RULE_OPS=0: csrc/bindings.cpp); an op missing altogether is left to the test to
    report."""
    params = getattr(request.node, "callspec", None)
    if params is None or "op_name" not in params.params:
        return
    on_cuda = params.params.get("device") == "cuda" or (
        "device" not in params.params and request.node.get_closest_marker("cuda") is not None
    )
    key = "CUDA" if on_cuda else "CPU"
    name = params.params["op_name"]
    if hasattr(torch.ops.fusion_kernels, name) and not torch._C._dispatch_has_kernel_for_dispatch_key(
        f"fusion_kernels::{name}", key
    ):
        pytest.skip(f"the library has no {key} kernel for {name}")
