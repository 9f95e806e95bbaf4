"""What an index build is, apart from who runs it: the plan (a typed record the CLI writes and every MPI rank reads),
the corpus cut into chunks, the chunks split into contiguous ranges for ranks, and the index written at the end.

The CLI's one-process build and `swarm_hpc/knowledge/rank.py` (the same build spread over MPI ranks, locally or in
a SLURM job) both go through here, so they chunk, embed and write alike: the vectors are the same either way.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.errors import UserError
from swarm_hpc.experts.models import BUNDLED
from swarm_hpc.knowledge.chunks import MAX_CHARS, OVERLAP_CHARS, Chunk, chunk_text
from swarm_hpc.knowledge.corpus import MAX_FILE_MB, Corpus, read_corpus
from swarm_hpc.knowledge.embed import BATCH
from swarm_hpc.knowledge.index import EmbeddingModel, write_index

BUILD = "swarm-hpc index build"
PER_TEXT_CHARS = 40   # what a text costs to embed beyond its characters (its own sequence, pooling): for split()


@dataclass(frozen=True)
class BuildPlan:
    """An index build as the user asked for it; paths absolute when it goes to ranks (they may run elsewhere)."""

    folder: str
    out: str
    model: str = "minilm"
    max_chars: int = MAX_CHARS
    overlap: int = OVERLAP_CHARS
    max_file_mb: float = MAX_FILE_MB
    threads: int = 1
    shards: int = 1
    stats: str | None = None   # a JSON file rank 0 writes with timings and memory per rank (the benchmark's)

    def check(self) -> None:
        """Every option in range, or a one-line UserError naming it."""
        if self.max_chars < 100:
            raise UserError(BUILD, f"--max-chars {self.max_chars} is too small", "give at least 100", "--max-chars")
        if not 0 <= self.overlap < self.max_chars:
            raise UserError(BUILD, f"--overlap {self.overlap} must be at least 0 and less than --max-chars "
                            f"({self.max_chars})", f"e.g. --overlap {self.max_chars // 4}", "--overlap")
        for name, value in (("--max-file-mb", self.max_file_mb), ("--threads", self.threads),
                            ("--shards", self.shards)):
            if value <= 0:
                raise UserError(BUILD, f"{name} {value} must be more than 0", f"e.g. {name} 1", name)

    @property
    def chunking(self) -> dict[str, Any]:
        return {"max_chars": self.max_chars, "overlap_chars": self.overlap}

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> BuildPlan:
        try:
            return cls(**json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(str(path), f"cannot read the build plan: {e}",
                            "start the build again with `swarm-hpc index build`") from None


def model_ref(ref: str) -> str:
    """What the manifest records: a bundled name as it is, a GGUF path made absolute (queries run elsewhere)."""
    return ref if ref in BUNDLED else str(Path(ref).expanduser().absolute())


def chunk_corpus(plan: BuildPlan) -> tuple[Corpus, list[Chunk]]:
    """The corpus read and checked (one-line UserErrors), and its chunks in index order."""
    corpus = read_corpus(Path(plan.folder), BUILD, plan.max_file_mb, exclude=Path(plan.out).absolute())
    chunks = [c for d in corpus.documents for c in chunk_text(d.text, d.source, plan.max_chars, plan.overlap)]
    return corpus, chunks


def split(chunks: list[Chunk], parts: int, align: int = BATCH) -> list[tuple[int, int]]:
    """`parts` contiguous (start, end) ranges of `chunks` of about equal embedding work (characters plus a cost
    per text), in order, cut at multiples of `align` (the Embedder's batch: each batch of texts is then embedded
    as in one process, to the bit); some may be empty when there are few chunks."""
    cost = np.cumsum([len(c.text) + PER_TEXT_CHARS for c in chunks], dtype=np.int64)
    total = int(cost[-1]) if len(cost) else 0
    cuts = [0]
    for p in range(1, parts):
        cut = int(np.searchsorted(cost, total * p / parts, side="left"))
        cut = min(len(chunks), round(cut / align) * align)
        cuts.append(max(cuts[-1], cut))
    cuts.append(len(chunks))
    return list(itertools.pairwise(cuts))


def write(plan: BuildPlan, model: EmbeddingModel, chunks: list[Chunk], vectors: np.ndarray) -> dict[str, Any]:
    """The index written (or replaced) atomically, manifest last; returns the manifest."""
    recorded = EmbeddingModel(model_ref(plan.model), model.name, model.dim, model.pooling)
    return write_index(Path(plan.out), recorded, chunks, vectors, plan.chunking, plan.shards, BUILD)


def summary(plan: BuildPlan, manifest: dict[str, Any], model: EmbeddingModel, chunks: int, embed_s: float,
            total_s: float, ranks: int = 1) -> str:
    shards = len(manifest["shards"])
    on = f" on {ranks} ranks" if ranks > 1 else ""
    return (f"wrote {plan.out}: {manifest['count']} chunks of {manifest['sources']} files, {model.dim} dims "
            f"({model.name}), {shards} shard{'s' * (shards > 1)}; embedding {embed_s:.1f} s{on} "
            f"({chunks / max(embed_s, 1e-9):.0f} chunks/s), {total_s:.1f} s in all")
