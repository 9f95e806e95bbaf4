"""Check boot files with cloud-init's own code, when cloud-init is installed here (Debian package `cloud-init`).

cloud-init lives in the system Python, not in our virtual environment, so the check runs as a small script under
the interpreter of the `cloud-init` command: user-data against cloud-init's JSON schema (strictly, plus a check
that every top-level key belongs to some module, which the schema itself does not enforce), network-config
through cloud-init's network-state parser (the code that turns it into netplan/NetworkManager files on the
blade), meta-data as a mapping with an instance-id.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHECK_SCRIPT = r'''
import json, sys, yaml
problems = {}
def add(name, text):
    problems.setdefault(name, []).append(" ".join(str(text).split()))
files = json.loads(sys.argv[1])
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
from cloudinit.net import network_state
text = open(files["user-data"], encoding="utf-8").read()
if not text.startswith("#cloud-config\n"):
    add("user-data", "does not start with the line #cloud-config")
try:
    config = yaml.safe_load(text)
except yaml.YAMLError as e:
    add("user-data", f"not YAML: {e}")
    config = None
if config is not None:
    schema = get_schema()
    try:
        validate_cloudconfig_schema(config, schema, strict=True, log_details=False)
    except SchemaValidationError as e:
        add("user-data", e)
    known = set(schema.get("properties", {}))
    for part in schema.get("$defs", {}).values():
        known |= set(part.get("properties", {}))
    for key in config if isinstance(config, dict) else ():
        if key not in known:
            add("user-data", f"unknown key {key!r}: no cloud-init module reads it")
try:
    net = yaml.safe_load(open(files["network-config"], encoding="utf-8"))
    network_state.parse_net_config_data(net, skip_broken=False)
except Exception as e:
    add("network-config", f"{type(e).__name__}: {e}")
try:
    meta = yaml.safe_load(open(files["meta-data"], encoding="utf-8"))
    if not isinstance(meta, dict) or not isinstance(meta.get("instance-id"), str):
        add("meta-data", "needs a mapping with a string instance-id")
except Exception as e:
    add("meta-data", f"{type(e).__name__}: {e}")
print(json.dumps(problems))
'''


@dataclass(frozen=True)
class Validation:
    checked: bool                      # False: cloud-init is not installed here, nothing was checked
    problems: dict[str, list[str]]     # file name -> problems (empty when valid)
    version: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def cloud_init_python() -> tuple[str, str] | None:
    """(interpreter, version) of the installed cloud-init command, or None."""
    exe = shutil.which("cloud-init")
    if not exe:
        return None
    try:
        first = Path(exe).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    if not first.startswith("#!"):
        return None
    interpreter = first[2:].strip().split()[0]
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60,
                                 check=False).stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "?"
    return interpreter, version


def validate_boot_dir(folder: Path) -> Validation:
    """Check user-data, network-config and meta-data in `folder` with cloud-init's code."""
    found = cloud_init_python()
    if found is None:
        return Validation(False, {})
    interpreter, version = found
    files = {name: str(Path(folder) / name) for name in ("user-data", "network-config", "meta-data")}
    proc = subprocess.run([interpreter, "-c", CHECK_SCRIPT, json.dumps(files)], capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        return Validation(True, {"cloud-init": [" ".join(proc.stderr.split()[-40:]) or "the check failed"]}, version)
    return Validation(True, json.loads(proc.stdout.strip().splitlines()[-1]), version)
