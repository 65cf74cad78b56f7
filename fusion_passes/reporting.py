# SPDX-License-Identifier: Apache-2.0
"""What the pass did: per site, per graph, per pass instance."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any


@dataclasses.dataclass
class Site:
    """One norm -> quant site the pass looked at."""

    graph: int
    pattern: str
    fused: bool
    detail: str  # the fused op, or the refusal reason
    node: str  # the quant node's name in the post-grad graph
    where: str = ""  # the user's source line, when the graph kept it
    note: str = ""  # extra detail of a refusal

    def line(self) -> str:
        what = (
            f"-> {self.detail}" if self.fused else f"refused: {self.detail}" + (f" ({self.note})" if self.note else "")
        )
        loc = f"  [{self.where}]" if self.where else ""
        return f"graph {self.graph}  {self.pattern:55s} {what}{loc}"


@dataclasses.dataclass
class GraphReport:
    index: int
    sites: list[Site] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    norms: int = 0  # norm-like nodes seen (ours or native rsqrt-based)
    quants: int = 0  # quant-like nodes seen (ours or casts to fp8/int8)

    @property
    def fused(self) -> int:
        return sum(s.fused for s in self.sites)

    @property
    def refused(self) -> int:
        return sum(not s.fused for s in self.sites)


class Report:
    """Everything one FusionPass instance did, across all the graphs it was called on.

    Graphs served from Inductor's FX graph cache do not reach the pass, so they do not appear
    here (their fused code comes from the cache).
    """

    def __init__(self, active: list[str], inactive: dict[str, str], library: str, platform: str, native: str):
        self.active_patterns = list(active)
        self.inactive_patterns = dict(inactive)
        self.library = library
        self.platform = platform
        self.native = native
        self.graphs: list[GraphReport] = []
        self._lock = threading.Lock()

    def new_graph(self) -> GraphReport:
        with self._lock:
            g = GraphReport(len(self.graphs))
            self.graphs.append(g)
            return g

    @property
    def sites(self) -> list[Site]:
        return [s for g in self.graphs for s in g.sites]

    @property
    def fused(self) -> int:
        return sum(g.fused for g in self.graphs)

    @property
    def refused(self) -> int:
        return sum(g.refused for g in self.graphs)

    def matches_per_pattern(self) -> Counter[str]:
        return Counter(s.pattern for s in self.sites if s.fused)

    def fused_ops(self) -> Counter[str]:
        return Counter(s.detail for s in self.sites if s.fused)

    def refusals_per_reason(self) -> Counter[str]:
        return Counter(s.detail for s in self.sites if not s.fused)

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "library": self.library,
            "native": self.native,
            "graphs": len(self.graphs),
            "fused": self.fused,
            "refused": self.refused,
            "matches_per_pattern": dict(self.matches_per_pattern()),
            "refusals_per_reason": dict(self.refusals_per_reason()),
            "active_patterns": self.active_patterns,
            "inactive_patterns": self.inactive_patterns,
            "sites": [dataclasses.asdict(s) for s in self.sites],
        }

    def __str__(self) -> str:
        out = [
            "fusion_passes report",
            f"  platform: {self.platform}",
            f"  library:  {self.library}",
            f"  native:   {self.native}",
            f"  graphs: {len(self.graphs)}   sites fused: {self.fused}   refused: {self.refused}",
        ]
        if not self.graphs:
            out += [
                "  no graph reached the pass yet: a graph served from Inductor's FX graph cache skips it",
                "  (its code, fused or not, comes from the cache). To see the sites, compile with",
                "  torch._inductor.config.force_disable_caches = True or use fusion_passes.inspect().",
            ]
        if self.sites:
            out.append("  sites:")
            out += ["    " + s.line() for s in self.sites]
        if self.fused:
            out.append("  fused per pattern:")
            out += [f"    {n:4d}  {p}" for p, n in sorted(self.matches_per_pattern().items())]
        if self.refused:
            out.append("  refusals per reason:")
            out += [f"    {n:4d}  {r}" for r, n in sorted(self.refusals_per_reason().items())]
        out.append(f"  active patterns: {len(self.active_patterns)}")
        if self.inactive_patterns:
            out.append(f"  inactive patterns: {len(self.inactive_patterns)}")
            out += [f"    {p}: {why}" for p, why in sorted(self.inactive_patterns.items())]
        return "\n".join(out)

    __repr__ = __str__  # readable in a REPL and in assertion messages
