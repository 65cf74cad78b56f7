# SPDX-License-Identifier: Apache-2.0
"""The HIP compile check: hipify the sources exactly as the loader does, compile every device
source for gfx942 with clang (the loader's build, offload bundles included), and the device code
of the sources that exercise every arch-dependent line (csrc/cuda/compat.cuh: the 8-bit, e5m2 and
e2m1 conversions; the warp shuffles) for gfx90a too, then assert on the result: gfx942 in every
bundle, wavefront size 64 on both, and MI300's FP8 conversion instruction in the gfx942 code.

The per-token and per-token-group sources are compiled for gfx942 only: they instantiate the same
templates over more parameters (1500 kernels), and the same code again for gfx90a would double the
check's time (about 25 minutes of 2 cores) without reaching a line the other sources do not.

No AMD GPU or ROCm install is needed: HIP headers and device libraries come from the .deb files
in .ci/rocm/ (unpacked into a temporary folder), the compiler from Debian's clang-19.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fusion_kernels import build

ARCH = "gfx942"  # every device source, as the loader builds it
#: Device assembly, wave64 and the FP8 instruction checked: gfx942 (MI300, FP8 conversions in
#: hardware: the static quant) and gfx90a (MI200, the HIP headers' software conversions: ASM_SOURCES).
ASM_ARCHS = ("gfx942", "gfx90a")
#: The device sources compiled for every arch of ASM_ARCHS: between them they call every
#: conversion of compat.cuh (e4m3fn, fnuz and int8 in the static quant; e5m2, e2m1 and the E8M0
#: and E4M3 block scales in the microscaling ones) and the row reductions.
ASM_SOURCES = ("static", "plain", "mx_hip_fp8", "mx_hip_fp4")
HERE = Path(__file__).resolve().parent


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"check_hip: {' '.join(cmd[:3])} ... failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    start = time.time()
    clang = os.environ.get("CLANG", "clang++-19")
    bundler = os.environ.get("CLANG_OFFLOAD_BUNDLER", "clang-offload-bundler-19")
    work = Path(tempfile.mkdtemp(prefix="fk_hip_"))
    rocm = work / "rocm"
    for deb in sorted((HERE / "rocm").glob("*.deb")):
        run(["dpkg", "-x", str(deb), str(rocm)])
    bitcode = next((rocm / "usr/lib").glob("llvm-*/lib/clang/*/amdgcn/bitcode"))
    os.environ["FUSION_KERNELS_HIPCC"] = clang
    os.environ["FUSION_KERNELS_HIP_FLAGS"] = f"--rocm-path={rocm / 'usr'} --rocm-device-lib-path={bitcode}"

    # The loader's own plan: hipify into the build folder, then the device objects only (linking
    # needs libamdhip64, which only a ROCm machine has).
    plan = build.make_plan(build.Target("rocm", (ARCH,)), work / "build")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "obj").mkdir(exist_ok=True)
    (plan.out_dir / "build.ninja").write_text(plan.ninja_text())
    hip_objects = [str(o) for (_, srcfile, _), o in zip(plan.compile_cmds, plan.objects) if srcfile.suffix == ".hip"]
    assert len(hip_objects) == len(build.GPU_SOURCES), hip_objects
    run([build.find_ninja() or "ninja", "-C", str(plan.out_dir), "-j", str(os.cpu_count() or 2), *hip_objects])
    print(f"check_hip: hipified and compiled {len(hip_objects)} device sources for {ARCH} in {time.time() - start:.0f} s")

    # 1. The target in every offload bundle (the entry file dispatches on the host only).
    for obj in hip_objects:
        if "row_op_hip" in Path(obj).name:
            continue
        fatbin = work / (Path(obj).name + ".fatbin")
        run(["objcopy", f"--dump-section=.hip_fatbin={fatbin}", obj])
        if not fatbin.is_file():
            sys.exit(f"check_hip: {Path(obj).name} has no .hip_fatbin section")
        listing = run([bundler, "--list", "--type=o", f"--input={fatbin}"]).stdout
        if not re.search(rf"amdgcn-amd-amdhsa--{ARCH}\b", listing):
            sys.exit(f"check_hip: {Path(obj).name} has no {ARCH} code object:\n{listing}")

    # 2 and 3. Device assembly of ASM_SOURCES for each arch of ASM_ARCHS: wave64 everywhere, and
    # the fnuz conversion instruction in the gfx942 code of the static quant.
    hip_src = plan.out_dir / "hip_src"
    sources = [s for s in build.hip_gpu_sources() if any(Path(s).stem == f"row_op_{n}" or Path(s).stem == n for n in ASM_SOURCES)]
    assert len(sources) == len(ASM_SOURCES), sources
    common = ["-x", "hip", "-O3", "-std=c++17", *build.common_defines(), *build.hip_extra_flags(), f"-I{hip_src}",
              "--cuda-device-only", "-S"]  # fmt: skip
    # (gfx942's objects were built above: its assembly of the static quant is enough here)
    jobs = [(arch, src) for src in sources for arch in ASM_ARCHS if arch != ARCH or "static" in src]
    asm_of: dict[tuple[str, str], str] = {}
    for i in range(0, len(jobs), os.cpu_count() or 2):
        procs = {job: subprocess.Popen([clang, *common, f"--offload-arch={job[0]}", str(hip_src / job[1]), "-o", "-"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for job in jobs[i : i + (os.cpu_count() or 2)]}  # fmt: skip
        for (arch, src), proc in procs.items():
            asm, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"check_hip: device assembly of {src} for {arch} failed:\n{err[-3000:]}")
            asm_of[arch, src] = asm
    for (arch, src), asm in asm_of.items():
        sizes = set(re.findall(r"\.wavefront_size:\s+(\d+)", asm))
        if sizes != {"64"}:
            sys.exit(f"check_hip: {arch} kernels of {src} report wavefront sizes {sizes or 'none'}, expected 64")
    for arch in ASM_ARCHS:
        compiled = [src for (a, src) in asm_of if a == arch]
        kernels = sum(len(re.findall(r"^\s*\.name:\s+_Z", asm, re.M)) for (a, _), asm in asm_of.items() if a == arch)
        static = next(asm for (a, src), asm in asm_of.items() if a == arch and "static" in src)
        if arch == "gfx942":
            n = static.count("v_cvt_pk_fp8_f32")
            if n == 0:
                sys.exit(
                    "check_hip: no v_cvt_pk_fp8_f32 in the gfx942 code: the fnuz path is not using MI300's FP8 conversion"
                )
            print(f"check_hip: gfx942: {kernels} kernels of {', '.join(compiled)}, wavefront 64, "
                  f"{n} v_cvt_pk_fp8_f32 instructions")  # fmt: skip
        else:
            print(f"check_hip: {arch}: {kernels} kernels of {', '.join(compiled)}, wavefront 64")
    print(f"check_hip: ok ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
