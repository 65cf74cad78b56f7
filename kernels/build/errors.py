# SPDX-License-Identifier: Apache-2.0
"""A build that cannot happen: the error users see (one line: what is wrong, how to fix it,
where the full log is), and the short reason pulled out of a compiler's output."""

from __future__ import annotations

import re
from pathlib import Path

#: How to get the library when this machine cannot build it.
TOOLCHAIN_HINT = 'Install g++, set CXX to a C++17 compiler, or use the prebuilt wheel (README "Building").'
#: What to do when the compiler ran and failed.
COMPILE_HINT = 'Set CXX to another C++17 compiler, or use the prebuilt wheel (README "Building").'


class BuildError(RuntimeError):
    """The library could not be built. ``str()`` is the one-line message for users.

    ``reason`` says what is missing or what failed, ``hint`` how to fix it, ``log`` is the file
    holding everything the build printed (the message never carries the log itself).
    """

    def __init__(self, reason: str, hint: str = "", log: str | Path | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.log = str(log) if log is not None else None

    @property
    def short(self) -> str:
        """What is wrong, without the fix and the log (for reports and tables)."""
        return f"cannot build the op library: {self.reason}"

    def __str__(self) -> str:
        text = f"{self.short}."
        if self.hint:
            text += f" {self.hint}"
        if self.log:
            text += f" Log: {self.log}"
        return text


_ERROR_LINE = re.compile(r"(\berror\b|\bnot found\b|No such file)", re.IGNORECASE)


def summarize(output: str, returncode: int, limit: int = 200) -> str:
    """The first line of a failed ninja run that says what went wrong, shortened."""
    failed = ""
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("FAILED:") and not failed:
            failed = Path(line.split()[-1]).name.removesuffix(".o")
        elif _ERROR_LINE.search(line) and not line.startswith(("ninja:", "FAILED:")):
            line = line if len(line) <= limit else line[: limit - 3] + "..."
            return f"compiling {failed} failed: {line}" if failed else line
    return f"compiling {failed} failed" if failed else f"ninja exited with code {returncode}"


def write_log(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
