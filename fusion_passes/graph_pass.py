# SPDX-License-Identifier: Apache-2.0
"""FusionPass: the Inductor post-grad pass, and ComposedPass to chain it with a user's pass."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

import fusion_kernels
from fusion_kernels import platform
from fusion_passes import fx_utils, policy
from fusion_passes.patterns import Refusal, custom_op
from fusion_passes.patterns import foreign as foreign_patterns
from fusion_passes.registry import NORM_OP_NAMES, get_registry
from fusion_passes.reporting import GraphReport, Report, Site, cache_lookup_started

log = logging.getLogger("fusion_passes")

_PACKAGE_DIR = Path(__file__).resolve().parent
#: Set by ``python -m fusion_passes inspect``: every pass created in the process dumps its graphs
#: there (one subdirectory per pass) and, with NATIVE_ENV, uses that native policy.
DUMP_ENV = "FUSION_PASSES_DUMP_DIR"
NATIVE_ENV = "FUSION_PASSES_NATIVE"
_created: list[weakref.ref] = []
_created_lock = threading.Lock()


def created_passes() -> list[FusionPass]:
    """The FusionPass instances of this process that are still alive, oldest first."""
    with _created_lock:
        return [p for r in _created if (p := r()) is not None]


_QUANT_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8)


class FusionPass(CustomGraphPass):
    """Rewrites RMSNorm (+ residual add) -> quantize into one fused op.

    Args:
        native: "auto" (rewrite plain-torch sites only where our kernel measured faster than
            Inductor's, see :mod:`fusion_passes.policy`), "always", or "never".
        patterns: names of the patterns to enable (default: all that the library supports).
        dump_dir: write each graph before and after the pass there (``graph_<n>_before.py``).

    Building the pass loads (and on first use compiles) the op library, so nothing is built
    inside a compile. Statistics accumulate in :attr:`report`.
    """

    def __init__(
        self,
        native: str = "auto",
        patterns: Iterable[str] | None = None,
        dump_dir: str | os.PathLike | None = None,
    ) -> None:
        native = os.environ.get(NATIVE_ENV) or native
        if native not in policy.NATIVE_MODES:
            raise ValueError(f"native must be one of {policy.NATIVE_MODES}, got {native!r}")
        self.native = native
        with _created_lock:
            _created.append(weakref.ref(self))
            index = len(_created) - 1
        if dump_dir is None and os.environ.get(DUMP_ENV):
            dump_dir = Path(os.environ[DUMP_ENV]) / f"pass{index}"
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        fusion_kernels.load()
        self.registry = get_registry(refresh=True)
        wanted = set(patterns) if patterns is not None else None
        self.custom_patterns: list[custom_op.CustomOpPattern] = []
        inactive: dict[str, str] = {}
        for p in custom_op.all_patterns():
            if wanted is not None and p.name not in wanted:
                inactive[p.name] = "not selected (patterns=...)"
                continue
            why = p.unavailable_reason(self.registry)
            if why:
                inactive[p.name] = why
            else:
                self.custom_patterns.append(p)
        from fusion_passes.patterns import native as native_patterns

        self.native_matcher = native_patterns.NativeMatcher(self.registry, native, wanted)
        inactive.update(self.native_matcher.inactive)
        self.foreign_matcher = foreign_patterns.ForeignMatcher(self.registry, native, wanted)
        inactive.update(self.foreign_matcher.inactive)
        if wanted is not None:
            known = {p.name for p in custom_op.all_patterns()} | self.native_matcher.all_names()
            known |= self.foreign_matcher.all_names()
            unknown = wanted - known
            if unknown:
                raise ValueError(f"unknown pattern names: {sorted(unknown)}")
        active = [p.name for p in self.custom_patterns] + self.native_matcher.active_names()
        active += self.foreign_matcher.active_names()
        self.report = Report(active, inactive, self.registry.library, platform.describe(), policy.describe(native))
        if not active:
            log.warning("fusion_passes: no pattern is active (%s)", self.registry.library)
        self._uuid: str | None = None

    # -- CustomGraphPass ---------------------------------------------------------------------

    def __call__(self, graph: fx.Graph) -> None:
        start = time.perf_counter()
        g = self.report.new_graph()
        self._dump(graph, g.index, "before")
        g.norms, g.quants = _count_norms_and_quants(graph, include_native=self.native != "never")
        changed = False
        for pattern in self.custom_patterns:
            changed |= self._apply_custom(graph, pattern, g)
        changed |= self.foreign_matcher.apply(graph, g)
        if self.native != "never":
            changed |= self.native_matcher.apply(graph, g)
        if changed:
            fx_utils.stable_topological_sort(graph)
            graph.lint()
        g.seconds = time.perf_counter() - start
        self._dump(graph, g.index, "after")
        self._log(g)

    def uuid(self) -> str:
        cache_lookup_started()  # a compile looks this pass up: lets the report see cache hits
        if self._uuid is None:
            h = hashlib.sha256()
            for path in sorted(_PACKAGE_DIR.rglob("*.py")):
                h.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
                h.update(path.read_bytes())
            h.update(repr(sorted(self.report.active_patterns)).encode())
            h.update(repr(sorted(self.report.inactive_patterns.items())).encode())
            h.update(f"native={self.native};dump={self.dump_dir}".encode())
            h.update(repr(sorted(policy.MEASURED_FASTER.items())).encode())
            h.update("\n".join(self.registry.schemas()).encode())
            h.update("\n".join(self.foreign_matcher.schemas()).encode())  # other libraries' ops
            # What the library is, not how it was obtained (a fresh build and the cached one must
            # give the same key, or every second run misses the FX graph cache).
            h.update(fusion_kernels.state().identity.encode())
            h.update(torch.__version__.encode())
            h.update(str(platform.is_rocm()).encode())
            self._uuid = h.hexdigest()
        return self._uuid

    def __deepcopy__(self, memo):
        # Inductor deep-copies its config (which holds the pass) per compile: keep one pass so
        # that its report sees every compile.
        return self

    def __copy__(self):
        return self

    # -- internals ---------------------------------------------------------------------------

    def _apply_custom(self, graph: fx.Graph, pattern: custom_op.CustomOpPattern, g: GraphReport) -> bool:
        changed = False
        for qnode in pattern.sites(graph):
            if qnode.graph is not graph or qnode not in graph.nodes:  # erased by an earlier rewrite
                continue
            m = pattern.match(qnode)
            if m is None:
                continue
            where = fx_utils.source_line(qnode)
            try:
                key = pattern.check(m, self.registry)
            except Refusal as r:
                g.sites.append(Site(g.index, pattern.name, False, r.reason, qnode.name, where, r.detail))
                continue
            fused = pattern.rewrite(graph, m, key, self.registry)
            note = "normalised output returned too" if m.norm_out_tail is not None else ""
            g.sites.append(Site(g.index, pattern.name, True, _op_name(fused.target), fused.name, where, note))
            changed = True
        return changed

    def _dump(self, graph: fx.Graph, index: int, stage: str) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        try:
            text = graph.python_code(root_module="self").src
        except Exception:  # a graph FX cannot print as code is still worth seeing
            text = str(graph)
        (self.dump_dir / f"graph_{index}_{stage}.py").write_text(text)

    def _log(self, g: GraphReport) -> None:
        log.info(
            "fusion_passes: graph %d: %d site(s) fused, %d refused (%.1f ms)",
            g.index,
            g.fused,
            g.refused,
            g.seconds * 1e3,
        )
        for s in g.sites:
            log.debug("fusion_passes: %s", s.line())
        if g.fused == 0 and g.norms and g.quants and self.report.active_patterns:  # else __init__ said why
            log.warning(
                "fusion_passes: graph %d has %d norm(s) and %d quantization(s) but nothing was fused%s",
                g.index,
                g.norms,
                g.quants,
                (": " + ", ".join(sorted({s.detail for s in g.sites})))
                if g.sites
                else " (no supported spelling matched; see the README's catalogue)",
            )


class ComposedPass(CustomGraphPass):
    """Runs several post-grad passes in order (a list there only works from torch 2.13)."""

    def __init__(self, passes: Sequence) -> None:
        self.passes = list(passes)

    def __call__(self, graph: fx.Graph) -> None:
        for p in self.passes:
            p(graph)

    def __deepcopy__(self, memo):
        return self

    def uuid(self):
        parts = []
        for p in self.passes:
            u = p.uuid() if isinstance(p, CustomGraphPass) else None
            if not u:
                return None  # a pass without a uuid makes the whole chain uncacheable
            parts.append(u if isinstance(u, str) else repr(u))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _op_name(target) -> str:
    return target._schema.name.split("::")[-1] if hasattr(target, "_schema") else str(target)


def _count_norms_and_quants(graph: fx.Graph, include_native: bool) -> tuple[int, int]:
    """Norm-like and quant-like nodes: the basis of the "nothing fused" warning."""
    ns = torch.ops.fusion_kernels
    norm_targets = {getattr(ns, n).default for n in NORM_OP_NAMES.values() if hasattr(ns, n)}
    if include_native:
        norm_targets |= {torch.ops.aten.rsqrt.default}
    norms = quants = 0
    quant_names = {f.quant_op for f in custom_op.FAMILIES}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in norm_targets:
            norms += 1
        elif (
            getattr(node.target, "_schema", None) is not None
            and node.target._schema.name.split("::")[-1] in quant_names
        ):
            quants += 1
        elif node.target in (torch.ops.prims.convert_element_type.default, torch.ops.aten._to_copy.default):
            v = node.meta.get("val")
            if isinstance(v, torch.Tensor) and v.dtype in _QUANT_DTYPES:
                quants += 1
    return norms, quants
