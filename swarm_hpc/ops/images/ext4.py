"""Read-only look into an ext4 root filesystem inside a disk image with e2fsprogs' debugfs at the partition's
byte offset (`IMG?offset=N`): which OS it is, and whether it has cloud-init to read the boot files."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from swarm_hpc.errors import UserError
from swarm_hpc.ops.images.tools import find_tool, run

CLOUD_INIT_PATHS = ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg")


@dataclass(frozen=True)
class RootInfo:
    os_name: str          # PRETTY_NAME from /etc/os-release, or "unknown"
    cloud_init: bool      # the image has cloud-init, so it will read user-data from the boot partition


def _device(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}"


def read_file(image: Path, offset: int, path: str) -> bytes | None:
    """A file's bytes from the ext4 filesystem, or None when it is missing or cannot be read."""
    proc = run("debugfs", "-R", f"cat {shlex.quote(path)}", _device(image, offset))
    if proc.returncode != 0 or b"not found" in proc.stderr or b"Bad magic" in proc.stderr:
        return None
    return proc.stdout


def exists(image: Path, offset: int, path: str) -> bool:
    proc = run("debugfs", "-R", f"stat {shlex.quote(path)}", _device(image, offset))
    return proc.returncode == 0 and proc.stdout.lstrip().startswith(b"Inode:")


def inspect_root(image: Path, offset: int) -> RootInfo | None:
    """What the root filesystem holds; None when debugfs is not installed."""
    try:
        find_tool("debugfs")
    except UserError:
        return None
    os_name = "unknown"
    # /etc/os-release is usually a symlink to /usr/lib/os-release, which debugfs does not follow
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        for line in (read_file(image, offset, path) or b"").decode(errors="replace").splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"') or os_name
        if os_name != "unknown":
            break
    return RootInfo(os_name, any(exists(image, offset, p) for p in CLOUD_INIT_PATHS))
