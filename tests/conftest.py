# SPDX-License-Identifier: Apache-2.0
import os

import pytest
import torch

import fusion_kernels

# The GPU machine runs the same tests with device "cuda" added; CPU everywhere.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    # Each test session gets its own Inductor cache, so cache tests start cold and stay isolated.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusion_passes_inductor_")


@pytest.fixture(scope="session", autouse=True)
def library():
    """The op library, built (or taken from the cache) once per session; failing to load fails."""
    st = fusion_kernels.load(strict=True)
    assert st.loaded, st
    return st


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
        "fusion_kernels::rms_norm", "CUDA"
    ):
        pytest.fail("a CUDA device is present but the library has no CUDA kernels")
    return request.param


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
