# SPDX-License-Identifier: Apache-2.0
"""What the pass did: per site, per graph, per pass instance, including graphs that Inductor's
cache served without running the pass."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("fusion_passes")


@dataclasses.dataclass
class Site:
    """One norm -> quant site the pass looked at."""

    graph: int
    pattern: str
    fused: bool
    detail: str  # the fused op, or the refusal reason
    node: str  # the node's name in the post-grad graph: the fused op, or the quant/norm refused
    where: str = ""  # the user's source line, when the graph kept it
    note: str = ""  # extra detail of a refusal
    module: str = ""  # module path of the site's norm ("layers.3.post_attention_layernorm")

    def __post_init__(self) -> None:
        # fx_utils.source_line returns a str that also carries the module path.
        if not self.module:
            self.module = getattr(self.where, "module", "") or ""
        self.where = str(self.where)

    @property
    def name(self) -> str:
        """The site's name: its module path and its graph node."""
        return f"{self.module}, node {self.node}" if self.module else f"node {self.node}"

    @property
    def outcome(self) -> str:
        if self.fused:
            return f"{self.pattern} -> {self.detail}"
        return f"{self.pattern} refused: {self.detail}" + (f" ({self.note})" if self.note else "")

    def line(self) -> str:
        """One line (for logs)."""
        loc = f"  [{self.where}]" if self.where else ""
        return f"graph {self.graph}  {self.name}: {self.outcome}{loc}"

    def lines(self) -> list[str]:
        """The site as the text report shows it: name, outcome, source line."""
        head = f"graph {self.graph}  "
        out = [head + self.name, " " * len(head) + self.outcome]
        if self.where:
            out.append(" " * len(head) + "at " + self.where)
        return out


@dataclasses.dataclass
class GraphReport:
    index: int
    sites: list[Site] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    norms: int = 0  # norm-like nodes seen (ours or native rsqrt-based)
    quants: int = 0  # quant-like nodes seen (ours or casts to fp8/int8)
    from_cache: bool = False  # served by Inductor's cache: the sites are the ones recorded when compiled
    compiled_fn: str = ""  # Dynamo's name of the compiled function (depyf names its dumps after it)

    @property
    def fused(self) -> int:
        return sum(s.fused for s in self.sites)

    @property
    def refused(self) -> int:
        return sum(not s.fused for s in self.sites)


class Report:
    """Everything one FusionPass instance did, across all the graphs it was called on.

    A graph that Inductor's FX graph cache (or AOTAutograd's cache) serves does not reach the
    pass; it is listed all the same, marked ``from_cache``, with the sites recorded when that
    code was compiled (see :func:`cache_lookup_started`).
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
        """A graph the pass is about to rewrite (called by the pass, inside a compile)."""
        with self._lock:
            g = GraphReport(len(self.graphs), compiled_fn=_current_compiled_fn())
            self.graphs.append(g)
        _awaiting_output_code().append((self, g))
        return g

    def add_cached_graph(self, recorded: dict[str, Any] | None, code: str) -> GraphReport:
        """A graph served from Inductor's cache: its sites as recorded when it was compiled, or,
        if no record is found, the fused ops read from its output code."""
        with self._lock:
            g = GraphReport(len(self.graphs), from_cache=True, compiled_fn=_current_compiled_fn())
            self.graphs.append(g)
        if recorded is not None:
            g.norms, g.quants = recorded.get("norms", 0), recorded.get("quants", 0)
            fields = {f.name for f in dataclasses.fields(Site)} - {"graph"}
            for s in recorded.get("sites", []):
                g.sites.append(Site(**{k: v for k, v in s.items() if k in fields}, graph=g.index))
        else:
            for i, (buf, op) in enumerate(_FUSED_CALL.findall(code)):
                g.sites.append(Site(g.index, "(recorded elsewhere: read from the cached output code)", True, op,
                                    f"{buf} (output code)" if buf else f"call {i}"))  # fmt: skip
        log.info(
            "fusion_passes: graph %d served from Inductor's cache: %d site(s) fused, %d refused (%s)",
            g.index,
            g.fused,
            g.refused,
            "as recorded when it was compiled" if recorded is not None else "read from the output code",
        )
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

    @property
    def graphs_from_cache(self) -> int:
        return sum(g.from_cache for g in self.graphs)

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
            "graphs_from_cache": self.graphs_from_cache,
            "fused": self.fused,
            "refused": self.refused,
            "matches_per_pattern": dict(self.matches_per_pattern()),
            "refusals_per_reason": dict(self.refusals_per_reason()),
            "active_patterns": self.active_patterns,
            "inactive_patterns": self.inactive_patterns,
            "sites": [dataclasses.asdict(s) for s in self.sites],
        }

    def __str__(self) -> str:
        cached = self.graphs_from_cache
        out = [
            "fusion_passes report",
            f"  platform: {self.platform}",
            f"  library:  {self.library}",
            f"  native:   {self.native}",
            f"  graphs: {len(self.graphs)}"
            + (f" ({cached} served from Inductor's cache)" if cached else "")
            + f"   sites fused: {self.fused}   refused: {self.refused}",
        ]
        if not self.graphs:
            out += [
                "  no graph reached this pass yet: a compiled model compiles on its first call.",
                "  (A graph served from Inductor's FX graph cache is listed with the sites recorded when it",
                "  was compiled; to compile afresh, set torch._inductor.config.force_disable_caches = True.)",
            ]
        if cached:
            out.append("  (a graph from the cache lists the sites recorded when its code was compiled)")
        if self.sites:
            out.append("  sites:")
            out += ["    " + line for s in self.sites for line in s.lines()]
        if self.fused:
            out.append("  fused per pattern:")
            out += [f"    {n:4d}  {p}" for p, n in sorted(self.matches_per_pattern().items())]
        if self.refused:
            out.append("  refusals per reason:")
            out += [f"    {n:4d}  {r}" for r, n in sorted(self.refusals_per_reason().items())]
        out.append(f"  active patterns: {len(self.active_patterns)}")
        if self.inactive_patterns:
            out.append(f"  inactive patterns: {len(self.inactive_patterns)}")
            out += ["    " + line for line in _inactive_by_reason(self.inactive_patterns)]
        return "\n".join(line.rstrip() for line in out)

    __repr__ = __str__  # readable in a REPL and in assertion messages


def _inactive_by_reason(inactive: dict[str, str], names_up_to: int = 6) -> list[str]:
    """Inactive patterns grouped by reason ("rms_norm: the op library is disabled (...)" and
    "fused_add_rms_norm: the op library is disabled (...)" share one), the names listed for small
    groups (report.json and ``python -m fusion_passes report`` list them all)."""
    groups: dict[str, list[str]] = {}
    # Other libraries' ops that this process has not loaded: one line for all of them (their
    # patterns become active where the library is imported), the ops named by library.
    foreign: dict[str, set[str]] = {}
    foreign_patterns = 0
    for name, why in sorted(inactive.items()):
        f = _NOT_LOADED.match(why)
        if f:
            foreign.setdefault(f.group(2), set()).add(f.group(1))
            foreign_patterns += 1
            continue
        m = re.match(r"\w+: (.+)$", why)
        groups.setdefault(m.group(1) if m else why, []).append(name)
    out = []
    for why, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        out.append(f"{len(names)}: {why}" + (f" ({', '.join(names)})" if len(names) <= names_up_to else ""))
    if foreign:
        libs = "; ".join(f"{lib}: {', '.join(sorted(ops))}" for lib, ops in sorted(foreign.items()))
        out.append(f"{foreign_patterns}: other libraries' ops, not loaded in this process ({libs}); "
                   "their patterns are active where the library is imported")  # fmt: skip
    return out


_NOT_LOADED = re.compile(r"torch\.ops\.(\S+): not loaded \(defined by (.+)\)$")


# -- graphs served from Inductor's cache ------------------------------------------------------
#
# On a cache hit Inductor neither runs the post-grad passes nor tells them; it does call
# ``GraphLowering.save_output_code(code)`` with the output code, on a miss (after the passes ran)
# and on a hit alike, inside the compile, where the Inductor config holds the compile's passes.
# So: on a miss the sites the pass just recorded are stored beside Inductor's cache, keyed by a
# hash of the output code (the cached artifact: a hit loads exactly that text); on a hit they
# are read back into the report of every FusionPass of that compile. The hook is (re)installed
# whenever a compile looks our pass up in a cache key (FusionPass.uuid), because
# ``torch._inductor.utils.run_and_get_code`` replaces it for its duration; it chains whatever
# was installed before it.

_FUSED_CALL = re.compile(r"(?:(\w+) = )?torch\.ops\.fusion_kernels\.((?:fused_add_)?rms_norm_\w*quant\w*)\.default\(")
_STORE_SUBDIR = "fusion_passes_sites"
_thread = threading.local()


def _awaiting_output_code() -> list[tuple[Report, GraphReport]]:
    if not hasattr(_thread, "awaiting"):
        _thread.awaiting = []
    return _thread.awaiting


def cache_lookup_started() -> None:
    """Called by FusionPass.uuid(), which Inductor calls when it builds a cache key: a compile
    with this pass is starting here. Makes sure the output-code hook is installed."""
    _awaiting_output_code().clear()  # left over only by a compile that failed before codegen
    try:
        from torch._inductor.graph import GraphLowering
    except ImportError:  # pragma: no cover - an Inductor without it: hits are simply not listed
        return
    if not isinstance(GraphLowering.save_output_code, _OutputCodeHook):
        GraphLowering.save_output_code = _OutputCodeHook(GraphLowering.save_output_code)


class _OutputCodeHook:
    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, code: str) -> None:
        if not getattr(_thread, "in_hook", False):  # one of ours further down the chain: once only
            _thread.in_hook = True
            try:
                _record_output_code(code)
            except Exception as exc:  # reporting must never break a compile
                log.debug("fusion_passes: could not record the output code of a graph: %r", exc)
            finally:
                _thread.in_hook = False
        if self.previous is not None:
            self.previous(code)


def _record_output_code(code: str) -> None:
    from torch._inductor import config

    key = hashlib.sha256(code.encode()).hexdigest()[:40]
    awaiting = list(_awaiting_output_code())
    _awaiting_output_code().clear()
    passes = fusion_passes_in(config.post_grad_custom_post_pass)
    if awaiting:  # a miss: the pass ran on this graph just before codegen
        if config.force_disable_caches or not config.fx_graph_cache:
            return
        by_report = {id(p.report): p for p in passes}
        entries = {}
        for report, g in awaiting:
            p = by_report.get(id(report))
            if p is not None:
                entries[p.uuid()] = {"sites": [dataclasses.asdict(s) for s in g.sites],
                                     "norms": g.norms, "quants": g.quants}  # fmt: skip
        if entries:
            _store(key, entries)
        return
    if passes:  # a hit
        recorded = _load(key)
        for p in passes:
            p.report.add_cached_graph(recorded.get(p.uuid()), code)


def fusion_passes_in(obj: Any) -> list[Any]:
    """The FusionPass instances in a post-grad pass setting (a pass, a composite, a list)."""
    if isinstance(obj, (list, tuple)):
        return [p for item in obj for p in fusion_passes_in(item)]
    if isinstance(getattr(obj, "report", None), Report) and callable(getattr(obj, "uuid", None)):
        return [obj]
    inner = getattr(obj, "passes", None)
    return fusion_passes_in(inner) if isinstance(inner, (list, tuple)) else []


def _store_dir() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / _STORE_SUBDIR


def _store(key: str, entries: dict[str, Any]) -> None:
    path = _store_dir() / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**_load(key), **entries}
    tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _load(key: str) -> dict[str, Any]:
    try:
        return json.loads((_store_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return {}


def _current_compiled_fn() -> str:
    """Dynamo's name of the function being compiled ("__compiled_fn_3"): Dynamo numbers it from
    a counter just before it calls the backend, and depyf names its dumps after it."""
    try:
        from torch._dynamo import bytecode_transformation as bt

        return f"__compiled_fn_{next(copy.copy(bt._unique_id_counter)) - 1}"
    except Exception:
        return ""
