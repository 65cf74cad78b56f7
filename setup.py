# SPDX-License-Identifier: Apache-2.0
"""Packaging glue that pyproject.toml cannot express: the C++/CUDA sources ship inside the
fusion_kernels package (so non-editable installs can JIT-build them), and a wheel build can
carry prebuilt libraries (FUSION_KERNELS_WHEEL_TARGETS, see README "Prebuilt wheel")."""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_sources(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "fusion_kernels"
        if (dest / "csrc").exists():
            shutil.rmtree(dest / "csrc")
        shutil.copytree(ROOT / "csrc", dest / "csrc")
        targets = os.environ.get("FUSION_KERNELS_WHEEL_TARGETS", "").strip()
        if targets:
            # Same build module as the JIT path: one recipe.
            sys.path.insert(0, str(ROOT / "tools"))
            from prebuild import prebuild_into

            prebuild_into(dest / "_prebuilt", targets)


setup(cmdclass={"build_py": build_py_with_sources})
