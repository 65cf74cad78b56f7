# SPDX-License-Identifier: Apache-2.0
"""Packaging glue that pyproject.toml cannot express:

* the C++/CUDA sources ship inside the fusion_kernels package (``fusion_kernels/csrc``), so a
  non-editable install can JIT-build them;
* with ``FUSION_KERNELS_WHEEL_TARGETS`` set (e.g. ``cuda:sm_80,sm_89,sm_90``), the wheel also
  carries prebuilt libraries, compiled by the same build package as the JIT path, and is tagged
  for the platform (the library uses no Python C API, so one wheel serves every Python 3).
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TARGETS = os.environ.get("FUSION_KERNELS_WHEEL_TARGETS", "").strip()


def _source_build_module():
    """fusion_kernels.build from this source tree (the package directory is kernels/)."""
    if "fusion_kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "fusion_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["fusion_kernels"] = module
        spec.loader.exec_module(module)
    import fusion_kernels.build

    return fusion_kernels.build


class build_py_with_sources(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "fusion_kernels"
        if (dest / "csrc").exists():
            shutil.rmtree(dest / "csrc")
        shutil.copytree(ROOT / "csrc", dest / "csrc")
        # Only the libraries built here for TARGETS: not a library left in the source tree's
        # kernels/_prebuilt or in the build folder by an earlier build.
        if (dest / "_prebuilt").exists():
            shutil.rmtree(dest / "_prebuilt")
        if TARGETS:
            build = _source_build_module()
            libs = build.prebuild(dest / "_prebuilt", TARGETS)
            print(f"fusion_kernels: prebuilt {', '.join(str(p.parent.name) for p in libs)}")


cmdclass = {"build_py": build_py_with_sources}

if TARGETS:
    from setuptools.command.bdist_wheel import bdist_wheel

    class bdist_wheel_platform(bdist_wheel):
        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = bdist_wheel_platform

setup(cmdclass=cmdclass)
