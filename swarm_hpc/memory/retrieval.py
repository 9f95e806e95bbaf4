"""Retrieval: which stored facts belong in a prompt about a given text.

`Retriever` is the interface (one method, and a name for the run's log); `LexicalRetriever` ranks the store's
facts with SQLite FTS5's BM25 over the query's words: cheap and without a model, but blind to a paraphrase. The
retriever by meaning (all-MiniLM-L6-v2 embeddings through llama.cpp) lives above this package, in
swarm_hpc/knowledge/recall.py, and reaches the engine as a `RetrieverFor` from the layer that starts it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from swarm_hpc.memory.store import Fact, Store

WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset({"a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for",
    "from", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not",
    "of", "on", "or", "our", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with",
    "would", "you", "your"})


class Retriever(Protocol):
    name: str   # what the run's log and transcript call it: "bm25", "minilm"

    def search(self, query: str, k: int) -> list[Fact]:
        """The `k` facts most relevant to `query`, best first (fewer when fewer match)."""
        ...


class LexicalRetriever:
    """BM25 over the facts' words (FTS5's `bm25()`): a fact must share a word with the query (stop words aside)."""

    name = "bm25"

    def __init__(self, store: Store):
        self.store = store

    def search(self, query: str, k: int) -> list[Fact]:
        words = sorted({w.lower() for w in WORD.findall(query)} - STOPWORDS)
        if not words or k <= 0:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = self.store.db.execute(
            "SELECT f.id, f.text, f.source, f.created FROM facts_fts JOIN facts f ON f.id = facts_fts.rowid "
            "WHERE facts_fts MATCH ? ORDER BY bm25(facts_fts) LIMIT ?", (match, k)).fetchall()
        return [Fact(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]


RetrieverFor = Callable[[Store], Retriever]   # gives a store its retriever: LexicalRetriever, or one from above
