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


def source_line(node: fx.Node) -> str:
    """The user's source line that produced a node, if the graph kept it: "file.py:12 (fn): code"."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        m = re.match(r'File "([^"]+)", line (\d+), in (\S+)', lines[i])
        if m:
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            where = f"{os.path.basename(m.group(1))}:{m.group(2)} ({m.group(3)})"
            return f"{where}: {code}" if code else where
    return ""
