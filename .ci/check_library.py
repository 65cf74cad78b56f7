# SPDX-License-Identifier: Apache-2.0
"""Load a built library into this torch and check its registrations (and, with --archs, that
the CUDA code objects for those archs are in it)."""

import argparse
import os
import struct
import sys
from collections import Counter

import torch

from fusion_kernels.fake import ALL_OP_NAMES


def elf_section(path: str, wanted: str) -> bytes:
    """The bytes of one section of an ELF64 little-endian file."""
    data = open(path, "rb").read()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):
        return struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)

    strtab = header(shstrndx)
    for i in range(shnum):
        h = header(i)
        name_start = strtab[4] + h[0]
        name = data[name_start : data.index(b"\0", name_start)].decode()
        if name == wanted:
            return data[h[4] : h[4] + h[5]]
    return b""


def fatbin_entries(blob: bytes) -> Counter:
    """(kind, sm) of every code object in a .nv_fatbin section: kind "elf" (SASS) or "ptx"."""
    found = Counter()
    off = 0
    while (i := blob.find(struct.pack("<I", 0xBA55ED50), off)) >= 0:
        _, _, header_size, fat_size = struct.unpack_from("<IHHQ", blob, i)
        p, end = i + header_size, i + header_size + fat_size
        while p < end:
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", blob, p)
            sm = struct.unpack_from("<I", blob, p + 28)[0]
            found[({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm)] += 1
            p += entry_header + size
        off = end
    return found


parser = argparse.ArgumentParser()
parser.add_argument("library")
parser.add_argument("--expect-cuda", action="store_true")
parser.add_argument("--archs", default="")
args = parser.parse_args()

args.library = os.path.abspath(args.library)
torch.ops.load_library(args.library)
missing, no_cpu, no_cuda = [], [], []
# Every op the library defines: OP_NAMES and the microscaling ops (MX_OP_NAMES).
for name in ALL_OP_NAMES:
    qual = f"fusion_kernels::{name}"
    if not hasattr(torch.ops.fusion_kernels, name):
        missing.append(name)
        continue
    if not torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CPU"):
        no_cpu.append(name)
    # The rule ops have CUDA kernels in the default build (FK_GPU_RULE_OPS, csrc/row_op.h), and so
    # do the microscaling ops.
    if args.expect_cuda and not torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"):
        no_cuda.append(name)
problems = []
if missing:
    problems.append(f"ops without a schema: {missing}")
if no_cpu:
    problems.append(f"ops without a CPU kernel: {no_cpu}")
if no_cuda:
    problems.append(f"ops without a CUDA kernel: {no_cuda}")
if args.archs:
    entries = fatbin_entries(elf_section(args.library, ".nv_fatbin"))
    for arch in args.archs.split(","):
        if ("elf", int(arch.removeprefix("sm_").rstrip("af"))) not in entries:
            problems.append(f"no {arch} machine code in the library (found {sorted(entries)})")
if problems:
    print("library check FAILED:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(
    f"library check ok: {len(ALL_OP_NAMES)} ops, schemas + CPU kernels"
    + (" + CUDA kernels" if args.expect_cuda else "")
    + (f", code objects for {args.archs}" if args.archs else "")
    + f" (torch {torch.__version__})"
)
