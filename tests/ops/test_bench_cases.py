# SPDX-License-Identifier: Apache-2.0
"""The kernel benchmark's cases compute what they claim: for every case, our fused op, our
unfused pair and the plain-torch function that Inductor compiles pass the benchmark's own check
against the reference (on CPU tensors: the check is the one the GPU run makes before timing)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)  # its dataclasses and imports look it up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return _load("bench_cases", monkeypatch), _load("bench_timing", monkeypatch)


def test_every_case_passes_the_benchmark_check(bench):
    cases, timing = bench
    g = torch.Generator().manual_seed(0)
    for name in cases.CASE_NAMES:
        cell = cases.Cell(name, 512, 33)
        x = torch.randn(33, 512, generator=g).to(cases.DTYPE)
        r = torch.randn(33, 512, generator=g).to(cases.DTYPE)
        w = (1 + 0.2 * torch.randn(512, generator=g)).to(cases.DTYPE)
        s = torch.tensor(4.0 / (127.0 if "int8" in name else 448.0))
        fused, unfused = cases.ours_fns(cell)
        for variant, fn in (("fused", fused), ("unfused", unfused), ("eager", cases.native_fn(cell))):
            timing.check(cell, variant, fn(x, r, w, s), x, r, w, s)
        assert cases.min_bytes(cell) >= 33 * 512 * 3


def test_the_neighbour_benchmark_steps_compute_the_op(bench, monkeypatch, fresh_dynamo):
    """bench_neighbour.py's model step (FP8 matmul, the op, FP8 matmul) with our op and with
    Inductor's compile in the middle: both pass the benchmark's check, on CPU (two compiles)."""
    neighbour = _load("bench_neighbour", monkeypatch)
    neighbour.check("cpu", ["static+res", "group128"])
