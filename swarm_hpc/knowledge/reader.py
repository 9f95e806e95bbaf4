"""What experts read during a run: a spec's `[knowledge]` indexes, opened once on rank 0, and each expert's
passages for a query (the core's `Reader`, swarm_hpc/core/passages.py).

The indexes are checked when the library opens (there, whole, one embedding model: check.py); the query is
embedded once by that model and searched in every index an expert reads; each expert gets its index's top_k hits
at or above min_score. An expert whose spec names no index (no `collection` and no `[knowledge] index`) reads
nothing. Retrieval is serialised (a lock): `swarm-hpc serve` runs requests in several threads, and one llama.cpp
context embeds them all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from swarm_hpc.core.passages import Passage
from swarm_hpc.core.spec import ExpertSpec, KnowledgeSpec, SwarmSpec
from swarm_hpc.knowledge.check import check_indexes
from swarm_hpc.knowledge.index import Hit, Index


def passage_id(collection: str, chunk: int) -> str:
    """"#12" for chunk 12 of the default index, "hardware#12" in collection "hardware"."""
    return f"{collection}#{chunk}"


def as_passage(collection: str, hit: Hit) -> Passage:
    return Passage(passage_id(collection, hit.chunk), hit.source, hit.score, hit.text)


class Library:
    """A spec's indexes and their embedding model, loaded once (`close()` frees the model)."""

    def __init__(self, spec: SwarmSpec, spec_dir: Path, where: str, threads: int = 1):
        self.knowledge: KnowledgeSpec = spec.knowledge
        self.indexes: dict[str, Index] = check_indexes(spec, spec_dir, where)
        self._lock = threading.Lock()
        self._embedder = None
        first = next(iter(self.indexes.values()), None)
        if first is not None:
            from swarm_hpc.knowledge.embed import Embedder  # llama.cpp: only once the indexes are known good

            field = "knowledge.index" if "" in self.indexes else "knowledge.collections"
            self._embedder = Embedder(first.model.ref, Path(spec_dir), threads, where, field)
            first.check_model(self._embedder.model, where, field)

    def collection_of(self, expert: ExpertSpec) -> str | None:
        """The name of the index `expert` reads ("" for `[knowledge] index`), or None when it reads none."""
        if expert.collection is not None:
            return expert.collection
        return "" if "" in self.indexes else None

    def retrieve(self, query: str, experts: Sequence[ExpertSpec]) -> dict[str, list[Passage]]:
        """{expert: its passages, best first} for `query`; experts that read no index are left out."""
        wanted = {e.name: c for e in experts if (c := self.collection_of(e)) is not None}
        if not wanted or self._embedder is None or not query.strip():
            return {}
        k = self.knowledge
        with self._lock:
            vector = self._embedder.embed_one(query)
            found = {c: [as_passage(c, h) for h in self.indexes[c].search(vector, k.top_k) if h.score >= k.min_score]
                     for c in sorted(set(wanted.values()))}
        return {name: list(found[c]) for name, c in wanted.items()}

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
