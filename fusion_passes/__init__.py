# SPDX-License-Identifier: Apache-2.0
"""fusion_passes: an Inductor post-grad pass that fuses RMSNorm (+ residual add) with FP8/INT8
quantization into one kernel.

    import fusion_passes
    compiled = fusion_passes.compile(model)          # torch.compile with the plugin
    compiled(x)
    print(fusion_passes.report(compiled))            # what was fused, what was refused and why

or, combined with your own Inductor options:

    p = fusion_passes.FusionPass(native="auto")
    compiled = torch.compile(model, options=fusion_passes.inductor_options(p, options={...}))

Importing this package builds nothing, traces nothing and touches no GPU: the op library is
loaded when a FusionPass is created.
"""

from fusion_passes.quant_key import QuantKey, Scheme

__all__ = [
    "FusionPass",
    "ComposedPass",
    "QuantKey",
    "Scheme",
    "Report",
    "compile",
    "inductor_options",
    "fusion_pass_of",
    "report",
    "inspect",
]

_LAZY = {
    "FusionPass": ("fusion_passes.graph_pass", "FusionPass"),
    "ComposedPass": ("fusion_passes.graph_pass", "ComposedPass"),
    "Report": ("fusion_passes.reporting", "Report"),
    "compile": ("fusion_passes.api", "compile"),
    "inductor_options": ("fusion_passes.api", "inductor_options"),
    "fusion_pass_of": ("fusion_passes.api", "fusion_pass_of"),
    "report": ("fusion_passes.api", "report"),
    "inspect": ("fusion_passes.inspection", "inspect"),
}


def __getattr__(name):
    # Lazy: importing fusion_passes must not import Inductor (which is slow) until it is used.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fusion_passes' has no attribute {name!r}")
