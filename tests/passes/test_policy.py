# SPDX-License-Identifier: Apache-2.0
"""The native speed policy (fusion_passes/policy.py): which measurements decide on a device, for
measured devices, unmeasured devices of a measured arch, unmeasured archs and kinds, and CPUs
keyed by their instruction set. Platforms are faked through fusion_kernels.platform.override."""

import pytest
import torch

from fusion_kernels import platform
from fusion_passes import policy
from fusion_passes.quant_key import QuantKey, Scheme

STATIC = QuantKey(torch.float8_e4m3fn, Scheme.STATIC)
H100 = ("cuda", "sm_90", "NVIDIA H100 80GB HBM3")
H200 = ("cuda", "sm_90", "NVIDIA H200")


def gpu(arch="sm_90", name="NVIDIA H100 80GB HBM3", kind="cuda"):
    with platform.override(kind=kind, arch=arch, name=name):
        return platform.device_info("cuda")


def cpu(isa):
    with platform.override(isa=isa):
        return platform.device_info("cpu")


@pytest.fixture
def two_gpus(monkeypatch):
    """An H100 and an H200 measured: the H200 faster from 16 tokens, the H100 from 1024."""
    monkeypatch.setattr(policy, "MEASURED_DEVICES", {H100: "record a", H200: "record b"})
    monkeypatch.setattr(
        policy, "MEASURED_FASTER",
        {(*H100, "fp8_static", False): ((1, 1), (1024, None)), (*H200, "fp8_static", False): ((16, None),)},
    )  # fmt: skip


def allowed(info, tokens, key=STATIC, residual=False):
    return policy.native_rewrite_allowed("auto", info, key, residual, tokens)[0]


def test_platform_names_the_device_and_the_cpu_instruction_set():
    assert platform.device_info("cpu").isa == platform.cpu_isa() == torch.backends.cpu.get_cpu_capability()
    assert platform.device_info("cpu").name == platform.cpu_model()
    assert cpu("AVX2").isa == "AVX2"
    info = gpu(name="NVIDIA H200")
    assert (info.kind, info.arch, info.name) == H200
    with platform.override(kind="cuda", arch="sm_90", name="NVIDIA H200"):
        assert platform.device_info("cpu").name == platform.cpu_model()  # a GPU's name is not the CPU's


def test_each_measured_gpu_uses_its_own_rows(two_gpus):
    assert [allowed(gpu(), t) for t in (1, 16, 128, 1024)] == [True, False, False, True]
    assert [allowed(gpu(name="NVIDIA H200"), t) for t in (1, 16, 128, 1024)] == [False, True, True, True]
    assert "measured (record b)" in policy.basis(gpu(name="NVIDIA H200")).why


def test_an_unmeasured_device_of_a_measured_arch_takes_the_worst_of_them(two_gpus):
    pcie = gpu(name="NVIDIA H100 PCIe")
    assert policy.ranges_for(policy.basis(pcie), "fp8_static", False) == ((1024, None),)
    assert [allowed(pcie, t) for t in (1, 16, 1024, 16384)] == [False, False, True, True]
    # A scheme one measured device never won is never rewritten on the unmeasured one.
    assert not allowed(pcie, 4096, residual=True)
    with platform.override(kind="cuda", arch="sm_90", name="NVIDIA H100 PCIe"):
        line = policy.describe("auto", "cuda")
    assert line.startswith("auto: cuda sm_90 NVIDIA H100 PCIe: this device was not measured: the worst of")
    assert "NVIDIA H100 80GB HBM3" in line and "NVIDIA H200" in line


def test_an_unmeasured_arch_takes_the_worst_of_its_kind_from_1024_tokens(two_gpus):
    l40s = gpu(arch="sm_89", name="NVIDIA L40S")
    assert policy.ranges_for(policy.basis(l40s), "fp8_static", False) == ((1024, None),)
    assert [allowed(l40s, t) for t in (1, 16, 1023, 1024)] == [False, False, False, True]
    with platform.override(kind="cuda", arch="sm_89", name="NVIDIA L40S"):
        line = policy.describe("auto", "cuda")
    assert "sm_89 was not measured" in line and f"from {policy.UNMEASURED_ARCH_MIN_TOKENS} tokens on" in line


def test_a_kind_without_measurements_is_never_rewritten(two_gpus):
    mi300 = gpu(kind="rocm", arch="gfx942", name=None)
    assert policy.basis(mi300).devices == ()
    assert policy.native_rewrite_allowed("auto", mi300, STATIC, False, 4096) == (False, "native_policy_not_faster")
    with platform.override(kind="rocm", arch="gfx942"):
        assert "no rocm device was measured" in policy.describe("auto", "cuda")
    assert policy.native_rewrite_allowed("always", mi300, STATIC, False, 4096) == (True, "")


def test_cpu_rows_are_keyed_by_instruction_set(monkeypatch):
    avx512, avx2 = ("cpu", "AVX512", ""), ("cpu", "AVX2", "")
    monkeypatch.setattr(policy, "MEASURED_DEVICES", {avx512: "a", avx2: "b"})
    monkeypatch.setattr(policy, "MEASURED_FASTER", {(*avx512, "fp8_static", False): ((1, 16),),
                                                    (*avx2, "fp8_static", False): ((1, None),)})  # fmt: skip
    assert policy.platform_key(cpu("AVX2")) == avx2
    assert [allowed(cpu("AVX512"), t) for t in (1, 16, 128)] == [True, True, False]
    assert [allowed(cpu("AVX2"), t) for t in (1, 16, 128)] == [True, True, True]
    # Another instruction set: the worst of the measured ones, from 1024 tokens on (none here).
    assert policy.ranges_for(policy.basis(cpu("SVE256")), "fp8_static", False) == ()


def test_the_package_table_rewrites_nothing_native_on_cpu():
    """BENCHMARKS.md "CPU": ours never measured at least as fast as Inductor's C++, whatever the
    instruction set, so "auto" leaves native code to Inductor on every CPU."""
    keys = [QuantKey(torch.float8_e4m3fn, s) for s in (Scheme.STATIC, Scheme.PER_TOKEN)]
    keys += [QuantKey(torch.float8_e4m3fn, Scheme.PER_GROUP, g) for g in (64, 128)]
    keys += [QuantKey(torch.int8, s) for s in (Scheme.STATIC, Scheme.PER_TOKEN)]
    for isa in ("AVX512", "AVX2", "DEFAULT", "SVE256", platform.cpu_isa()):
        for key in keys:
            for residual in (False, True):
                assert not any(allowed(cpu(isa), t, key, residual) for t in (1, 16, 128, 1024, 16384))
    assert "ours was never at least as fast there" in policy.describe("auto", "cpu")


def test_describe_says_the_mode():
    assert policy.describe("always").startswith("always")
    assert policy.describe("never").startswith("never")
    assert policy.describe("auto", "cpu").startswith(f"auto: cpu {platform.cpu_isa()}: ")
