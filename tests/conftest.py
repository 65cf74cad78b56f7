# SPDX-License-Identifier: Apache-2.0
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import fusion_kernels

# `python -m pytest` puts the working directory on sys.path. Run from the repository root, the
# folder kernels/ (installed as fusion_kernels) would then be importable as `kernels` and shadow
# Hugging Face's `kernels` package, which transformers and compressed-tensors import when it is
# importable. The packages are installed; the repository root is not needed on the path.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

# The GPU machine runs the same tests with device "cuda" added; CPU everywhere.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


_INDUCTOR_CACHE: dict[str, str | None] = {}


def pytest_configure(config):
    # Each test session gets its own Inductor cache, also when the user has set
    # TORCHINDUCTOR_CACHE_DIR: tests must not fill (or be served from) a user's cache.
    _INDUCTOR_CACHE["previous"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    _INDUCTOR_CACHE["ours"] = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusion_passes_inductor_")


def pytest_unconfigure(config):
    # ... and removes it afterwards (about 20 MB a session).
    ours = _INDUCTOR_CACHE.pop("ours", None)
    if ours is not None:
        shutil.rmtree(ours, ignore_errors=True)
        previous = _INDUCTOR_CACHE.pop("previous", None)
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


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


@pytest.fixture
def fresh_inductor_cache():
    """An empty Inductor cache (on disk and in memory) for this test: cache tests start cold
    whatever ran before them."""
    from torch._inductor import utils

    fresh = getattr(utils, "fresh_cache", None) or utils.fresh_inductor_cache  # renamed in torch 2.8
    with fresh():
        yield
