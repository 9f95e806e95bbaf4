"""The outside tools the image code runs (mtools, debugfs), found on PATH with a one-line error when missing."""

from __future__ import annotations

import os
import shutil
import subprocess

from swarm_hpc.errors import UserError

INSTALL_HINT = {"mcopy": "apt-get install mtools", "mdir": "apt-get install mtools",
                "debugfs": "apt-get install e2fsprogs"}


def find_tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if not path:
        raise UserError(name, "is not installed", INSTALL_HINT.get(name, f"install {name}"))
    return path


def run(name: str, *args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run tool `name` with `args`; the caller looks at the return code and output."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
    try:
        return subprocess.run([find_tool(name), *args], input=input, capture_output=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        raise UserError(name, f"did not finish within {timeout:g} s", "check the image file and the disk") from None
