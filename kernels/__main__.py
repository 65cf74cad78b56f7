# SPDX-License-Identifier: Apache-2.0
"""``python -m fusion_kernels build``: compile the op library ahead of time.

Without ``--out`` it fills the same user cache the JIT build uses (so the first compile does not
wait); with ``--out DIR`` it writes the library and its manifest there (CI, wheels).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion_kernels")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the op library")
    b.add_argument(
        "--target",
        choices=("auto", "cpu", "cuda", "rocm"),
        default="auto",
        help="GPU code to add to the CPU kernels (auto: what this torch and machine support)",
    )
    b.add_argument("--archs", default="", help="GPU archs, e.g. 'sm_80,sm_89,sm_90' or 'gfx942,gfx90a'")
    b.add_argument("--out", type=Path, help="output directory (default: the JIT cache)")
    b.add_argument("-j", "--jobs", type=int, default=None)
    b.add_argument("-v", "--verbose", action="store_true")
    sub.add_parser("info", help="print the library state (loads it)")
    args = parser.parse_args(argv)

    from fusion_kernels import build

    if args.cmd == "info":
        st = build.load()
        for field, value in vars(st).items():
            print(f"{field:14s} {value}")
        return 0 if st.loaded else 1

    if args.target == "auto":
        target, note = build.jit_target()
        if note:
            print(f"fusion_kernels: GPU kernels left out: {note}", file=sys.stderr)
    else:
        archs = tuple(a for a in args.archs.replace(";", ",").split(",") if a)
        if args.target != "cpu" and not archs:
            parser.error(f"--target {args.target} needs --archs")
        target = build.Target(args.target, archs if args.target != "cpu" else ())
    start = time.perf_counter()
    if args.out is None:
        path, built = build.ensure_built(target)
        verb = "built" if built else "already cached"
    else:
        path = build.build(target, args.out, jobs=args.jobs, verbose=args.verbose)
        verb = "built"
    print(f"fusion_kernels: {verb} {target.tag} library at {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
