# SPDX-License-Identifier: Apache-2.0
"""Command line: ``python -m fusion_passes report`` and ``python -m fusion_passes inspect``.

python -m fusion_passes report
    platform, torch, how the op library was obtained, active patterns per device type

python -m fusion_passes inspect llama_fp8 --out dump/ [-- --quant per_token ...]
python -m fusion_passes inspect path/to/script.py --out dump/ [-- script args]
    runs the script (or an example by name) with every FusionPass it creates dumping its
    graphs into dump/graphs/pass<k>/ (k: the k-th FusionPass the script created), depyf's dumps
    into dump/depyf/ (dump/depyf/INDEX.txt says which compile had the plugin), and the reports
    into dump/ (dump/pass<k>/ when the script created several FusionPasses)
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def cmd_report() -> int:
    import torch

    import fusion_kernels
    from fusion_kernels import platform
    from fusion_passes.graph_pass import FusionPass

    st = fusion_kernels.load()
    p = FusionPass(native="always")
    print("fusion_passes platform report\n")
    toolkit = (
        f"HIP {torch.version.hip}"
        if platform.is_rocm()
        else f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else "none"
    )
    info = [
        ("platform", platform.describe()),
        ("GPU toolkit", toolkit),
        ("library", f"{st.status}" + (f" from {st.source} ({st.target})" if st.loaded else f": {st.reason}")),
        ("library path", st.path or "-"),
    ]  # fmt: skip
    if st.gpu_note:
        info.append(("GPU kernels", f"not built: {st.gpu_note}"))
    devices = ["cpu"] + (["cuda"] if platform.visible_gpu_arch() is not None else [])
    print(_table(info, ("item", "value")))
    print()
    rows = []
    names = p.report.active_patterns + sorted(p.report.inactive_patterns)
    for name in names:
        why = p.report.inactive_patterns.get(name)
        cells = [name]
        for dev in devices:
            if why:
                cells.append("inactive")
                continue
            fused = _fused_op_for(p, name)
            cells.append("yes" if fused and platform.has_kernel(f"fusion_kernels::{fused}", dev) else "no kernel")
        cells.append(why or "")
        rows.append(tuple(cells))
    print(_table(rows, ("pattern", *devices, "why not")))
    return 0


def _fused_op_for(p, name: str) -> str | None:
    from fusion_passes.registry import FAMILIES, family_key, fused_op_name

    for cp in p.custom_patterns:
        if cp.name == name:
            return cp.fused_op_name()
    form = name.rsplit("+", 1)[-1]
    return fused_op_name(family_key(form), "add+" in name) if form in FAMILIES else None


def cmd_inspect(target: str, out: Path, native: str | None, script_args: list[str]) -> int:
    import torch

    from fusion_passes import graph_pass
    from fusion_passes.inspection import depyf_dumps, write_depyf_index, write_report

    path = Path(target)
    if not path.suffix:
        path = EXAMPLES_DIR / f"{target}.py"
    if not path.is_file():
        known = sorted(p.stem for p in EXAMPLES_DIR.glob("*.py")) if EXAMPLES_DIR.is_dir() else []
        print(f"inspect: no script {target!r} (examples: {', '.join(known) or 'none found'})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    os.environ[graph_pass.DUMP_ENV] = str(out / "graphs")
    if native:
        os.environ[graph_pass.NATIVE_ENV] = native
    torch._dynamo.reset()
    sys.argv = [str(path), *script_args]
    try:
        with depyf_dumps(out / "depyf"):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(f"inspect: {path.name} exited with {exc.code}", file=sys.stderr)
    passes = graph_pass.created_passes()
    reports = []
    for i, p in enumerate(passes):
        reports.append(out / (f"pass{i}" if len(passes) > 1 else ".") / "report.txt")
        write_report(p.report, reports[-1].parent)
    index = write_depyf_index(out / "depyf", passes)
    merged = sum((p.report.fused for p in passes), 0)
    print(f"\ninspect: {len(passes)} FusionPass(es), {merged} site(s) fused; dumps in {out}:")
    for i, p in enumerate(passes):
        print(f"  FusionPass {i}: graphs before/after it in {p.dump_dir}, its report in {reports[i].resolve()}")
    if index is not None:
        print(f"  depyf's dumps in {out / 'depyf'}; which compile is which: {index}")
    if not passes:
        print("inspect: the script created no FusionPass (compile with fusion_passes.compile)", file=sys.stderr)
    return 0


_INSPECT_USAGE = "python -m fusion_passes inspect TARGET --out DIR [--native {auto,always,never}] [-- SCRIPT_ARGS ...]"
_INSPECT_EPILOG = """\
Arguments after a bare -- go to the script, e.g.:
  python -m fusion_passes inspect llama_fp8 --out dump/ -- --quant per_token --layers 4
  python -m fusion_passes inspect path/to/my_script.py --out dump/ -- --batch 8"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, script_args = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(prog="python -m fusion_passes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("report", help="platform, library and active patterns per device")
    ins = sub.add_parser("inspect", help="run a script or example with dumps and reports", usage=_INSPECT_USAGE,
                         epilog=_INSPECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ins.add_argument("target", help="a .py script, or an example name (quickstart, llama_fp8)")
    ins.add_argument("--out", type=Path, required=True)
    ins.add_argument("--native", choices=("auto", "always", "never"), default=None,
                     help="override the native policy of every FusionPass the script creates")  # fmt: skip
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.cmd == "inspect":
            rest = " ".join(unknown + script_args)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}\n"
                         f"Arguments for the script go after a bare --, e.g.: python -m fusion_passes inspect "
                         f"{args.target} --out {args.out} -- {rest}")  # fmt: skip
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.cmd == "report":
        return cmd_report()
    return cmd_inspect(args.target, args.out, args.native, script_args)


if __name__ == "__main__":
    sys.exit(main())
