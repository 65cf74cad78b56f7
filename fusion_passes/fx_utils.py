# SPDX-License-Identifier: Apache-2.0
"""Small FX helpers shared by the matchers: argument binding, fake-value propagation, ordering."""

from __future__ import annotations

import operator
import os
import re
from collections import defaultdict
from typing import Any

import torch
import torch.fx as fx

VIEW_OPS = (
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten._unsafe_view.default,
)


def bound_args(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name (positional, keyword and defaults)."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def val(node: Any) -> Any:
    """The example (fake) value of a node, or the constant itself."""
    if isinstance(node, fx.Node):
        return node.meta.get("val")
    return node


def getitem_users(node: fx.Node) -> dict[int, list[fx.Node]]:
    """For a multi-output node: output index -> the getitem nodes reading it."""
    out: dict[int, list[fx.Node]] = defaultdict(list)
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem:
            out[user.args[1]].append(user)  # type: ignore[index]
    return out


def only_getitem_users(node: fx.Node) -> bool:
    return all(u.op == "call_function" and u.target is operator.getitem for u in node.users)


def call(graph: fx.Graph, target: Any, args: tuple, kwargs: dict | None = None, like: fx.Node | None = None) -> fx.Node:
    """Insert a call at the graph's current insertion point with meta["val"] computed on fakes."""
    node = graph.call_function(target, args, kwargs or {})
    fake_args = fx.node.map_arg(args, val)
    fake_kwargs = fx.node.map_arg(kwargs or {}, val)
    node.meta["val"] = target(*fake_args, **fake_kwargs)
    if like is not None and "stack_trace" in like.meta:
        node.meta["stack_trace"] = like.meta["stack_trace"]
    return node


def getitem(graph: fx.Graph, node: fx.Node, index: int) -> fx.Node:
    item = graph.call_function(operator.getitem, (node, index))
    item.meta["val"] = node.meta["val"][index]
    if "stack_trace" in node.meta:
        item.meta["stack_trace"] = node.meta["stack_trace"]
    return item


def stable_topological_sort(graph: fx.Graph) -> None:
    """Reorder nodes so every node follows its inputs, moving as few nodes as possible.

    Rewrites insert a fused node next to the quant it replaces; a user of one of its outputs
    (e.g. the new residual) may sit earlier in the graph, so the order is repaired afterwards.
    """
    pending = list(reversed(graph.nodes))
    ready: set[fx.Node] = set()
    waiting: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    cursor: fx.Node | None = None
    while pending:
        node = pending.pop()
        blocked_on = [n for n in node.all_input_nodes if n not in ready]
        if blocked_on:
            waiting[blocked_on[-1]].append(node)
            continue
        ready.add(node)
        if cursor is not None and cursor.next is not node:
            cursor.append(node)
        cursor = node
        pending.extend(reversed(waiting.pop(node, [])))
    if waiting:
        raise RuntimeError("fusion_passes: the rewritten graph has a cycle")


class Location(str):
    """Where a site is, for reports: the user's source line (the string itself, "" when the graph
    kept none) plus ``module``, the module path of the site's norm (``layers.3.post_attention_layernorm``,
    "" for the compiled module itself or a plain function)."""

    module: str

    def __new__(cls, source: str = "", module: str = "") -> Location:
        loc = super().__new__(cls, source)
        loc.module = module
        return loc

    def __reduce__(self):
        return (Location, (str(self), self.module))


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
#: Norm nodes: a site is named after the module of the norm its quantizer reads.
_NORM_OPS = ("fusion_kernels::rms_norm", "fusion_kernels::fused_add_rms_norm")


def source_line(node: fx.Node) -> Location:
    """Where the site at ``node`` (its quantizer or its norm) is: the user's source line that
    produced the node, "file.py:12 (fn): code", and the module path of the site's norm.

    The source line is the innermost frame outside this package (so a helper such as
    ``native_forms.quant_fp8_static`` reports its caller's line).
    """
    return Location(_user_frame(node.meta.get("stack_trace") or ""), module_path(_site_norm(node) or node))


def _user_frame(trace: str) -> str:
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    frames = [(i, m) for i, ln in enumerate(lines) if (m := _FRAME.match(ln))]
    if not frames:
        return ""
    outside = [(i, m) for i, m in frames if not os.path.abspath(m.group(1)).startswith(_PACKAGE_DIR + os.sep)]
    i, m = (outside or frames)[-1]
    code = lines[i + 1] if i + 1 < len(lines) and not _FRAME.match(lines[i + 1]) else ""
    where = f"{os.path.basename(m.group(1))}:{m.group(2)} ({m.group(3)})"
    return f"{where}: {code}" if code else where


def _site_norm(node: fx.Node, limit: int = 256) -> fx.Node | None:
    """The nearest norm upstream of ``node`` (itself included): our norm op, or the ``rsqrt`` of a
    native RMSNorm. Breadth-first over inputs, at most ``limit`` nodes."""
    seen = {node}
    queue = [node]
    for n in queue:
        if n.op == "call_function":
            schema = getattr(n.target, "_schema", None)
            if n.target is torch.ops.aten.rsqrt.default or (schema is not None and schema.name in _NORM_OPS):
                return n
        for inp in n.all_input_nodes:
            if inp not in seen and len(seen) < limit:
                seen.add(inp)
                queue.append(inp)
    return None


def module_path(node: fx.Node) -> str:
    """The path of the innermost ``nn.Module`` that produced ``node`` (from Dynamo's
    ``meta["nn_module_stack"]``), relative to the compiled module: ``layers.3.mlp``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _normalize_module_path(path if isinstance(path, str) else str(path))


def _normalize_module_path(path: str) -> str:
    # Dynamo spells paths from the frame's local: "L['self'].layers.3.norm", or with indexing
    # ("L['self'].layers[3]", "._modules['norm']") in some versions.
    path = re.sub(r"^[LG]\['[^']*'\]", "", path)
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]|\[(\d+)\]", lambda m: "." + (m.group(1) or m.group(2)), path)
    return path.lstrip(".")
