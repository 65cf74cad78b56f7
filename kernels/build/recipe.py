# SPDX-License-Identifier: Apache-2.0
"""The one recipe: compiler flags, the build plan, its ``build.ninja``, running it.

The JIT build, ``python -m fusion_kernels build``, CI's compile checks and the wheel's prebuilt
libraries all build through :func:`build`:

* C++ against the LibTorch stable ABI, pinned to torch 2.11's API with ``TORCH_TARGET_VERSION``,
  so one library serves torch 2.11 through 2.13;
* CUDA sources added for CUDA targets (nvcc, ``-gencode`` per arch plus PTX of the newest),
  HIP for ROCm targets (hipified into the build directory, see :mod:`.hipify`);
* a ``build.ninja`` per build directory, run by ninja. A failed build writes everything it
  printed to a log file and raises a :class:`BuildError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import torch

from fusion_kernels.build import hipify, toolchain
from fusion_kernels.build.errors import COMPILE_HINT, BuildError, summarize, write_log
from fusion_kernels.build.sources import (
    CPU_SOURCES,
    GPU_SOURCES,
    LIB_NAME,
    Target,
    parse_targets,
    source_dir,
    source_hash,
)

#: The stable-ABI API level the library is compiled against (torch 2.11), see
#: torch/csrc/stable/version.h. A library built against newer headers runs on 2.11 and later.
TORCH_TARGET_VERSION = (2, 11)
TORCH_TARGET_VERSION_HEX = "0x{:02X}{:02X}000000000000".format(*TORCH_TARGET_VERSION)


def common_defines() -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION_HEX}", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]


def cuda_gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """Machine code for every arch (suffixed ones, ``sm_100a`` / ``sm_120f``, with their own
    features), plus PTX of the newest unsuffixed arch, so a newer GPU can still JIT the kernels
    (arch- and family-specific PTX does not run on later archs)."""
    from fusion_kernels.platform import parse_cuda_arch

    parsed = [parse_cuda_arch(a) for a in archs]
    flags = [f"-gencode=arch=compute_{a.number},code=sm_{a.number}" for a in parsed]
    plain = [a for a in parsed if not a.suffix]
    if plain:
        num = max(plain, key=lambda a: (a.major, a.minor)).number
        flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


@dataclasses.dataclass
class Plan:
    """A build as ninja sees it: compile edges, one link edge."""

    target: Target
    out_dir: Path
    src: Path
    compile_cmds: list[tuple[str, Path, list[str]]]  # (rule, source, command line)
    link_cmd: list[str]
    objects: list[Path]

    def ninja_text(self) -> str:
        def q(args: list[str]) -> str:
            return " ".join(_ninja_escape(a) for a in args)

        lines = ["ninja_required_version = 1.3", ""]
        for i, (_, _, cmd) in enumerate(self.compile_cmds):
            # The compiler's header dependencies (-MD -MF $out.d), so a changed header recompiles
            # what includes it when a build directory is reused.
            lines += [f"rule cc{i}", f"  command = {q(cmd)}", "  depfile = $out.d", "  deps = gcc",
                      "  description = compile $out", ""]  # fmt: skip
        lines += ["rule link", f"  command = {q(self.link_cmd)}", "  description = link $out", ""]
        for i, (_, srcfile, _) in enumerate(self.compile_cmds):
            lines.append(f"build {_ninja_path(self.objects[i])}: cc{i} {_ninja_path(srcfile)}")
        objs = " ".join(_ninja_path(o) for o in self.objects)
        lines.append(f"build {_ninja_path(self.out_dir / LIB_NAME)}: link {objs}")
        lines.append(f"default {_ninja_path(self.out_dir / LIB_NAME)}")
        return "\n".join(lines) + "\n"


def _ninja_path(p: Path) -> str:
    return str(p).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _ninja_escape(arg: str) -> str:
    arg = arg.replace("$", "$$")
    if any(c in arg for c in " \"'"):
        return "'" + arg.replace("'", "'\\''") + "'"
    return arg


def make_plan(
    target: Target, out_dir: Path, src: Path | None = None, debug: bool = False, defines: tuple[str, ...] = ()
) -> Plan:
    """The build of ``target`` into ``out_dir``. ``defines`` ("NAME=VALUE") are for tuning builds."""
    src = src or source_dir()
    out_dir = Path(out_dir).resolve()
    inc, lib = toolchain.torch_dirs()
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = common_defines() + [f"-D{d}" for d in defines]
    gpu_define = {"cuda": ["-DFK_WITH_CUDA"], "rocm": ["-DFK_WITH_CUDA", "-DUSE_ROCM"]}.get(target.kind, [])
    cxx = toolchain.find_cxx() or "c++"
    cmds: list[tuple[str, Path, list[str]]] = []
    objects: list[Path] = []
    obj_dir = out_dir / "obj"

    def obj_for(rel: str) -> Path:
        return obj_dir / (rel.replace("/", "_") + ".o")

    def deps(o: Path) -> list[str]:  # the header dependencies, for ninja (Plan.ninja_text)
        return ["-MD", "-MF", f"{o}.d"]

    for rel in CPU_SOURCES:
        o = obj_for(rel)
        cmd = [cxx, *opt, "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", *defines, *gpu_define,
               f"-I{src}", f"-I{inc}", *deps(o), "-c", str(src / rel), "-o", str(o)]  # fmt: skip
        cmds.append(("cxx", src / rel, cmd))
        objects.append(o)

    link_extra: list[str] = []
    if target.kind == "cuda":
        nvcc = toolchain.find_nvcc()
        if nvcc is None:
            raise BuildError("nvcc not found", "Set CUDA_HOME or put nvcc on PATH, or build for --target cpu.")
        for rel in GPU_SOURCES:
            o = obj_for(rel)
            # -Xfatbin=-compress-all: the device code compressed in every object (nvcc's default
            # compresses some and not others: a library 1.7x larger after the group kernels were
            # split into smaller translation units); decompressed once when a module loads.
            cmd = [nvcc, *opt, "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                   "-Xfatbin=-compress-all", *cuda_gencode_flags(target.archs), *defines, "-DFK_WITH_CUDA", f"-I{src}",
                   *deps(o), "-c", str(src / rel), "-o", str(o)]  # fmt: skip
            cmds.append(("nvcc", src / rel, cmd))
            objects.append(o)
        link_extra = [f"-L{toolchain.cuda_lib_dir(nvcc)}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    elif target.kind == "rocm":
        hipcc = toolchain.find_hip_compiler()
        if hipcc is None:
            raise BuildError("no HIP compiler found", "Install hipcc, or set FUSION_KERNELS_HIPCC to a HIP compiler.")
        hip_src = hipify.hipify_sources(src, out_dir / "hip_src")
        # The host files that include the CUDA entry point come out of hipify renamed.
        cmds, objects = [], []
        for rel in hipify.hip_cpu_sources(hip_src):
            o = obj_for(rel)
            cmd = [cxx, *opt, "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", *defines, *gpu_define,
                   f"-I{hip_src}", f"-I{inc}", *deps(o), "-c", str(hip_src / rel), "-o", str(o)]  # fmt: skip
            cmds.append(("cxx", hip_src / rel, cmd))
            objects.append(o)
        for rel in hipify.hip_gpu_sources():
            o = obj_for(rel)
            cmd = [hipcc, "-x", "hip", *opt, "-std=c++17", "-fPIC", *hipify.hip_offload_flags(target.archs),
                   *defines, *hipify.hip_extra_flags(), f"-I{hip_src}", *deps(o), "-c", str(hip_src / rel),
                   "-o", str(o)]  # fmt: skip
            cmds.append(("hipcc", hip_src / rel, cmd))
            objects.append(o)
        rocm = os.environ.get("ROCM_PATH", "/opt/rocm")
        link_extra = [f"-L{Path(rocm) / 'lib'}", "-lamdhip64"]

    link = [cxx, "-shared", *[str(o) for o in objects], "-o", str(out_dir / LIB_NAME), f"-L{lib}",
            "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", *link_extra]  # fmt: skip
    return Plan(target, out_dir, src, cmds, link, objects)


def run_plan(plan: Plan, jobs: int | None = None, verbose: bool = False, log_path: Path | None = None) -> Path:
    """Compile and link; returns the library path. On failure the whole output goes to
    ``log_path`` (default: ``build.log`` in the build directory) and the error names that file."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "obj").mkdir(exist_ok=True)
    ninja_file = plan.out_dir / "build.ninja"
    ninja_file.write_text(plan.ninja_text())
    ninja = toolchain.find_ninja()
    if ninja is None:
        raise BuildError("ninja not found", 'Run "pip install ninja", or use the prebuilt wheel (README "Building").')
    cmd = [ninja, "-C", str(plan.out_dir)]
    jobs = jobs or int(os.environ.get("MAX_JOBS", "0") or 0) or None
    if jobs:
        cmd += ["-j", str(jobs)]
    if verbose:
        cmd.append("-v")
    proc = subprocess.run(cmd, capture_output=not verbose, text=True)
    if proc.returncode == 0:
        return plan.out_dir / LIB_NAME
    out = (proc.stdout or "") + (proc.stderr or "") if not verbose else "(printed above: a verbose build)\n"
    error = BuildError(summarize(out, proc.returncode), COMPILE_HINT)
    body = f"$ {' '.join(cmd)}\n{out}\n--- {ninja_file} ---\n{plan.ninja_text()}"
    error.log = str(write_log(log_path or plan.out_dir / "build.log", _log_header(error, plan.target) + body))
    raise error


def _log_header(error: BuildError, target: Target) -> str:
    return (
        f"fusion_kernels: {error}\n"
        f"target: {target.tag}\ntorch: {torch.__version__}\ntoolchain: {toolchain.identity(target)}\n"
        f"PATH: {os.environ.get('PATH', '')}\n\n"
    )


def preflight(target: Target, log_path: Path) -> None:
    """Fail before anything runs when a tool is missing, with the usual message and log."""
    error = toolchain.missing_tool(target)
    if error is not None:
        error.log = str(write_log(log_path, _log_header(error, target)))
        raise error


def build(
    target: Target,
    out_dir: Path,
    jobs: int | None = None,
    verbose: bool = False,
    debug: bool = False,
    defines: tuple[str, ...] = (),
    log_path: Path | None = None,
) -> Path:
    """Build the library for ``target`` into ``out_dir`` (the JIT cache, the CLI, CI and wheels).

    A failure raises :class:`BuildError` whose message names ``log_path`` (default:
    ``out_dir/build.log``), where the full output is."""
    log_path = Path(log_path) if log_path is not None else Path(out_dir).resolve() / "build.log"
    preflight(target, log_path)
    try:
        plan = make_plan(target, out_dir, debug=debug, defines=defines)
        path = run_plan(plan, jobs=jobs, verbose=verbose, log_path=log_path)
    except BuildError as error:
        if error.log is None:
            error.log = str(write_log(log_path, _log_header(error, target)))
        raise
    log_path.unlink(missing_ok=True)  # the log of an earlier failure
    write_manifest(out_dir, target)
    return path


def write_manifest(out_dir: Path, target: Target) -> None:
    manifest = {
        "target": target.kind,
        "archs": list(target.archs),
        "torch_target_version": ".".join(map(str, TORCH_TARGET_VERSION)),
        "built_with_torch": torch.__version__.split("+")[0],
        "source_hash": source_hash(),
    }
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def prebuild(dest_root: Path, spec: str, jobs: int | None = None) -> list[Path]:
    """Build each target of ``spec`` into ``dest_root/<tag>/`` keeping only the library and its
    manifest (what a wheel ships). Same recipe as the JIT build."""
    libs = []
    for target in parse_targets(spec):
        out = Path(dest_root) / target.tag
        lib = build(target, out, jobs=jobs)
        for extra in ("obj", "hip_src", "build.ninja", ".ninja_log", ".ninja_deps", "build.log"):
            path = out / extra
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        libs.append(lib)
    return libs
