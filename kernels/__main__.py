# SPDX-License-Identifier: Apache-2.0
"""``python -m fusion_kernels build``: compile the op library ahead of time.

Without ``--out`` it fills the same user cache the JIT build uses (so the first compile does not
wait), trying again even when an earlier build with this toolchain failed; with ``--out DIR`` it
writes the library and its manifest there (CI, wheels). A build that fails prints one line (what
is wrong, how to fix it, where the full log is) and exits with 1.

``python -m fusion_kernels info`` loads the library and prints how it was obtained.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _info() -> int:
    from fusion_kernels.build import loader

    # The reason is printed below: drop the loader's warning that says the same.
    logger = logging.getLogger("fusion_kernels")

    def same_reason(record: logging.LogRecord) -> bool:
        return not getattr(record, loader.FAILURE_RECORD_ATTR, False)

    logger.addFilter(same_reason)
    try:
        st = loader.load()
    finally:
        logger.removeFilter(same_reason)
    for field, value in vars(st).items():
        if value is not None:
            print(f"{field:14s} {value}")
    return 0 if st.loaded else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion_kernels")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the op library (again, if an earlier build failed)")
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

    if args.cmd == "info":
        return _info()

    from fusion_kernels import build

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
    try:
        if args.out is None:
            path, built = build.ensure_built(target, force=True, jobs=args.jobs)
            verb = "built" if built else "already cached"
        else:
            path = build.build(target, args.out, jobs=args.jobs, verbose=args.verbose)
            verb = "built"
    except build.BuildError as exc:
        print(f"fusion_kernels: {exc}", file=sys.stderr)
        return 1
    print(f"fusion_kernels: {verb} {target.tag} library at {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
