"""Text to vectors with llama.cpp itself: `Llama(..., embedding=True)` on an embedding GGUF (the bundled `minilm`,
all-MiniLM-L6-v2, or any BERT-style GGUF whose header names a pooling), normalized to unit length so that a dot
product is the cosine similarity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.errors import UserError
from swarm_hpc.experts.ggufmeta import read_metadata
from swarm_hpc.experts.llama import load_llama
from swarm_hpc.experts.models import ResolvedModel, resolve_model
from swarm_hpc.knowledge.index import EmbeddingModel

DEFAULT_MODEL = "minilm"
# Texts a call to llama.cpp's embed() gets. It packs them into one decode (up to MAX_TOKENS tokens, one sequence
# each, in a unified KV cache), and on a CPU that is slower than one text a decode: attention then spans every
# token of the batch, masked. MiniLM, 1 thread, this 2-core VM (busy): texts of ~40 tokens 35/s one at a time,
# 25/s 4 a call, 17/s 32 a call; ~200 tokens 4.9/s against 3.9/s.
BATCH = 1
MAX_TOKENS = 512       # llama.cpp's batch for one text: longer texts are cut there (chunks are far shorter)
POOLINGS = {1: "mean", 2: "cls", 3: "last"}   # llama_pooling_type values that give one vector a text


def inspect(ref: str, base_dir: Path = Path("."), where: str = "swarm-hpc index",
            field: str = "--model") -> tuple[ResolvedModel, EmbeddingModel]:
    """Resolve `ref` and check from its GGUF header, without loading it, that it is an embedding model."""
    resolved = resolve_model(ref, base_dir, where, field, kind="embedding")
    try:
        meta = read_metadata(resolved.path)
    except (OSError, ValueError) as e:
        raise UserError(where, f"cannot read the GGUF header of {str(resolved.path)!r}: {e}",
                        "give a whole GGUF file", field) from None
    arch = str(meta.get("general.architecture", ""))
    pooling = meta.get(f"{arch}.pooling_type")
    if pooling not in POOLINGS:
        raise UserError(where, f"model {ref!r} ({arch or 'unknown'} architecture) is not an embedding model: its GGUF "
                        "names no pooling that gives one vector a text (a chat model?)",
                        "use the bundled `minilm` or a sentence-embedding GGUF such as a BERT model", field)
    dim = int(meta.get(f"{arch}.embedding_length", 0) or 0)
    name = str(meta.get("general.name") or resolved.path.stem)
    return resolved, EmbeddingModel(ref, name, dim, POOLINGS[int(pooling)])


class Embedder:
    """An embedding model loaded once; `embed(texts)` gives an (n, dim) float32 array of unit vectors."""

    def __init__(self, ref: str = DEFAULT_MODEL, base_dir: Path = Path("."), threads: int = 1,
                 where: str = "swarm-hpc index", field: str = "--model"):
        resolved, self.model = inspect(ref, base_dir, where, field)
        self.path = resolved.path
        meta = read_metadata(resolved.path)
        arch = meta.get("general.architecture", "")
        n_ctx = min(MAX_TOKENS, int(meta.get(f"{arch}.context_length", MAX_TOKENS) or MAX_TOKENS))
        self.max_tokens = n_ctx
        self._llama: Any = load_llama(resolved, n_ctx, threads, seed=0, embedding=True, n_batch=n_ctx,
                                      n_ubatch=n_ctx)
        got = int(self._llama.n_embd())
        if got != self.model.dim:   # a header without embedding_length: trust what llama.cpp loaded
            self.model = EmbeddingModel(self.model.ref, self.model.name, got, self.model.pooling)

    @property
    def dim(self) -> int:
        return self.model.dim

    def embed(self, texts: Sequence[str], batch: int = BATCH,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit vectors of `texts`, in order, `batch` texts a call (llama.cpp packs them into one decode as far as
        its batch of tokens allows: see BATCH); `progress(done)` after each call. A text longer than the model's
        context is cut to it. A text's vector depends, in its last bits, on the texts it shares a decode with
        (llama.cpp's kernels differ by batch size), so builds that split texts at multiples of `batch` (as
        build.split does for ranks) give bit for bit the vectors of one process."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch):
            part = list(texts[start:start + batch])
            vecs = np.asarray(self._llama.embed(part, normalize=False, truncate=True), dtype=np.float32)
            out[start:start + len(part)] = vecs.reshape(len(part), self.dim)
            if progress:
                progress(start + len(part))
        return normalize(out)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def close(self) -> None:
        self._llama.close()


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
