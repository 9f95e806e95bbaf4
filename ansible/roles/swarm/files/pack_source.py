#!/usr/bin/env python3
"""Pack the swarm-hpc source tree into a reproducible tar (same files, same bytes), for pip to install on the hosts.

    pack_source.py SOURCE_DIR OUT.tar

Takes pyproject.toml, README.md and swarm_hpc/ (no caches), with fixed times and owners, under one top folder
`swarm-hpc/`, as pip expects of a source archive. Writes OUT.tar only when its content changes, and prints
"unchanged" or "written", so Ansible copies and reinstalls only after a real change.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".gguf")


def members(src: Path) -> list[Path]:
    files = [src / "pyproject.toml", src / "README.md"]
    for root, dirs, names in os.walk(src / "swarm_hpc"):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files += [Path(root) / n for n in sorted(names) if not n.endswith(SKIP_SUFFIXES)]
    return files


def pack(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in members(src):
            data = path.read_bytes()
            info = tarfile.TarInfo("swarm-hpc/" + path.relative_to(src).as_posix())
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    if not (src / "pyproject.toml").is_file() or not (src / "swarm_hpc").is_dir():
        print(f"pack_source: {src} is not the swarm-hpc source tree (no pyproject.toml or swarm_hpc/)", file=sys.stderr)
        return 1
    data = pack(src)
    if out.exists() and out.read_bytes() == data:
        print("unchanged")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    print("written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
