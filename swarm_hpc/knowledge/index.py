"""The retrieval index on disk, and exact search over it.

An index is a folder:

    my.index/
      manifest.json                 format, version, the embedding model (ref, name, dim, pooling), chunk count,
                                    the chunking, and its shards: file names, counts, sha256 of each file
      vectors-<tag>-0000.npy        float32 (count, dim), unit rows, in chunk order
      chunks-<tag>-0000.jsonl       one chunk a line: source, start, end, position, text

The manifest is the commit point: a build writes its shard files under a new tag (each written whole, then
renamed into place), then the manifest (atomically), and only then removes the files of the index it replaced.
A reader sees the old index or the new one, never a mix or half a file; a build killed before its manifest
leaves at most unreferenced files, removed by the next build. Shards are there for the distributed step (each
rank searches its own, rank 0 merges): `Index.search` searches every shard and merges their top-k exactly.

Search is exact (a matrix-vector product over unit vectors: cosine similarity) behind the small `Searcher`
interface: about 1 ms for 10k x 384 vectors here, so no approximate index is needed at this scale.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from swarm_hpc.atomic import atomic_write_bytes, atomic_write_json
from swarm_hpc.errors import UserError
from swarm_hpc.knowledge.chunks import Chunk

FORMAT = "swarm-hpc-index"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EmbeddingModel:
    """What an index records of the model that embedded it, and what a query must match."""

    ref: str       # as given: a bundled name or a GGUF path
    name: str      # general.name inside the GGUF (the file's name when it has none)
    dim: int       # vector length
    pooling: str   # mean, cls or last


@dataclass(frozen=True)
class Hit:
    source: str
    text: str
    score: float
    start: int
    end: int
    position: int
    chunk: int     # the chunk's number in the whole index


class Searcher(Protocol):
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, scores) of the `k` rows most similar to `query`, best first."""
        ...


class ExactSearch:
    """Every vector scored: cosine similarity of unit vectors is their dot product. Ties go to the lower row.

    The product is numpy's own single-threaded loop (einsum, not BLAS): OpenBLAS's threads, on cores that
    llama.cpp ranks (or anything else) keep busy, made one 10k x 384 product take 12 ms instead of 1.2 ms here;
    einsum took 0.9-1.2 ms whatever the load."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.einsum("ij,j->i", self.vectors, np.asarray(query, dtype=np.float32), optimize=False)
        k = min(k, len(scores))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        # the k-th score may be tied with rows outside `top`: take every row at that score, then order
        rows = np.flatnonzero(scores >= scores[top].min())
        order = np.lexsort((rows, -scores[rows]))[:k]
        return rows[order].astype(np.int64), scores[rows[order]]


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of several searches' (global ids, scores): best score first, the lower id on a tie."""
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    ids = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


@dataclass
class Shard:
    offset: int            # global number of its first chunk
    chunks: list[Chunk]
    searcher: Searcher


class Index:
    """A loaded index: its manifest's model and its shards."""

    def __init__(self, path: Path, model: EmbeddingModel, shards: list[Shard], manifest: dict[str, Any]):
        self.path = path
        self.model = model
        self.shards = shards   # all of the index's, or the ones a rank loaded (load_index(..., only=...))
        self.manifest = manifest

    @property
    def count(self) -> int:
        """Chunks in the whole index (also when only some shards are loaded)."""
        return int(self.manifest["count"])

    def check_model(self, model: EmbeddingModel, where: str, field: str = "--model") -> None:
        """A query must be embedded by the model the index was built with."""
        if (model.name, model.dim) != (self.model.name, self.model.dim):
            raise UserError(where, f"index {str(self.path)!r} was built with {self.model.name} ({self.model.dim} "
                            f"dimensions), but model {model.ref!r} is {model.name} ({model.dim} dimensions)",
                            f"query with --model {self.model.ref} (the index's own), or build the index again "
                            "with this model", field)

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The `k` chunks most similar to the unit vector `query`, best first, over every shard (merged exactly)."""
        if k <= 0:
            raise ValueError("k must be at least 1")
        parts = []
        for s in self.shards:
            rows, scores = s.searcher.search(query, k)
            parts.append((rows + s.offset, scores))
        ids, scores = merge_topk(parts, k)
        return [self._hit(int(i), float(sc)) for i, sc in zip(ids, scores, strict=True)]

    def _hit(self, chunk_id: int, score: float) -> Hit:
        for s in self.shards:
            if s.offset <= chunk_id < s.offset + len(s.chunks):
                c = s.chunks[chunk_id - s.offset]
                return Hit(c.source, c.text, score, c.start, c.end, c.position, chunk_id)
        raise IndexError(chunk_id)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(vectors: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _jsonl_bytes(chunks: Sequence[Chunk]) -> bytes:
    return "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in chunks).encode("utf-8")


def _ours(name: str) -> bool:
    """Files an index folder may hold: its manifest, shard files and temp files of our atomic writes."""
    return (name == MANIFEST or (name.startswith(("vectors-", "chunks-")) and name.endswith((".npy", ".jsonl")))
            or (name.startswith(".") and name.endswith(".tmp")))


def check_writable(path: Path, where: str, field: str = "--out") -> None:
    """`path` may become an index: it does not exist, or is an index folder (or an empty one, or one a build
    left without its manifest). Anything else is refused, so that a build never writes into a user's folder."""
    if not path.exists() and not path.is_symlink():
        if not path.parent.is_dir():
            raise UserError(where, f"the folder of {str(path)!r} does not exist", "create it first", field)
        return
    if not path.is_dir():
        raise UserError(where, f"{str(path)!r} exists and is not an index folder",
                        "give a new path (an index is a folder) or remove it", field)
    strangers = sorted(n for n in os.listdir(path) if not _ours(n))
    if strangers:
        raise UserError(where, f"{str(path)!r} is a folder that is not an index (it holds {strangers[0]!r}"
                        f"{f' and {len(strangers) - 1} more' if len(strangers) > 1 else ''})",
                        "give a new path for the index, or an existing index to replace", field)


def write_index(path: Path, model: EmbeddingModel, chunks: Sequence[Chunk], vectors: np.ndarray,
                chunking: dict[str, Any], shards: int = 1, where: str = "swarm-hpc index build",
                field: str = "--out") -> dict[str, Any]:
    """Write (or replace) the index at `path` as `shards` shards of consecutive chunks; returns the manifest."""
    path = Path(path)
    if len(chunks) != len(vectors) or vectors.ndim != 2 or vectors.shape[1] != model.dim:
        raise ValueError(f"{len(chunks)} chunks, vectors of shape {vectors.shape}, model dim {model.dim}")
    check_writable(path, where, field)
    created = not path.exists()
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    bounds = np.linspace(0, len(chunks), max(1, shards) + 1).astype(int)
    written: list[Path] = []
    try:
        path.mkdir(exist_ok=True)
        entries = []
        for n, (a, b) in enumerate(itertools.pairwise(bounds)):
            vec, lines = _npy_bytes(vectors[a:b]), _jsonl_bytes(chunks[a:b])
            names = {"vectors": f"vectors-{tag}-{n:04d}.npy", "chunks": f"chunks-{tag}-{n:04d}.jsonl"}
            for kind, data in (("vectors", vec), ("chunks", lines)):
                written.append(path / names[kind])
                atomic_write_bytes(path / names[kind], data)
            entries.append({**names, "offset": int(a), "count": int(b - a),
                            "sha256": {"vectors": _sha256(vec), "chunks": _sha256(lines)}})
        manifest = {"format": FORMAT, "version": VERSION, "model": asdict(model), "count": len(chunks),
                    "sources": len({c.source for c in chunks}), "chunking": chunking,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"), "shards": entries}
        atomic_write_json(path / MANIFEST, manifest)
    except BaseException:
        for f in written:
            with contextlib.suppress(OSError):
                f.unlink()
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    keep = {MANIFEST} | {e[k] for e in entries for k in ("vectors", "chunks")}
    for name in os.listdir(path):   # the replaced index's files, and leftovers of killed builds
        if _ours(name) and name not in keep:
            with contextlib.suppress(OSError):
                (path / name).unlink()
    return manifest


def _damaged(path: Path, where: str, field: str, what: str) -> UserError:
    return UserError(where, f"index {str(path)!r} is damaged: {what}",
                     "build it again with `swarm-hpc index build`", field)


def read_manifest(path: Path, where: str = "swarm-hpc index query", field: str = "INDEX") -> dict[str, Any]:
    """The manifest of the index at `path` (format and version checked; shard files not read)."""
    return _load(Path(path), where, field, only=set())[1]


def load_index(path: Path, where: str = "swarm-hpc index query", field: str = "INDEX",
               only: Collection[int] | None = None) -> Index:
    """The index at `path`, checked against its manifest (counts, shapes, sha256), or a one-line UserError.
    `only`: the shard numbers to load (a rank's part of a sharded index); the rest are not read."""
    model, manifest, shards = _load(Path(path), where, field, only)
    return Index(Path(path), model, shards, manifest)


def _load(path: Path, where: str, field: str,
          only: Collection[int] | None) -> tuple[EmbeddingModel, dict[str, Any], list[Shard]]:
    path = Path(path)
    if not path.exists():
        raise UserError(where, f"index {str(path)!r} does not exist", "build one with `swarm-hpc index build DIR "
                        f"--out {path}`", field)
    if not (path / MANIFEST).is_file():
        raise UserError(where, f"{str(path)!r} is not an index (no {MANIFEST} in it)",
                        "give the folder that `swarm-hpc index build --out` made", field)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _damaged(path, where, field, f"{MANIFEST} is not a swarm-hpc index manifest")
        if manifest.get("version") != VERSION:
            raise UserError(where, f"index {str(path)!r} has format version {manifest.get('version')!r}, this "
                            f"swarm-hpc reads version {VERSION}", "build it again with this swarm-hpc", field)
        model = EmbeddingModel(**manifest["model"])
        shards = []
        total = 0
        for n, e in enumerate(manifest["shards"]):
            if e["offset"] != total:
                raise _damaged(path, where, field, f"shard {n} starts at chunk {e['offset']}, not {total}")
            total += e["count"]
            if only is not None and n not in only:
                continue
            vec_bytes = (path / e["vectors"]).read_bytes()
            chunk_bytes = (path / e["chunks"]).read_bytes()
            for kind, data in (("vectors", vec_bytes), ("chunks", chunk_bytes)):
                if _sha256(data) != e["sha256"][kind]:
                    raise _damaged(path, where, field, f"{e[kind]} does not match its sha256 in {MANIFEST}")
            vectors = np.load(io.BytesIO(vec_bytes), allow_pickle=False)
            chunks = [Chunk(**json.loads(line)) for line in chunk_bytes.decode("utf-8").splitlines()]
            if vectors.shape != (e["count"], model.dim) or len(chunks) != e["count"]:
                raise _damaged(path, where, field, f"{e['vectors']} holds {vectors.shape}, {len(chunks)} chunks, "
                               f"where {MANIFEST} says {e['count']} x {model.dim}")
            shards.append(Shard(e["offset"], chunks, ExactSearch(vectors)))
        if total != manifest["count"]:
            raise _damaged(path, where, field, f"its shards hold {total} chunks, not {manifest['count']}")
    except UserError:
        raise
    except FileNotFoundError as e:
        raise _damaged(path, where, field, f"{Path(str(e.filename)).name} is missing") from None
    except OSError as e:
        raise UserError(where, f"cannot read index {str(path)!r}: {e.strerror}", "check its permissions",
                        field) from None
    except (ValueError, KeyError, TypeError) as e:   # JSON, npy, missing keys, wrong fields
        raise _damaged(path, where, field, f"{type(e).__name__}: {e}") from None
    return model, manifest, shards
