# SPDX-License-Identifier: Apache-2.0
"""The HIP compile check: hipify the sources exactly as the loader does, compile every device
source for gfx942 and gfx90a with clang, and assert on the result: both targets in every
bundle, wavefront size 64, and MI300's FP8 conversion instruction in the gfx942 code.

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

ARCHS = ("gfx942", "gfx90a")
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
    plan = build.make_plan(build.Target("rocm", ARCHS), work / "build")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "obj").mkdir(exist_ok=True)
    (plan.out_dir / "build.ninja").write_text(plan.ninja_text())
    hip_objects = [str(o) for (_, srcfile, _), o in zip(plan.compile_cmds, plan.objects) if srcfile.suffix == ".hip"]
    assert len(hip_objects) == len(build.GPU_SOURCES), hip_objects
    run([build.find_ninja() or "ninja", "-C", str(plan.out_dir), "-j", str(os.cpu_count() or 2), *hip_objects])
    print(f"check_hip: hipified and compiled {len(hip_objects)} device sources for {', '.join(ARCHS)} "
          f"in {time.time() - start:.0f} s")  # fmt: skip

    # 1. Both targets in every offload bundle (the entry file dispatches on the host only).
    for obj in hip_objects:
        if "row_op_hip" in Path(obj).name:
            continue
        fatbin = work / (Path(obj).name + ".fatbin")
        run(["objcopy", f"--dump-section=.hip_fatbin={fatbin}", obj])
        if not fatbin.is_file():
            sys.exit(f"check_hip: {Path(obj).name} has no .hip_fatbin section")
        listing = run([bundler, "--list", "--type=o", f"--input={fatbin}"]).stdout
        for arch in ARCHS:
            if not re.search(rf"amdgcn-amd-amdhsa--{arch}\b", listing):
                sys.exit(f"check_hip: {Path(obj).name} has no {arch} code object:\n{listing}")

    # 2 and 3. The device assembly of the static-quant kernels: wave64 and the fnuz conversion.
    hip_src = plan.out_dir / "hip_src"
    static = hip_src / next(s for s in build.hip_gpu_sources() if "static" in s)
    common = ["-x", "hip", "-O3", "-std=c++17", *build.common_defines(), *build.hip_extra_flags(), f"-I{hip_src}",
              "--cuda-device-only", "-S"]  # fmt: skip
    procs = {arch: subprocess.Popen([clang, *common, f"--offload-arch={arch}", str(static), "-o", "-"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for arch in ARCHS}  # fmt: skip
    for arch, proc in procs.items():
        asm, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"check_hip: device assembly for {arch} failed:\n{err[-3000:]}")
        sizes = set(re.findall(r"\.wavefront_size:\s+(\d+)", asm))
        if sizes != {"64"}:
            sys.exit(f"check_hip: {arch} kernels report wavefront sizes {sizes or 'none'}, expected 64")
        kernels = len(re.findall(r"^\s*\.name:\s+_Z", asm, re.M))
        if arch == "gfx942":
            n = asm.count("v_cvt_pk_fp8_f32")
            if n == 0:
                sys.exit(
                    "check_hip: no v_cvt_pk_fp8_f32 in the gfx942 code: the fnuz path is not using MI300's FP8 conversion"
                )
            print(f"check_hip: gfx942: {kernels} kernels, wavefront 64, {n} v_cvt_pk_fp8_f32 instructions")
        else:
            print(f"check_hip: {arch}: {kernels} kernels, wavefront 64")
    print(f"check_hip: ok ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
