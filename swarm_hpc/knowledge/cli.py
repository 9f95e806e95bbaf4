"""`swarm-hpc index ...`: build a retrieval index from a folder of text, and query it. Attach with
`main.add_command(index)`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from swarm_hpc.errors import UserError
from swarm_hpc.experts.models import BUNDLED
from swarm_hpc.knowledge.chunks import MAX_CHARS, OVERLAP_CHARS, Chunk, chunk_text
from swarm_hpc.knowledge.corpus import MAX_FILE_MB, read_corpus
from swarm_hpc.knowledge.index import EmbeddingModel, Hit, check_writable, load_index, write_index

BUILD = "swarm-hpc index build"
QUERY = "swarm-hpc index query"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def index() -> None:
    """Retrieval over your documents: an index of a folder of text and Markdown files, embedded by llama.cpp
    with the bundled `minilm` (all-MiniLM-L6-v2), searched exactly.

    \b
    Examples:
      swarm-hpc index build docs/ --out my.index
      swarm-hpc index query my.index "what voltage does the Pi 5 need?" --k 5
      swarm-hpc index query my.index "cooling" --json
    """


def _model_ref(ref: str) -> str:
    """What the manifest records: a bundled name as it is, a GGUF path made absolute (queries run elsewhere)."""
    return ref if ref in BUNDLED else str(Path(ref).expanduser().absolute())


@index.command()
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The index folder to write (or replace).")
@click.option("--model", default="minilm", show_default=True, help="Embedding model: a bundled name or a GGUF path.")
@click.option("--max-chars", type=int, default=MAX_CHARS, show_default=True, help="The longest chunk, in characters.")
@click.option("--overlap", type=int, default=OVERLAP_CHARS, show_default=True,
              help="Characters of whole sentences a chunk repeats from the one before.")
@click.option("--max-file-mb", type=float, default=MAX_FILE_MB, show_default=True,
              help="A larger file stops the build (split it or leave it out).")
@click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads for embedding.")
@click.option("--shards", type=int, default=1, show_default=True, help="Split the index into this many shards.")
def build(folder: Path, out: Path, model: str, max_chars: int, overlap: int, max_file_mb: float, threads: int,
          shards: int) -> None:
    """Embed and index the text and Markdown files in DIR (recursively; or one file)."""
    if max_chars < 100:
        raise UserError(BUILD, f"--max-chars {max_chars} is too small", "give at least 100", "--max-chars")
    if not 0 <= overlap < max_chars:
        raise UserError(BUILD, f"--overlap {overlap} must be at least 0 and less than --max-chars ({max_chars})",
                        "e.g. --overlap 200", "--overlap")
    for name, value in (("--max-file-mb", max_file_mb), ("--threads", threads), ("--shards", shards)):
        if value <= 0:
            raise UserError(BUILD, f"{name} {value} must be more than 0", f"e.g. {name} 1", name)
    check_writable(out, BUILD)
    started = time.monotonic()
    try:   # Ctrl-C at any point up to the manifest: write_index removes what it wrote, the old index stays
        chunks, vectors, embed_s, m = _embed_corpus(folder, out, model, max_chars, overlap, max_file_mb, threads)
        manifest = write_index(out, EmbeddingModel(_model_ref(model), m.name, m.dim, m.pooling), chunks, vectors,
                               {"max_chars": max_chars, "overlap_chars": overlap}, shards, BUILD)
    except KeyboardInterrupt:
        click.echo(f"swarm-hpc: index build interrupted (Ctrl-C); nothing was written ({out} is as it was)", err=True)
        sys.exit(130)
    click.echo(f"wrote {out}: {manifest['count']} chunks of {manifest['sources']} files, {m.dim} dims "
               f"({m.name}), {len(manifest['shards'])} shard{'s' * (shards > 1)}; embedding {embed_s:.1f} s "
               f"({len(chunks) / max(embed_s, 1e-9):.0f} chunks/s), {time.monotonic() - started:.1f} s in all")


def _embed_corpus(folder: Path, out: Path, model: str, max_chars: int, overlap: int, max_file_mb: float,
                  threads: int) -> tuple[list[Chunk], np.ndarray, float, EmbeddingModel]:
    corpus = read_corpus(folder, BUILD, max_file_mb, exclude=out.absolute())
    chunks = [c for d in corpus.documents for c in chunk_text(d.text, d.source, max_chars, overlap)]
    from swarm_hpc.knowledge.embed import Embedder  # loads llama.cpp: only once the input is known to be good

    embedder = Embedder(model, Path("."), threads, BUILD, "--model")
    skipped = f", {len(corpus.skipped)} other files skipped" if corpus.skipped else ""
    click.echo(f"embedding {len(chunks)} chunks of {len(corpus.documents)} files ({corpus.chars:,} characters"
               f"{skipped}) with {embedder.model.name}", err=True)
    t0 = time.monotonic()
    try:
        vectors = embedder.embed([c.text for c in chunks])
    finally:
        embedder.close()
    return chunks, vectors, time.monotonic() - t0, embedder.model


def _shown(text: str, width: int = 300) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[:width - 1] + "…"


@index.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("text", metavar="QUERY")
@click.option("--k", "k", type=int, default=5, show_default=True, help="How many passages to return.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON (source, text, score, offsets).")
@click.option("--model", default=None, help="Embedding model for the query (default: the index's own).")
@click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads for embedding.")
def query(index_path: Path, text: str, k: int, as_json: bool, model: str | None, threads: int) -> None:
    """The passages of INDEX most similar to QUERY, best first."""
    if not text.strip():
        raise UserError(QUERY, "the query is empty", 'give the question in quotes, e.g. "what voltage does the '
                        'Pi 5 need?"', "QUERY")
    if k <= 0:
        raise UserError(QUERY, f"--k {k} must be at least 1", "e.g. --k 5", "--k")
    if threads <= 0:
        raise UserError(QUERY, f"--threads {threads} must be more than 0", "e.g. --threads 1", "--threads")
    idx = load_index(index_path, QUERY, "INDEX")
    from swarm_hpc.knowledge.embed import Embedder

    ref = model or idx.model.ref
    embedder = Embedder(ref, Path("."), threads, QUERY, "--model" if model else "INDEX")
    idx.check_model(embedder.model, QUERY, "--model")
    t0 = time.monotonic()
    q = embedder.embed_one(text)
    hits = idx.search(q, k)
    took_ms = (time.monotonic() - t0) * 1000
    embedder.close()
    if as_json:
        json.dump({"index": str(index_path), "query": text, "k": k, "model": idx.model.name, "ms": round(took_ms, 2),
                   "hits": [_hit_json(h, i) for i, h in enumerate(hits, start=1)]},
                  sys.stdout, ensure_ascii=False, indent=2)
        click.echo()
        return
    for i, h in enumerate(hits, start=1):
        click.echo(f"{i:>2}. {h.score:.3f}  {h.source}:{h.start}-{h.end}")
        click.echo(f"    {_shown(h.text)}")
    click.echo(f"({len(hits)} of {idx.count} chunks, {took_ms:.0f} ms)", err=True)


def _hit_json(h: Hit, rank: int) -> dict:
    return {"rank": rank, "score": round(h.score, 6), "source": h.source, "start": h.start, "end": h.end,
            "position": h.position, "chunk": h.chunk, "text": h.text}
