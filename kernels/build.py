# SPDX-License-Identifier: Apache-2.0
"""The one module that builds and loads the compiled op library.

It serves the JIT build (first use), ``python -m fusion_kernels build``, CI's compile checks and
the wheel's prebuilt libraries, so there is one recipe:

* sources: ``csrc/`` (shipped inside the distribution as ``fusion_kernels/csrc``);
* C++ against the LibTorch stable ABI, pinned to torch 2.11's API with ``TORCH_TARGET_VERSION``,
  so one library serves torch 2.11 through 2.13;
* CUDA sources added for CUDA targets (nvcc, ``-gencode`` per arch plus PTX of the newest),
  HIP for ROCm targets (hipified into the build directory, never into the source tree);
* a ``build.ninja`` per build directory, run by ninja;
* JIT builds go to a user cache directory keyed by torch version, source hash and target, under
  a file lock (several processes, e.g. torchrun ranks, may start at once).

Loading prefers a prebuilt library shipped in the wheel that matches the device, then a cached
or fresh JIT build, and degrades to "no ops" with the reason recorded when neither works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from fusion_kernels import platform

log = logging.getLogger("fusion_kernels")

LIB_NAME = "libfusion_kernels.so"
#: The stable-ABI API level the library is compiled against (torch 2.11), see
#: torch/csrc/stable/version.h. A library built against newer headers runs on 2.11 and later.
TORCH_TARGET_VERSION = (2, 11)
TORCH_TARGET_VERSION_HEX = "0x{:02X}{:02X}000000000000".format(*TORCH_TARGET_VERSION)

CPU_SOURCES = ("bindings.cpp", "ops.cpp", "cpu/row_op_cpu.cpp")
GPU_SOURCES = (
    "cuda/row_op_cuda.cu",
    "cuda/row_op_plain.cu",
    "cuda/row_op_static.cu",
    "cuda/row_op_per_token.cu",
    "cuda/row_op_per_group.cu",
)
#: CUDA architectures the kernels support (bf16 conversions need sm_80; FP8 conversions are
#: emulated below sm_89). Used by the wheel build and documented in the README.
SUPPORTED_CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
WHEEL_CUDA_ARCHS = ("sm_80", "sm_89", "sm_90")
SUPPORTED_ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950")

DISABLE_ENV = "FUSION_KERNELS_DISABLE"
NO_JIT_ENV = "FUSION_KERNELS_NO_JIT"  # never compile at run time (serving images): prebuilt or nothing
CACHE_ENV = "FUSION_KERNELS_CACHE_DIR"


class BuildError(RuntimeError):
    """The library could not be compiled or linked (the message carries the compiler output)."""


# ---------------------------------------------------------------------------------------------
# Sources and targets


def source_dir() -> Path:
    """The C++/CUDA sources: inside the installed package, or the repository's csrc/ (editable)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "bindings.cpp").is_file():
            return candidate
    raise BuildError(f"the library's C++ sources are missing (looked in {here / 'csrc'} and {here.parent / 'csrc'})")


def _all_source_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu") and p.is_file())


def source_hash(src: Path | None = None) -> str:
    src = src or source_dir()
    h = hashlib.sha256()
    for p in _all_source_files(src):
        h.update(p.relative_to(src).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Target:
    """What one library is built for: the CPU kernels always, plus one GPU flavour."""

    kind: str = "cpu"  # "cpu", "cuda" or "rocm"
    archs: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return self.kind if self.kind == "cpu" else f"{self.kind}-{'-'.join(self.archs)}"


def jit_target() -> tuple[Target, str | None]:
    """The target a JIT build should use here, and why GPU kernels are left out (if they are)."""
    kind = platform.build_kind()
    if kind == "cuda":
        archs = platform.cuda_build_archs()
        if not archs:
            return Target(), "no CUDA GPU visible and FUSION_KERNELS_CUDA_ARCHS unset"
        if find_nvcc() is None:
            return Target(), "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
        return Target("cuda", tuple(archs)), None
    if kind == "rocm":
        archs = platform.rocm_build_archs()
        if not archs:
            return Target(), "no ROCm GPU visible and FUSION_KERNELS_ROCM_ARCHS unset"
        if find_hip_compiler() is None:
            return Target(), "no HIP compiler found (hipcc, or clang++ with --rocm-path)"
        return Target("rocm", tuple(archs)), None
    return Target(), None


# ---------------------------------------------------------------------------------------------
# Toolchain


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_lib_dir(nvcc: str) -> Path:
    home = Path(nvcc).resolve().parent.parent
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if (home / sub / "libcudart_static.a").is_file():
            return home / sub
    return home / "lib64"


def find_hip_compiler() -> str | None:
    env = os.environ.get("FUSION_KERNELS_HIPCC")
    if env:
        return env
    rocm = os.environ.get("ROCM_PATH", "/opt/rocm")
    if (Path(rocm) / "bin" / "hipcc").is_file():
        return str(Path(rocm) / "bin" / "hipcc")
    return shutil.which("hipcc")


def find_ninja() -> str | None:
    try:
        import ninja  # type: ignore[import-not-found]

        exe = Path(ninja.BIN_DIR) / "ninja"
        if exe.is_file():
            return str(exe)
    except ImportError:
        pass
    return shutil.which("ninja")


def _torch_dirs() -> tuple[Path, Path]:
    root = Path(torch.__file__).resolve().parent
    return root / "include", root / "lib"


def _cxx() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


def common_defines() -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION_HEX}", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]


def cuda_gencode_flags(archs: tuple[str, ...]) -> list[str]:
    flags = []
    for arch in archs:
        num = arch.removeprefix("sm_")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    if archs:  # PTX of the newest arch, so a newer GPU can still JIT the kernels
        num = archs[-1].removeprefix("sm_")
        flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def hip_offload_flags(archs: tuple[str, ...]) -> list[str]:
    return [f"--offload-arch={a}" for a in archs]


# ---------------------------------------------------------------------------------------------
# The recipe


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
            lines += [f"rule cc{i}", f"  command = {q(cmd)}", "  description = compile $out", ""]
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
    inc, lib = _torch_dirs()
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = common_defines() + [f"-D{d}" for d in defines]
    gpu_define = {"cuda": ["-DFK_WITH_CUDA"], "rocm": ["-DFK_WITH_CUDA", "-DUSE_ROCM"]}.get(target.kind, [])
    cxx = _cxx()
    cmds: list[tuple[str, Path, list[str]]] = []
    objects: list[Path] = []
    obj_dir = out_dir / "obj"

    def obj_for(rel: str) -> Path:
        return obj_dir / (rel.replace("/", "_") + ".o")

    for rel in CPU_SOURCES:
        o = obj_for(rel)
        cmd = [cxx, *opt, "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", *defines, *gpu_define,
               f"-I{src}", f"-I{inc}", "-c", str(src / rel), "-o", str(o)]  # fmt: skip
        cmds.append(("cxx", src / rel, cmd))
        objects.append(o)

    link_extra: list[str] = []
    if target.kind == "cuda":
        nvcc = find_nvcc()
        if nvcc is None:
            raise BuildError("nvcc not found: set CUDA_HOME or put nvcc on PATH")
        for rel in GPU_SOURCES:
            o = obj_for(rel)
            cmd = [nvcc, *opt, "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                   *cuda_gencode_flags(target.archs), *defines, "-DFK_WITH_CUDA", f"-I{src}",
                   "-c", str(src / rel), "-o", str(o)]  # fmt: skip
            cmds.append(("nvcc", src / rel, cmd))
            objects.append(o)
        link_extra = [f"-L{_cuda_lib_dir(nvcc)}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    elif target.kind == "rocm":
        hipcc = find_hip_compiler()
        if hipcc is None:
            raise BuildError("no HIP compiler found (hipcc, or FUSION_KERNELS_HIPCC)")
        hip_src = hipify_sources(src, out_dir / "hip_src")
        # The host files that include the CUDA entry point come out of hipify renamed.
        cmds, objects = [], []
        for rel in hip_cpu_sources(hip_src):
            o = obj_for(rel)
            cmd = [cxx, *opt, "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", *defines, *gpu_define,
                   f"-I{hip_src}", f"-I{inc}", "-c", str(hip_src / rel), "-o", str(o)]  # fmt: skip
            cmds.append(("cxx", hip_src / rel, cmd))
            objects.append(o)
        for rel in hip_gpu_sources():
            o = obj_for(rel)
            cmd = [hipcc, "-x", "hip", *opt, "-std=c++17", "-fPIC", *hip_offload_flags(target.archs), *defines,
                   *hip_extra_flags(), f"-I{hip_src}", "-c", str(hip_src / rel), "-o", str(o)]  # fmt: skip
            cmds.append(("hipcc", hip_src / rel, cmd))
            objects.append(o)
        rocm = os.environ.get("ROCM_PATH", "/opt/rocm")
        link_extra = [f"-L{Path(rocm) / 'lib'}", "-lamdhip64"]

    link = [cxx, "-shared", *[str(o) for o in objects], "-o", str(out_dir / LIB_NAME), f"-L{lib}",
            "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", *link_extra]  # fmt: skip
    return Plan(target, out_dir, src, cmds, link, objects)


def hip_gpu_sources() -> list[str]:
    """The device sources after hipify: cuda/<name>.cu -> hip/<name with cuda -> hip>.hip."""
    return ["hip/" + Path(rel).name.replace("cuda", "hip").replace(".cu", ".hip") for rel in GPU_SOURCES]


def hip_cpu_sources(hip_src: Path) -> list[str]:
    """The host sources after hipify (a file that includes the CUDA entry point gets a _hip twin)."""
    out = []
    for rel in CPU_SOURCES:
        twin = rel.replace(".cpp", "_hip.cpp")
        out.append(twin if (hip_src / twin).is_file() else rel)
    return out


def hip_extra_flags() -> list[str]:
    """Device-compile flags of the HIP build: the *_sync warp builtins (64-bit lane masks), and
    ``FUSION_KERNELS_HIP_FLAGS`` (e.g. ``--rocm-path=...`` when the compiler is a plain clang)."""
    import shlex

    extra = shlex.split(os.environ.get("FUSION_KERNELS_HIP_FLAGS", ""))
    return ["-DFK_WITH_CUDA", "-DUSE_ROCM", "-DHIP_ENABLE_WARP_SYNC_BUILTINS", *extra]


def hipify_sources(src: Path, dest: Path) -> Path:
    """Copy the sources to ``dest`` and translate the CUDA ones to HIP with torch's hipify.

    hipify writes the translated files into ``dest/hip/`` (``row_op_cuda.cu`` becomes
    ``hip/row_op_hip.hip``) and a ``_hip`` twin of host files that include CUDA headers. The
    source tree is never touched. What hipify leaves alone (FP8 intrinsics, *_sync shuffles) is
    handled by csrc/cuda/compat.cuh.
    """
    from torch.utils.hipify import hipify_python

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        hipify_python.hipify(
            project_directory=str(dest),
            output_directory=str(dest),
            includes=[str(dest / "**")],
            header_include_dirs=[str(dest)],
            extensions=(".cu", ".cuh", ".h", ".cpp"),
            show_detailed=False,
            is_pytorch_extension=True,
            hipify_extra_files_only=False,
        )
    missing = [rel for rel in hip_gpu_sources() if not (dest / rel).is_file()]
    if missing:
        raise BuildError(f"hipify did not produce {missing}")
    return dest


def run_plan(plan: Plan, jobs: int | None = None, verbose: bool = False) -> Path:
    """Compile and link; returns the library path."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "obj").mkdir(exist_ok=True)
    ninja_file = plan.out_dir / "build.ninja"
    ninja_file.write_text(plan.ninja_text())
    ninja = find_ninja()
    if ninja is None:
        raise BuildError("ninja not found: pip install ninja")
    cmd = [ninja, "-C", str(plan.out_dir)]
    jobs = jobs or int(os.environ.get("MAX_JOBS", "0") or 0) or None
    if jobs:
        cmd += ["-j", str(jobs)]
    if verbose:
        cmd.append("-v")
    proc = subprocess.run(cmd, capture_output=not verbose, text=True)
    if proc.returncode != 0:
        out = (proc.stdout or "") + (proc.stderr or "")
        raise BuildError(f"building the fusion_kernels library failed (see {ninja_file}):\n{out[-6000:]}")
    return plan.out_dir / LIB_NAME


def build(
    target: Target,
    out_dir: Path,
    jobs: int | None = None,
    verbose: bool = False,
    debug: bool = False,
    defines: tuple[str, ...] = (),
) -> Path:
    """Build the library for ``target`` into ``out_dir`` (used by the CLI, CI and the wheel)."""
    plan = make_plan(target, out_dir, debug=debug, defines=defines)
    path = run_plan(plan, jobs=jobs, verbose=verbose)
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


# ---------------------------------------------------------------------------------------------
# The JIT cache


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion_kernels"


def cache_dir_for(target: Target) -> Path:
    tv = torch.__version__.replace("+", "_")
    py = sysconfig.get_config_var("SOABI") or f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"torch{tv}-{py}-{target.tag}-{source_hash()}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_built(target: Target) -> tuple[Path, bool]:
    """The cached library for ``target``, building it under a file lock if needed.

    Returns (path, built_now)."""
    out = cache_dir_for(target)
    lib = out / LIB_NAME
    if lib.is_file():
        return lib, False
    with _file_lock(out.with_name(out.name + ".lock")):
        if lib.is_file():  # another process finished it while we waited
            return lib, False
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        log.warning("fusion_kernels: building the op library for %s (first use; cached in %s)...", target.tag, out)
        start = time.perf_counter()
        build(target, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        log.warning("fusion_kernels: built in %.1f s", time.perf_counter() - start)
        return lib, True


# ---------------------------------------------------------------------------------------------
# Prebuilt libraries (wheels)


def prebuilt_root() -> Path:
    return Path(__file__).resolve().parent / "_prebuilt"


def parse_targets(spec: str) -> list[Target]:
    """``"cuda:sm_80,sm_89,sm_90;rocm:gfx942"`` -> targets (the wheel build's specification)."""
    targets = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        kind, _, archs = item.partition(":")
        if kind not in ("cpu", "cuda", "rocm"):
            raise BuildError(f"unknown target kind {kind!r} in {spec!r}")
        targets.append(Target(kind, tuple(a for a in archs.split(",") if a)))
    return targets


def prebuild(dest_root: Path, spec: str, jobs: int | None = None) -> list[Path]:
    """Build each target of ``spec`` into ``dest_root/<tag>/`` keeping only the library and its
    manifest (what a wheel ships). Same recipe as the JIT build."""
    libs = []
    for target in parse_targets(spec):
        out = Path(dest_root) / target.tag
        lib = build(target, out, jobs=jobs)
        for extra in ("obj", "hip_src", "build.ninja", ".ninja_log", ".ninja_deps"):
            path = out / extra
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        libs.append(lib)
    return libs


def find_prebuilt(kind: str, arch: str | None) -> tuple[Path | None, str]:
    """A prebuilt library for this torch build ``kind`` and device ``arch`` (None: any GPU),
    and a line saying why none matched.

    Every library holds the CPU kernels, so a CPU-only torch takes any of them; a CUDA torch
    needs machine code for the GPU's arch (or PTX of an older one), a ROCm torch its gfx arch.
    The library's stable-ABI level must not be newer than this torch.
    """
    root = prebuilt_root()
    if not root.is_dir():
        return None, "no prebuilt libraries in this installation"
    torch_version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    seen = []
    for d in sorted(root.iterdir()):
        manifest_file = d / "manifest.json"
        if not (d / LIB_NAME).is_file() or not manifest_file.is_file():
            continue
        m = json.loads(manifest_file.read_text())
        seen.append(d.name)
        need = tuple(int(p) for p in m.get("torch_target_version", "99.0").split("."))
        if torch_version < need:
            continue
        archs = m.get("archs", [])
        if kind == "cpu":
            return d / LIB_NAME, ""
        if m.get("target") != kind:
            continue
        if arch is None or arch in archs or (kind == "cuda" and _ptx_covers(archs, arch)):
            return d / LIB_NAME, ""
    return None, f"no prebuilt library for {kind} {arch or ''} (have: {', '.join(seen) or 'none'})"


def _ptx_covers(archs: list[str], arch: str) -> bool:
    # The newest arch is also shipped as PTX, which the driver can compile for newer GPUs.
    if not archs or not arch.startswith("sm_") or not archs[-1].startswith("sm_"):
        return False
    return int(arch[3:]) >= int(archs[-1][3:])


# ---------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class LibraryState:
    """What happened when the library was asked for (see :func:`load`)."""

    status: str = "not_loaded"  # "not_loaded", "loaded", "disabled", "failed"
    source: str | None = None  # "prebuilt", "jit-cache", "jit-build"
    path: str | None = None
    target: str | None = None
    reason: str | None = None  # why disabled/failed
    gpu_note: str | None = None  # why GPU kernels are absent, if they are
    build_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self.status == "loaded"


_state = LibraryState()
_lock = threading.Lock()


def state() -> LibraryState:
    return _state


def _library_already_present() -> bool:
    return hasattr(torch.ops.fusion_kernels, "rms_norm")


def load(strict: bool = False) -> LibraryState:
    """Build (if needed) and load the library once per process; never raises unless ``strict``.

    Call it before Dynamo traces anything (fusion_passes does, when a pass is created).
    """
    global _state
    with _lock:
        if _state.status in ("loaded", "disabled"):
            return _state
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            _state = LibraryState(status="disabled", reason=f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
            return _state
        try:
            _state = _load_unlocked()
        except Exception as exc:  # degrade: no ops, a recorded reason
            _state = LibraryState(status="failed", reason=f"{type(exc).__name__}: {exc}")
            log.warning("fusion_kernels: the op library is unavailable: %s", _state.reason)
            if strict:
                raise
        return _state


def _load_unlocked() -> LibraryState:
    from fusion_kernels import fake

    if _library_already_present():
        fake.register_all()
        return LibraryState(status="loaded", source="already-loaded", reason=None)

    kind = platform.build_kind()
    arch = platform.visible_gpu_arch()
    prebuilt, why_not = find_prebuilt(kind, arch)
    if prebuilt is not None and os.environ.get("FUSION_KERNELS_NO_PREBUILT", "") in ("", "0"):
        try:
            torch.ops.load_library(str(prebuilt))
            fake.register_all()
            m = json.loads((prebuilt.parent / "manifest.json").read_text())
            tag = Target(m["target"], tuple(m.get("archs", ()))).tag
            return LibraryState("loaded", "prebuilt", str(prebuilt), tag)
        except OSError as exc:
            why_not = f"prebuilt library {prebuilt} did not load ({exc})"
            log.warning("fusion_kernels: %s; trying a JIT build", why_not)
    if os.environ.get(NO_JIT_ENV, "") not in ("", "0"):
        raise BuildError(f"{why_not}, and JIT builds are off ({NO_JIT_ENV}=1)")

    target, gpu_note = jit_target()
    start = time.perf_counter()
    path, built = ensure_built(target)
    seconds = time.perf_counter() - start if built else None
    torch.ops.load_library(str(path))
    fake.register_all()
    return LibraryState(
        status="loaded",
        source="jit-build" if built else "jit-cache",
        path=str(path),
        target=target.tag,
        gpu_note=gpu_note,
        build_seconds=seconds,
    )
