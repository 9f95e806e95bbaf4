"""Files on a FAT partition inside a disk image, through mtools at the partition's byte offset (`-i IMG@@OFFSET`):
no mount, no loop device, no root."""

from __future__ import annotations

import tempfile
from pathlib import Path

from swarm_hpc.errors import UserError
from swarm_hpc.ops.images.tools import run


def _drive(image: Path, offset: int) -> str:
    if "@@" in str(image):
        raise UserError(str(image), "has '@@' in its path, which mtools cannot take", "rename the file")
    return f"{image}@@{offset}"


def list_files(image: Path, offset: int) -> list[str]:
    """Names of the files in the partition's top folder."""
    proc = run("mdir", "-b", "-i", _drive(image, offset), "::/")
    if proc.returncode != 0:
        # mdir -b on an empty folder exits 1 without an error text
        if not proc.stderr.strip():
            return []
        raise UserError(str(image), f"cannot read the FAT boot partition: {_err(proc.stderr)}",
                        "the image may be damaged")
    return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in proc.stdout.decode(errors="replace").splitlines()
                  if line.strip())


def read_file(image: Path, offset: int, name: str) -> bytes | None:
    """A file's bytes, or None when the partition has no such file."""
    proc = run("mcopy", "-n", "-i", _drive(image, offset), f"::/{name}", "-")
    if proc.returncode != 0:
        if b"not found" in proc.stderr:
            return None
        raise UserError(str(image), f"cannot read {name} from the FAT boot partition: {_err(proc.stderr)}",
                        "the image may be damaged")
    return proc.stdout


def write_file(image: Path, offset: int, name: str, data: bytes) -> None:
    """Create or replace a file in the partition's top folder."""
    with tempfile.NamedTemporaryFile(prefix="swarm-hpc-fat-") as tmp:
        tmp.write(data)
        tmp.flush()
        proc = run("mcopy", "-o", "-D", "o", "-i", _drive(image, offset), tmp.name, f"::/{name}")
    if proc.returncode != 0:
        problem = _err(proc.stderr)
        fix = "make room on the boot partition" if "full" in problem.lower() else "the image may be damaged"
        raise UserError(str(image), f"cannot write {name} to the FAT boot partition: {problem}", fix)


def _err(stderr: bytes) -> str:
    return " ".join(stderr.decode(errors="replace").split()) or "mtools failed"
