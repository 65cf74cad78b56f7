# SPDX-License-Identifier: Apache-2.0
"""The error a build that cannot happen raises."""

from __future__ import annotations


class BuildError(RuntimeError):
    """The library could not be compiled or linked (the message carries the compiler output)."""
