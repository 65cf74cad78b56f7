# SPDX-License-Identifier: Apache-2.0
"""The absolute maximum of a tensor, however it is spelled: ``amax(|v|)``, ``max.dim(|v|)[0]``
(with or without keepdim, then ``unsqueeze``), ``max(|amin(v)|, |amax(v)|)`` (also with ``amin`` /
``amax`` clamped against zero, and through ``aminmax``), a whole-tensor ``max(|v|)``."""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx

from fusion_passes.patterns.native.graph import aten, const, is_call, through_upcasts


def absmax(node: Any, seen: list) -> tuple[fx.Node, Any, bool] | None:
    """(source, dims, keepdim) of an absolute-max reduction spelled any way; dims None = all."""
    node = through_upcasts(node, seen)
    if is_call(node, (aten.unsqueeze.default,)):
        inner = absmax(node.args[0], seen)
        if inner is not None and not inner[2]:
            seen.append(node)
            return inner[0], inner[1], True
        return None
    if is_call(node, (operator.getitem,)) and node.args[1] == 0 and is_call(node.args[0], (aten.max.dim,)):
        m = node.args[0]
        src = _abs_source(m.args[0], seen)
        if src is None:
            return None
        keep = m.args[2] if len(m.args) > 2 else m.kwargs.get("keepdim", False)
        seen += [node, m]
        return src, [m.args[1]], bool(keep)
    if is_call(node, (aten.amax.default,)):
        src = _abs_source(node.args[0], seen)
        if src is None:
            return None
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        seen.append(node)
        return src, (list(dims) if dims else None), bool(keep)
    if is_call(node, (aten.max.default,)):
        src = _abs_source(node.args[0], seen)
        if src is None:
            return None
        seen.append(node)
        return src, None, False
    if is_call(node, (aten.maximum.default,)):
        return _absmax_of_extremes(node, seen)
    return None


def _abs_source(node: Any, seen: list) -> Any:
    if is_call(node, (aten.abs.default,)):
        seen.append(node)
        return node.args[0]
    return None


def _absmax_of_extremes(node: fx.Node, seen: list):
    """max(|lo|, |hi|) where lo = amin(v) [min'ed with 0] and hi = amax(v) [max'ed with 0]."""
    local: list = []
    reads = []
    for side, (red, clip) in zip(node.args, ((aten.amin.default, aten.minimum.default),
                                              (aten.amax.default, aten.maximum.default))):  # fmt: skip
        if not is_call(side, (aten.abs.default,)):
            return None
        local.append(side)
        inner = side.args[0]
        if is_call(inner, (clip,)) and const(inner.args[1], local) == 0.0:
            local.append(inner)
            inner = inner.args[0]
        inner = _min_max_reduction(inner, red, local)
        if inner is None:
            return None
        reads.append(inner)
    (src_a, dims_a, keep_a), (src_b, dims_b, keep_b) = reads
    if src_a is not src_b or dims_a != dims_b or keep_a != keep_b:
        return None
    seen += local + [node]
    return src_a, dims_a, keep_a


def _min_max_reduction(node: Any, red, local: list):
    if is_call(node, (red,)):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        local.append(node)
        return node.args[0], (list(dims) if dims else None), bool(keep)
    # aminmax / a whole-tensor min or max
    if is_call(node, (operator.getitem,)) and is_call(node.args[0], (aten.aminmax.default,)):
        want = 0 if red is aten.amin.default else 1
        if node.args[1] != want:
            return None
        am = node.args[0]
        dim = am.kwargs.get("dim", am.args[1] if len(am.args) > 1 else None)
        keep = am.kwargs.get("keepdim", am.args[2] if len(am.args) > 2 else False)
        local += [node, am]
        return am.args[0], (None if dim is None else [dim]), bool(keep)
    whole = aten.min.default if red is aten.amin.default else aten.max.default
    if is_call(node, (whole,)):
        local.append(node)
        return node.args[0], None, False
    return None
