"""Errors meant for people: a stable code, what went wrong, what to do.

The CLI prints these as one line each and exits non-zero; anything else that
escapes is a bug and is reported as such, still without a traceback unless
TUNEFORGE_DEBUG=1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem with the user's input, printed as `WHERE: CODE: message`."""

    code: str
    message: str
    where: str = ""

    def line(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.code}: {self.message}"


class TuneforgeError(Exception):
    """One or more problems that stop a command; exit status `exit_code`."""

    def __init__(self, problems: list[Problem] | Problem, exit_code: int = 2, hint: str = ""):
        self.problems = problems if isinstance(problems, list) else [problems]
        self.exit_code = exit_code
        self.hint = hint
        super().__init__("\n".join(p.line() for p in self.problems))


def fail(code: str, message: str, where: str = "", exit_code: int = 2) -> TuneforgeError:
    """Build a single-problem error, for `raise fail(...)`."""
    return TuneforgeError(Problem(code, message, where), exit_code=exit_code)
