# SPDX-License-Identifier: Apache-2.0
"""The native-torch form: RMSNorm and quantization written in plain torch, matched by meaning.

A structural recognizer over the post-grad graph, not traced patterns. It starts at every
inverse root (``rsqrt``, ``pow(v, -0.5)``, ``sqrt`` under a division), recognises the RMSNorm
around it (norm.py), reads every quantizer of the norm's output as a scale rule (quant.py,
through the canonical readings of graph.py), picks the fused op that reproduces that rule
(ops.py), and checks and rewrites the site (matcher.py). Nothing is traced, so registering costs
nothing and matching a 32-layer graph takes milliseconds.
"""

from fusion_passes.patterns import Refusal
from fusion_passes.patterns.native.matcher import NativeMatcher, all_pattern_names, pattern_name
from fusion_passes.patterns.native.norm import NormMatch, match_norm
from fusion_passes.patterns.native.quant import QuantMatch, ScaleRule, match_quantizer

__all__ = [
    "NativeMatcher",
    "NormMatch",
    "QuantMatch",
    "Refusal",
    "ScaleRule",
    "all_pattern_names",
    "match_norm",
    "match_quantizer",
    "pattern_name",
]
