# SPDX-License-Identifier: Apache-2.0
"""The matchers: our custom-op form (custom_op) and plain torch (native)."""


class Refusal(Exception):
    """A site that looks fusable but is not provably equivalent here (or has no kernel)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

