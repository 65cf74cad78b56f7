# SPDX-License-Identifier: Apache-2.0
"""The native-torch form (placeholder until the catalogue lands)."""

from __future__ import annotations


class NativeMatcher:
    def __init__(self, registry, native, wanted) -> None:
        self.inactive: dict[str, str] = {}

    def all_names(self) -> set[str]:
        return set()

    def active_names(self) -> list[str]:
        return []

    def apply(self, graph, g) -> bool:
        return False
