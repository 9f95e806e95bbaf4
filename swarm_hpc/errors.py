"""User-facing errors: one line that names the file, the field and the fix.

Every bad input a user can give (a spec, a cluster file, a flag) is raised as a `UserError`; the CLI prints
`str(error)` on one line to stderr and exits with code 2, without a traceback and before anything is written.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with what the user gave us, with where it is and how to fix it."""

    def __init__(self, where: str, problem: str, fix: str = "", field: str = ""):
        self.where = where
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.where}: {self.field}: " if self.field else f"{self.where}: "
        line = head + self.problem
        if self.fix:
            line += f" (fix: {self.fix})"
        return " ".join(line.split())  # always exactly one line
