"""The files of a corpus: a folder's text and Markdown files (or one file), read and checked.

Files are found recursively in name order, hidden files and folders left out; only text suffixes are read
(other files are counted as skipped). A text file that is binary (a NUL byte, or not UTF-8), larger than the
limit, or unreadable stops the build with one line naming it: an index is never built from half a corpus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from swarm_hpc.errors import UserError, regular_file

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
MAX_FILE_MB = 16.0


@dataclass(frozen=True)
class Document:
    source: str   # the file's path as given: the folder given to build, joined with the path below it
    text: str


@dataclass
class Corpus:
    documents: list[Document]
    skipped: list[str] = field(default_factory=list)   # files left out: not a text suffix

    @property
    def chars(self) -> int:
        return sum(len(d.text) for d in self.documents)


def _files(root: Path, exclude: Path | None) -> tuple[list[Path], list[str]]:
    found: list[Path] = []
    skipped: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or os.path.abspath(os.path.join(folder, d)) != str(exclude)))
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = Path(folder) / name
            if p.suffix.lower() in TEXT_SUFFIXES:
                found.append(p)
            else:
                skipped.append(p)
    return found, [str(p) for p in skipped]


def read_text_file(path: Path, where: str, max_bytes: int, field: str = "DIR") -> str:
    regular_file(path, where, "file", field)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(where, f"file {str(path)!r} is {size / 1e6:.1f} MB, more than the {max_bytes / 1e6:g} MB a "
                        "file may have", "split it, leave it out, or raise --max-file-mb", field)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(where, f"cannot read {str(path)!r}: {e.strerror}", "check its permissions", field) from None
    if b"\0" in data:
        raise UserError(where, f"file {str(path)!r} is binary (it holds NUL bytes), not text",
                        "leave it out of the folder, or give it a suffix other than " + ", ".join(TEXT_SUFFIXES),
                        field)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(where, f"file {str(path)!r} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})",
                        "convert it to UTF-8 (e.g. iconv -t UTF-8) or leave it out", field) from None


def read_corpus(root: Path, where: str = "swarm-hpc index build", max_file_mb: float = MAX_FILE_MB,
                exclude: Path | None = None, field: str = "DIR") -> Corpus:
    """Every text file under `root` (a folder, or one file of any suffix), read whole; `exclude` (an absolute
    path: the index being written) is left out. No readable text at all is an error."""
    if not root.exists():
        raise UserError(where, f"{str(root)!r} does not exist", "give a folder of text or Markdown files", field)
    max_bytes = int(max_file_mb * 1_000_000)
    if root.is_dir():
        files, skipped = _files(root, exclude)
    else:
        files, skipped = [root], []
    docs = [Document(str(p), read_text_file(p, where, max_bytes, field)) for p in files]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        kinds = ", ".join(TEXT_SUFFIXES)
        what = (f"no text in {len(files)} file{'s' * (len(files) != 1)}" if files
                else f"no {kinds} files" + (f" ({len(skipped)} other files skipped)" if skipped else ""))
        raise UserError(where, f"{str(root)!r} has no readable text: {what}",
                        f"give a folder with text ({kinds}) files in it", field)
    return Corpus(docs, skipped)
