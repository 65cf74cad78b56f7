# SPDX-License-Identifier: Apache-2.0
"""api: what report() accepts, and what it says about anything else."""

import pytest
import torch

import fusion_passes


def test_report_of_an_object_not_compiled_by_fusion_passes_says_what_to_pass():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(TypeError, match=r"fusion_passes.compile\(model\) returned"):
        fusion_passes.report(model)
    with pytest.raises(TypeError, match=r"inductor_options\(p\)\), read p.report"):
        fusion_passes.report(torch.compile(model))
    p = fusion_passes.FusionPass(native="never")
    assert fusion_passes.report(p) is p.report
