"""User-facing errors: one line that names the file, the field and the fix.

Every bad input a user can give (a spec, a cluster file, a flag) is raised as a `UserError`; the CLI prints
`str(error)` on one line to stderr and exits with code 2, without a traceback and before anything is written.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

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


def regular_file(path: Path, where: str, what: str, field: str = "") -> Path:
    """`path` if it is a regular file (symlinks followed), else a UserError: never a hang on a FIFO or a
    traceback on a symlink loop."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(where, f"{what} {str(path)!r} does not exist", "check the path", field) from None
    except OSError as e:
        why = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
        raise UserError(where, f"{what} {str(path)!r} {why}", "give the path of a real file", field) from None
    if stat.S_ISDIR(mode):
        raise UserError(where, f"{what} {str(path)!r} is a directory", "give the path of a file", field)
    if not stat.S_ISREG(mode):
        raise UserError(where, f"{what} {str(path)!r} is not a regular file (a FIFO, socket or device)",
                        "give the path of a real file", field)
    return Path(path)
