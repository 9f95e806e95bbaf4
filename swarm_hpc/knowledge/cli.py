"""`swarm-hpc index ...`: build a retrieval index from a folder of text, and query it. Attach with
`main.add_command(index)`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np

from swarm_hpc.errors import EXIT_USAGE, UserError
from swarm_hpc.knowledge import build as builds
from swarm_hpc.knowledge.build import BuildPlan
from swarm_hpc.knowledge.chunks import MAX_CHARS, OVERLAP_CHARS, Chunk
from swarm_hpc.knowledge.corpus import MAX_FILE_MB
from swarm_hpc.knowledge.index import MANIFEST, EmbeddingModel, check_writable, load_index, read_manifest
from swarm_hpc.knowledge.show import print_hits

BUILD = builds.BUILD
QUERY = "swarm-hpc index query"
RANK_MODULE = "swarm_hpc.knowledge.rank"   # what every rank runs (--np, --submit)


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


@index.command()
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The index folder to write (or replace).")
@click.option("--model", default="minilm", show_default=True, help="Embedding model: a bundled name or a GGUF path.")
@click.option("--max-chars", type=int, default=MAX_CHARS, show_default=True, help="The longest chunk, in characters.")
@click.option("--overlap", type=int, default=OVERLAP_CHARS, show_default=True,
              help="Characters of whole sentences a chunk repeats from the one before.")
@click.option("--max-file-mb", type=float, default=MAX_FILE_MB, show_default=True,
              help="A larger file stops the build (split it or leave it out).")
@click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads for embedding (per rank).")
@click.option("--shards", type=int, default=None, help="Split the index into this many shards [default: 1, or --np].")
@click.option("--np", "np_", type=int, default=None,
              help="Spread the embedding over this many MPI ranks (mpiexec here, or the job's tasks with --submit).")
@click.option("--submit", is_flag=True, help="Build in a SLURM batch job (--np tasks, --threads CPUs each).")
@click.option("--time", "time_limit", default="1:00:00", show_default=True, help="With --submit: the job's time limit.")
@click.option("--partition", default=None, help="With --submit: the SLURM partition.")
@click.option("--stats", type=click.Path(path_type=Path), default=None, hidden=True,
              help="Write timings and memory per rank to this JSON file (with --np; the benchmark's).")
def build(folder: Path, out: Path, model: str, max_chars: int, overlap: int, max_file_mb: float, threads: int,
          shards: int | None, np_: int | None, submit: bool, time_limit: str, partition: str | None,
          stats: Path | None) -> None:
    """Embed and index the text and Markdown files in DIR (recursively; or one file)."""
    if np_ is not None and np_ <= 0:
        raise UserError(BUILD, f"--np {np_} must be more than 0", "e.g. --np 2", "--np")
    plan = BuildPlan(str(folder), str(out), model, max_chars, overlap, max_file_mb, threads,
                     shards if shards is not None else (np_ or 1), str(stats) if stats else None)
    plan.check()
    check_writable(out, BUILD)
    if submit:   # the CLI layer: swarm_hpc/slurm is above this package, only its command line reaches up to it
        from swarm_hpc.knowledge.job import IndexJob
        from swarm_hpc.knowledge.job import submit as submit_job

        job = IndexJob(plan, np_ or 1, time_limit, partition)
        job_id = submit_job(job)
        click.echo(f"submitted index build job {job_id} ({np_ or 1} ranks) for {out}; follow it with "
                   f"`swarm-hpc status {job_id}` and `swarm-hpc logs {job_id}`")
        return
    if np_ is not None:
        _build_on_ranks(plan, np_)
        return
    started = time.monotonic()
    try:   # Ctrl-C at any point up to the manifest: write_index removes what it wrote, the old index stays
        chunks, vectors, embed_s, m = _embed_corpus(plan)
        manifest = builds.write(plan, m, chunks, vectors)
    except KeyboardInterrupt:
        click.echo(f"swarm-hpc: index build interrupted (Ctrl-C); {_untouched(out)}", err=True)
        sys.exit(130)
    click.echo(builds.summary(plan, manifest, m, len(chunks), embed_s, time.monotonic() - started))


def _build_on_ranks(plan: BuildPlan, np_: int) -> None:
    """The build on `np_` local MPI ranks (swarm_hpc/knowledge/rank.py); the plan travels in a temp file."""
    import tempfile

    from swarm_hpc.executor import LocalExecutor

    executor = LocalExecutor()
    executor.command(Path("<plan>"), np_)   # mpiexec missing: one line, nothing written
    with tempfile.TemporaryDirectory(prefix="swarm-hpc-index-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        plan.save(plan_file)
        out = Path(plan.out)
        before = _manifest(out)
        job = executor.submit(plan_file, np_, module=RANK_MODULE, extra_args=["--build"])
        try:
            job.wait()
        except KeyboardInterrupt:   # rank 0 may have written the manifest, the index's last file, just before
            done = _manifest(out) != before
            click.echo("swarm-hpc: index build interrupted (Ctrl-C); "
                       + (f"it had finished: {plan.out} is the new index, whole" if done else _untouched(plan.out)),
                       err=True)
            sys.exit(130)
    _exit_as(job.returncode or 0, _untouched(plan.out))


def _untouched(out: Path | str) -> str:
    """What a build that stopped early says of its output: the index there (if any) is the old one."""
    return f"nothing was written ({out} is as it was)"


def _manifest(out: Path) -> bytes | None:
    """The index's manifest as it is now (None: no index there): the build's last write replaces it."""
    try:
        return (out / MANIFEST).read_bytes()
    except OSError:
        return None


def _exit_as(rc: int, hint: str) -> None:
    """Leave as the ranks did: rank 0 has said what was wrong (exit 2); any other failure gets one line."""
    if rc not in (0, EXIT_USAGE):
        click.echo(f"swarm-hpc: the ranks exited with code {rc}; {hint}", err=True)
    if rc != 0:
        sys.exit(rc)


def _embed_corpus(plan: BuildPlan) -> tuple[list[Chunk], np.ndarray, float, EmbeddingModel]:
    corpus, chunks = builds.chunk_corpus(plan)
    from swarm_hpc.knowledge.embed import Embedder  # loads llama.cpp: only once the input is known to be good

    embedder = Embedder(plan.model, Path("."), plan.threads, BUILD, "--model")
    skipped = f", {len(corpus.skipped)} other files skipped" if corpus.skipped else ""
    click.echo(f"embedding {len(chunks)} chunks of {len(corpus.documents)} files ({corpus.chars:,} characters"
               f"{skipped}) with {embedder.model.name}", err=True)
    t0 = time.monotonic()
    try:
        vectors = embedder.embed([c.text for c in chunks])
    finally:
        embedder.close()
    return chunks, vectors, time.monotonic() - t0, embedder.model


@index.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("text", metavar="QUERY")
@click.option("--k", "k", type=int, default=5, show_default=True, help="How many passages to return.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON (source, text, score, offsets).")
@click.option("--model", default=None, help="Embedding model for the query (default: the index's own).")
@click.option("--threads", type=int, default=1, show_default=True, help="llama.cpp threads for embedding.")
@click.option("--np", "np_", type=int, default=None,
              help="Search across this many MPI ranks: each holds the shards i with i mod NP == its rank, rank 0 "
                   "merges the top-k exactly.")
def query(index_path: Path, text: str, k: int, as_json: bool, model: str | None, threads: int,
          np_: int | None) -> None:
    """The passages of INDEX most similar to QUERY, best first."""
    if not text.strip():
        raise UserError(QUERY, "the query is empty", 'give the question in quotes, e.g. "what voltage does the '
                        'Pi 5 need?"', "QUERY")
    if k <= 0:
        raise UserError(QUERY, f"--k {k} must be at least 1", "e.g. --k 5", "--k")
    for name, value in (("--threads", threads), ("--np", np_ or 1)):
        if value <= 0:
            raise UserError(QUERY, f"{name} {value} must be more than 0", f"e.g. {name} 1", name)
    if np_ is not None:
        if model is not None:
            raise UserError(QUERY, "--model cannot be given with --np (the ranks embed with the index's own model)",
                            "leave --model out", "--model")
        from swarm_hpc.executor import LocalExecutor

        read_manifest(index_path, QUERY, "INDEX")   # a missing or foreign index: one line before any rank starts
        job = LocalExecutor().submit(index_path, np_, module=RANK_MODULE,
                                     extra_args=["--query", text, "--k", str(k), "--threads", str(threads)]
                                     + (["--json"] if as_json else []))
        job.wait()
        _exit_as(job.returncode or 0, "no hits")
        return
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
    print_hits(index_path, text, k, idx.model.name, hits, idx.count, took_ms, as_json)
