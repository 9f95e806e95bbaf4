"""A sharded index searched across MPI ranks: each rank holds some shards (shard i lives on rank i mod size),
searches them, and rank 0 merges the top-k exactly, the same answer as one big index: every shard's own top-k
holds every chunk of the global top-k that is in it, and `merge_topk` orders them as `Index.search` does (best
score first, the lower chunk number on a tie).

`search_across` is collective: every rank of `comm` calls it with the same `k`; rank 0 gives the query vector
and gets the hits, the others give None and get None. Waits sleep (mpiwait.py), so a rank that is done early
leaves the cores to the ones still searching or embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.knowledge import mpiwait
from swarm_hpc.knowledge.index import Hit, Index, load_index, merge_topk

TAG_HITS = 31


def shards_of(n_shards: int, rank: int, size: int) -> list[int]:
    """The shard numbers rank `rank` of `size` holds."""
    return [s for s in range(n_shards) if s % size == rank]


def load_part(path: Path, n_shards: int, rank: int, size: int, where: str = "swarm-hpc index query") -> Index:
    """This rank's shards of the index at `path` (checked against the manifest, as load_index does)."""
    return load_index(path, where, "INDEX", only=set(shards_of(n_shards, rank, size)))


def search_across(comm: Any, part: Index, query: np.ndarray | None, k: int) -> list[Hit] | None:
    """The exact top-k over every rank's part (see the module's docstring)."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    vec = np.zeros(part.model.dim, np.float32) if query is None else np.ascontiguousarray(query, np.float32)
    if size > 1:
        mpiwait.complete(comm.Ibcast([vec, MPI.FLOAT], root=0))
    mine = part.search(vec, k) if part.shards else []
    if rank != 0:
        mpiwait.send(comm, mine, 0, TAG_HITS)
        return None
    found = list(mine)
    for _ in range(size - 1):
        found.extend(mpiwait.receive(comm, MPI.ANY_SOURCE, TAG_HITS)[1])
    return merge_hits(found, k)


def merge_hits(hits: list[Hit], k: int) -> list[Hit]:
    """The exact top-k of hits from several shards, ordered as Index.search orders them."""
    by_chunk = {h.chunk: h for h in hits}
    ids, _ = merge_topk([(np.array([h.chunk for h in hits], np.int64),
                          np.array([h.score for h in hits], np.float32))], k)
    return [by_chunk[int(i)] for i in ids]
