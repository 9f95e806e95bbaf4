"""Job-script templates: Jinja2 files in jobs/templates/, overridable by a user's own template folder.

Every value a user wrote reaches a script through one of two filters, so that it can never run as shell:
- `q`: shell-quotes a value for the script body (`SWARM_TASK={{ task | q }}`);
- `directive`: makes a value safe for an `#SBATCH --opt=value` line (no newlines, quoted when it needs it),
  which sbatch parses itself, not the shell;
- `oneline`: for text in a comment line (no newline can end the comment early).
Templates are rendered with StrictUndefined: a missing value is an error, never an empty string.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2

from swarm_hpc.errors import UserError

SHIPPED = Path(__file__).resolve().parents[2] / "jobs" / "templates"
_PLAIN_DIRECTIVE = re.compile(r"^[A-Za-z0-9_./:%@+,=-]*$")


def directive(value: Any) -> str:
    """A value for an #SBATCH line: control characters removed; double-quoted unless plainly safe."""
    text = oneline(value).strip()
    if _PLAIN_DIRECTIVE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def oneline(value: Any) -> str:
    """Text for a comment line: control characters (newlines above all) become spaces."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", str(value))


def q(value: Any) -> str:
    return shlex.quote(str(value))


def environment(user_dir: Path | None = None) -> jinja2.Environment:
    dirs = []
    user_dir = user_dir or (Path(os.environ["SWARM_HPC_TEMPLATES"]) if os.environ.get("SWARM_HPC_TEMPLATES") else None)
    if user_dir is not None:
        if not Path(user_dir).is_dir():
            raise UserError(str(user_dir), "template folder not found", "give a folder of .j2 templates, or leave --templates out")
        dirs.append(str(user_dir))
    dirs.append(str(SHIPPED))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(dirs), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["q"] = q
    env.filters["directive"] = directive
    env.filters["oneline"] = oneline
    return env


def render(name: str, user_dir: Path | None = None, **values: Any) -> str:
    try:
        return environment(user_dir).get_template(name).render(**values)
    except jinja2.TemplateNotFound:
        raise UserError(name, "job template not found", f"it ships in {SHIPPED}; a --templates folder may override it") from None
    except jinja2.TemplateError as e:
        raise UserError(name, f"template error: {e}", "fix the template (a user template must use the same variables)") from None
