# SPDX-License-Identifier: Apache-2.0
"""The user-facing entry points: compile with the plugin, or get options to combine with yours."""

from __future__ import annotations

import weakref
from typing import Any

import torch

from fusion_passes.graph_pass import ComposedPass, FusionPass
from fusion_passes.reporting import Report

_POST_PASS = "post_grad_custom_post_pass"
_passes_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inductor_options(
    fusion_pass: FusionPass | None = None,
    *,
    options: dict[str, Any] | None = None,
    mode: str | None = None,
    **pass_kwargs: Any,
) -> dict[str, Any]:
    """Inductor ``options=`` that install the plugin, for ``torch.compile(m, options=...)``.

    ``mode`` ("max-autotune", "reduce-overhead", ...) is folded into the options, since
    torch.compile rejects ``mode`` and ``options`` together. A post-grad pass already present in
    ``options`` or in the Inductor config is chained before ours (one composite pass: a list of
    passes only works from torch 2.13). ``pass_kwargs`` go to :class:`FusionPass` when no pass
    is given.
    """
    if fusion_pass is None:
        fusion_pass = FusionPass(**pass_kwargs)
    elif pass_kwargs:
        raise TypeError("give either fusion_pass or FusionPass keyword arguments, not both")
    merged: dict[str, Any] = {}
    if mode is not None and mode != "default":
        merged.update(torch._inductor.list_mode_options(mode))
    merged.update(options or {})
    existing = merged.get(_POST_PASS)
    if existing is None:
        existing = getattr(torch._inductor.config, _POST_PASS, None)
    if existing is None or existing is fusion_pass:
        merged[_POST_PASS] = fusion_pass
    else:
        chain = list(existing) if isinstance(existing, (list, tuple)) else [existing]
        merged[_POST_PASS] = ComposedPass([*chain, fusion_pass])
    return merged


def compile(model: Any = None, *, fusion_pass: FusionPass | None = None, native: str = "auto", **kwargs: Any) -> Any:
    """``torch.compile`` with the plugin enabled for this model only.

    Accepts every ``torch.compile`` keyword (``mode`` is folded into ``options``). The pass is
    reachable afterwards through :func:`fusion_pass_of` / :func:`report`.
    """
    if model is None:  # decorator use: @fusion_passes.compile(...)
        return lambda m: compile(m, fusion_pass=fusion_pass, native=native, **kwargs)
    backend = kwargs.get("backend", "inductor")
    if backend != "inductor":
        raise ValueError(f"fusion_passes.compile needs the Inductor backend, got backend={backend!r}")
    p = fusion_pass if fusion_pass is not None else FusionPass(native=native)
    opts = inductor_options(p, options=kwargs.pop("options", None), mode=kwargs.pop("mode", None))
    compiled = torch.compile(model, options=opts, **kwargs)
    try:
        _passes_of[compiled] = p
    except TypeError:
        pass
    return compiled


def fusion_pass_of(compiled: Any) -> FusionPass:
    """The FusionPass that :func:`compile` installed for ``compiled``."""
    if isinstance(compiled, FusionPass):
        return compiled
    try:
        return _passes_of[compiled]
    except (KeyError, TypeError):
        pass
    what = type(compiled).__name__
    hint = (
        "this is the model itself: pass what fusion_passes.compile(model) returned"
        if isinstance(compiled, torch.nn.Module) and not hasattr(compiled, "_orig_mod")
        else "for torch.compile(..., options=fusion_passes.inductor_options(p)), read p.report instead"
    )
    raise TypeError(
        f"expected the object returned by fusion_passes.compile(...) or a FusionPass, got a {what} "
        f"that fusion_passes.compile did not return ({hint})"
    )


def report(compiled: Any) -> Report:
    """The report of what the plugin did while compiling ``compiled`` (grows as it recompiles).

    ``compiled`` is what :func:`compile` returned, or a :class:`FusionPass`; anything else raises
    TypeError.
    """
    return fusion_pass_of(compiled).report
