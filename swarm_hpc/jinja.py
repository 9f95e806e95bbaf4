"""The one Jinja2 environment: every template the project renders lives in swarm_hpc/templates/.

    jobs/      sbatch and srun scripts (a user's --templates folder overrides them by name)
    cluster/   slurm.conf, hosts, Ansible inventory, cloud-init boot files

Every value a user wrote reaches a script through a filter, so that it can never run as shell:
- `q`: shell-quotes a value for the script body (`SWARM_TASK={{ task | q }}`);
- `directive`: makes a value safe for an `#SBATCH --opt=value` line (no newlines, quoted when it needs it),
  which sbatch parses itself, not the shell;
- `oneline`: for text in a comment line (no newline can end the comment early);
- `yaml` / `toml`: a scalar for a YAML or TOML file (JSON quoting is valid in both).
Templates are rendered with StrictUndefined: a missing value is an error, never an empty string.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2

from swarm_hpc.errors import UserError

SHIPPED = Path(__file__).resolve().parent / "templates"
JOBS = SHIPPED / "jobs"
MPI_ENV = JOBS / "mpi-env.sh"   # Open MPI settings: job scripts include it (and the local cluster's tests source it)
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


def yaml_scalar(value: Any) -> str:
    """A YAML scalar or flow list: JSON is valid YAML, so quoting is never wrong."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)


def toml_string(value: Any) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(str(value))


def environment(user_jobs_dir: Path | None = None) -> jinja2.Environment:
    """The environment; `user_jobs_dir` (or $SWARM_HPC_TEMPLATES): a folder whose templates replace the
    shipped job templates of the same name."""
    if user_jobs_dir is None and os.environ.get("SWARM_HPC_TEMPLATES"):
        user_jobs_dir = Path(os.environ["SWARM_HPC_TEMPLATES"])
    loaders: list[jinja2.BaseLoader] = []
    if user_jobs_dir is not None:
        if not Path(user_jobs_dir).is_dir():
            raise UserError(str(user_jobs_dir), "template folder not found",
                            "give a folder of .j2 templates, or leave --templates out")
        loaders.append(jinja2.PrefixLoader({"jobs": jinja2.FileSystemLoader(str(user_jobs_dir))}))
    loaders.append(jinja2.FileSystemLoader(str(SHIPPED)))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(q=q, directive=directive, oneline=oneline, yaml=yaml_scalar, toml=toml_string)
    return env


def render_job(name: str, user_dir: Path | None = None, **values: Any) -> str:
    """Render the job template `name` (e.g. "swarm.sbatch.j2"); template problems are one-line UserErrors."""
    try:
        return environment(user_dir).get_template(f"jobs/{name}").render(**values)
    except jinja2.TemplateNotFound:
        raise UserError(name, "job template not found",
                        f"it ships in {JOBS}; a --templates folder may override it") from None
    except jinja2.TemplateError as e:
        raise UserError(name, f"template error: {e}",
                        "fix the template (a user template must use the same variables)") from None
