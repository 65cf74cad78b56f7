# SPDX-License-Identifier: Apache-2.0
"""fusion_kernels.build: a build that cannot happen says so once, in one line naming its log;
the failure is remembered per sources and toolchain; nothing is left behind; the loader takes
the library the devices present can use; ``python -m fusion_kernels`` prints no tracebacks and
no empty fields.

No test here compiles the library: a missing compiler, or a fake one that fails every compile
(and counts its runs), is enough.
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fusion_kernels
from fusion_kernels import platform
from fusion_kernels.build import LIB_NAME, BuildError, RememberedBuildError, Target, cache, loader


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FUSION_KERNELS_CACHE_DIR", str(d))
    monkeypatch.setenv("MAX_JOBS", "1")  # ninja stops at the first failed compile: one run per build
    return d


class FakeCompiler:
    """A C++ compiler that fails every compile with one error line in 300 lines of output."""

    def __init__(self, folder: Path) -> None:
        self.exe = folder / "fake-c++"
        self.runs = folder / "runs"
        self.version_file = folder / "version"
        self.version_file.write_text("fake-c++ 1.0\n")
        self.exe.write_text(
            textwrap.dedent(f"""\
            #!/bin/sh
            if [ "$1" = "--version" ]; then cat "{self.version_file}"; exit 0; fi
            echo run >> "{self.runs}"
            echo "ops.cpp:1:1: error: the fake compiler fails every compile" >&2
            i=0; while [ $i -lt 300 ]; do echo "noise line $i" >&2; i=$((i+1)); done
            exit 1
            """)
        )
        self.exe.chmod(0o755)

    @property
    def compiles(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


@pytest.fixture
def fake_cxx(tmp_path, monkeypatch):
    cc = FakeCompiler(tmp_path)
    monkeypatch.setenv("CXX", str(cc.exe))
    return cc


def fresh_loader(monkeypatch, tmp_path) -> None:
    """The loader as in a new process whose library is not loaded yet (no prebuilt libraries)."""
    monkeypatch.setattr(loader, "_state", loader.LibraryState())
    monkeypatch.setattr(loader, "_error", None)
    monkeypatch.setattr(loader, "_library_already_present", lambda: False)
    monkeypatch.setattr(loader, "prebuilt_root", lambda: tmp_path / "no_prebuilt")
    for env in ("FUSION_KERNELS_DISABLE", "FUSION_KERNELS_NO_JIT", "FUSION_KERNELS_NO_PREBUILT"):
        monkeypatch.delenv(env, raising=False)


def leftovers(cache_dir: Path) -> list[Path]:
    return list(cache_dir.glob("*.tmp*"))


def assert_one_short_line(message: str) -> None:
    assert "\n" not in message and len(message) < 500, message
    assert message.startswith("cannot build the op library: "), message


def test_no_compiler_says_what_is_missing_and_how_to_fix_it_in_one_line(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(BuildError) as info:
        cache.ensure_built(Target())
    message = str(info.value)
    assert_one_short_line(message)
    assert "no C++ compiler" in message and "no-such-compiler" in message
    assert "Install g++" in message and "set CXX" in message and 'README "Building"' in message
    assert info.value.log and Path(info.value.log).is_file() and f"Log: {info.value.log}" in message
    assert leftovers(cache_dir) == []


def test_no_compiler_on_path(cache_dir, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(cache_dir / "empty"))
    with pytest.raises(BuildError, match=r"no C\+\+ compiler \(none of c\+\+, g\+\+, clang\+\+ is on PATH\)"):
        cache.ensure_built(Target())


def test_a_failed_compile_keeps_its_output_in_the_log_and_leaves_nothing_behind(cache_dir, fake_cxx):
    out = cache.cache_dir_for(Target())
    killed = out.with_name(out.name + ".tmp999999")  # the temporary folder of a process killed mid-build
    (killed / "obj").mkdir(parents=True)
    with pytest.raises(BuildError) as info:
        cache.ensure_built(Target())
    message = str(info.value)
    assert_one_short_line(message)
    assert "error: the fake compiler fails every compile" in message and "noise" not in message
    log = Path(info.value.log).read_text()
    assert "noise line 299" in log and "build.ninja" in log and "fake-c++ 1.0" in log
    assert leftovers(cache_dir) == [] and not out.exists()


def test_a_failed_build_is_not_retried_until_the_toolchain_changes(cache_dir, fake_cxx):
    with pytest.raises(BuildError) as first:
        cache.ensure_built(Target())
    assert fake_cxx.compiles == 1
    # Everything is on disk: this is what a new process sees.
    with pytest.raises(RememberedBuildError) as again:
        cache.ensure_built(Target())
    assert fake_cxx.compiles == 1
    assert str(again.value) == str(first.value)
    fake_cxx.version_file.write_text("fake-c++ 2.0\n")  # another compiler version: try again
    with pytest.raises(BuildError) as other:
        cache.ensure_built(Target())
    assert not isinstance(other.value, RememberedBuildError) and fake_cxx.compiles == 2
    with pytest.raises(BuildError) as forced:  # what `python -m fusion_kernels build` does
        cache.ensure_built(Target(), force=True)
    assert not isinstance(forced.value, RememberedBuildError) and fake_cxx.compiles == 3
    assert leftovers(cache_dir) == []


def test_load_tries_once_per_process_and_records_the_short_reason(cache_dir, fake_cxx, monkeypatch, tmp_path, caplog):
    from fusion_passes import registry

    fresh_loader(monkeypatch, tmp_path)
    calls = []
    real = cache.ensure_built
    monkeypatch.setattr(cache, "ensure_built", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = fusion_kernels.load()
    second = fusion_kernels.load()
    assert first is second and first.status == "failed" and len(calls) == 1 and fake_cxx.compiles == 1
    assert_one_short_line(first.reason)
    assert "error: the fake compiler fails every compile" in first.reason and "Log:" not in first.reason
    assert first.fix and "CXX" in first.fix and first.log and Path(first.log).is_file()
    with pytest.raises(BuildError):
        fusion_kernels.load(strict=True)
    assert len(calls) == 1
    (warning,) = [
        r.getMessage() for r in caplog.records if r.name == "fusion_kernels" and "cannot build" in r.getMessage()
    ]
    assert first.reason in warning and first.fix in warning and f"Log: {first.log}" in warning
    line = registry.build_registry().library  # the report's `library:` line
    assert line == f"failed: {first.reason}" and "noise" not in line


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)  # fmt: skip


def _failure_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "cannot build" in line]


@pytest.mark.slow
def test_the_failure_is_remembered_across_processes_and_the_cli_retries(cache_dir, fake_cxx):
    env = {"FUSION_KERNELS_CACHE_DIR": str(cache_dir), "CXX": str(fake_cxx.exe), "MAX_JOBS": "1"}
    script = """
        import fusion_kernels
        st = fusion_kernels.load()
        assert fusion_kernels.load() is st
        print("REASON", st.reason)
    """
    runs = [_python(script, env) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert len(_failure_lines(proc.stderr)) == 1, proc.stderr  # the loader's one warning
    assert fake_cxx.compiles == 1, "the second process built again"
    assert "Not retried" in runs[1].stderr and "Not retried" not in runs[0].stderr
    reasons = [line for proc in runs for line in proc.stdout.splitlines() if line.startswith("REASON")]
    assert len(reasons) == 2 and reasons[0] == reasons[1] and "noise" not in reasons[0]

    cli = subprocess.run([sys.executable, "-m", "fusion_kernels", "build"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=600)  # fmt: skip
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert fake_cxx.compiles == 2, "python -m fusion_kernels build did not try again"
    (line,) = _failure_lines(cli.stderr)
    assert line.startswith("fusion_kernels: cannot build the op library: ") and "Log: " in line
    assert leftovers(cache_dir) == []


def _fake_prebuilt(st: loader.LibraryState, root: Path, kind: str = "cpu", archs: tuple[str, ...] = ()) -> None:
    """A prebuilt library folder holding the session's library ``st`` (the same file: loading it
    again registers nothing twice)."""
    if st.path is None:
        pytest.skip(f"the session's library has no file to stand in for a prebuilt one ({st.source})")
    d = root / Target(kind, archs).tag
    d.mkdir(parents=True)
    (d / LIB_NAME).symlink_to(st.path)
    manifest = {"target": kind, "archs": list(archs), "torch_target_version": "2.11", "source_hash": st.source_hash}
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def cuda_torch(library, monkeypatch, tmp_path):
    """A CUDA build of torch without JIT builds, with only a CPU prebuilt library; the test sets
    whether a GPU is visible (the platform module's answers, not torch's)."""
    _fake_prebuilt(library, tmp_path / "prebuilt")
    fresh_loader(monkeypatch, tmp_path)
    monkeypatch.setattr(loader, "prebuilt_root", lambda: tmp_path / "prebuilt")
    monkeypatch.setattr(platform, "build_kind", lambda: "cuda")
    monkeypatch.setenv("FUSION_KERNELS_NO_JIT", "1")

    def with_gpu(arch: str | None) -> None:
        monkeypatch.setattr(platform, "visible_gpu_arch", lambda: arch)

    return with_gpu


def test_a_cpu_prebuilt_library_loads_under_a_cuda_torch_without_a_gpu(cuda_torch):
    cuda_torch(None)
    st = fusion_kernels.load()
    assert st.loaded and st.source == "prebuilt" and st.target == "cpu", st


def test_a_cpu_prebuilt_library_is_not_enough_for_a_gpu(cuda_torch):
    cuda_torch("sm_90")
    st = fusion_kernels.load()
    assert st.status == "failed"
    assert "no prebuilt library for cuda sm_90 (have: cpu)" in st.reason and "FUSION_KERNELS_NO_JIT=1" in st.reason


def _info(capsys) -> tuple[int, str]:
    rc = importlib.import_module("fusion_kernels.__main__").main(["info"])
    return rc, capsys.readouterr().out


def test_info_prints_only_what_is_known(capsys):
    rc, out = _info(capsys)
    assert rc == 0 and "None" not in out, out
    assert out.splitlines()[0].split() == ["status", "loaded"]


def test_info_of_a_failed_build_prints_the_reason_once(capsys, monkeypatch, caplog):
    failed = loader.LibraryState("failed", reason="cannot build the op library: no C++ compiler.", log="/x.log")
    monkeypatch.setattr(loader, "_state", failed)
    rc, out = _info(capsys)
    assert rc == 1 and "None" not in out, out
    assert [line.split()[0] for line in out.splitlines()] == ["status", "reason", "log"]


# --- CUDA archs with nvcc's suffixes (sm_100a: arch-specific, sm_120f: family-specific) ---------


def test_cuda_arch_parsing_and_what_runs_where():
    from fusion_kernels.platform import CudaArch, parse_cuda_arch

    assert parse_cuda_arch("sm_90") == CudaArch(9, 0)
    assert parse_cuda_arch("9.0") == CudaArch(9, 0)
    assert parse_cuda_arch("sm_100a") == CudaArch(10, 0, "a") and str(parse_cuda_arch("10.0a")) == "sm_100a"
    assert parse_cuda_arch("sm_120f") == CudaArch(12, 0, "f") and parse_cuda_arch("103a") == CudaArch(10, 3, "a")
    for bad in ("sm_", "gfx942", "sm_9x", "sm_100b"):
        with pytest.raises(ValueError, match="not a CUDA arch"):
            parse_cuda_arch(bad)
    dev = parse_cuda_arch
    assert dev("sm_100a").runs_on(dev("sm_100")) and not dev("sm_100a").runs_on(dev("sm_103"))
    assert dev("sm_100f").runs_on(dev("sm_103")) and not dev("sm_100f").runs_on(dev("sm_120"))
    assert dev("sm_90").runs_on(dev("sm_90")) and not dev("sm_90").runs_on(dev("sm_100"))
    assert dev("sm_80").runs_on(dev("sm_86")) and not dev("sm_86").runs_on(dev("sm_80"))


def test_gencode_flags_of_suffixed_archs():
    from fusion_kernels.build import cuda_gencode_flags

    assert cuda_gencode_flags(("sm_90", "sm_80")) == [
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=compute_90",  # PTX of the newest, whatever the order
    ]
    # arch-specific machine code, PTX only of the newest plain arch (suffixed PTX runs nowhere newer)
    assert cuda_gencode_flags(("sm_90", "sm_100a", "sm_120f")) == [
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_100a,code=sm_100a",
        "-gencode=arch=compute_120f,code=sm_120f",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert cuda_gencode_flags(("sm_100a",)) == ["-gencode=arch=compute_100a,code=sm_100a"]


@pytest.mark.parametrize(
    "archs, device, found",
    [
        (("sm_80", "sm_90"), "sm_90", True),
        (("sm_80", "sm_90"), "sm_100", True),  # the sm_90 PTX
        (("sm_80", "sm_89"), "sm_86", True),  # sm_80 machine code runs on sm_86 (same major)
        (("sm_89",), "sm_86", False),
        (("sm_90", "sm_100a"), "sm_100", True),
        (("sm_100a",), "sm_103", False),  # arch-specific, no PTX
        (("sm_100f",), "sm_103", True),  # the family
        (("sm_120f",), "sm_100", False),
    ],
)
def test_prebuilt_lookup_with_suffixed_archs(library, cuda_torch, tmp_path, archs, device, found):
    from fusion_kernels.build.loader import find_prebuilt

    _fake_prebuilt(library, tmp_path / "prebuilt", "cuda", archs)
    path, why = find_prebuilt("cuda", device)
    assert (path is not None) == found, why


@pytest.mark.parametrize("target", [Target("cpu", ()), Target("cuda", ("sm_90",)), Target("rocm", ("gfx942",))])
def test_a_changed_header_recompiles_what_includes_it(target, tmp_path, monkeypatch):
    """Every compile writes its header dependencies (-MD -MF <object>.d) and build.ninja reads
    them, so a build directory reused after a header changed (the wheel's build folder, an
    --out folder) recompiles the sources that include it instead of linking stale objects."""
    from fusion_kernels.build import make_plan, toolchain

    monkeypatch.setattr(toolchain, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(toolchain, "cuda_lib_dir", lambda nvcc: "/cuda/lib64")
    monkeypatch.setattr(toolchain, "find_hip_compiler", lambda: "hipcc")
    plan = make_plan(target, tmp_path / "build")
    assert len(plan.compile_cmds) == len(plan.objects) > 0
    for (_, _, cmd), obj in zip(plan.compile_cmds, plan.objects):
        i = cmd.index("-MD")
        assert cmd[i + 1 : i + 3] == ["-MF", f"{obj}.d"], cmd
    text = plan.ninja_text()
    rules = text.count("\nrule cc")
    assert rules == len(plan.compile_cmds)
    assert text.count("  depfile = $out.d\n  deps = gcc\n") == rules
