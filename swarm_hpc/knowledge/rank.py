"""What every rank of a distributed index build or query runs (mpiexec, or srun in a SLURM job):

    python -m swarm_hpc.knowledge.rank PLAN.json --build
    python -m swarm_hpc.knowledge.rank INDEX --query TEXT [--k K] [--json] [--threads T]

**Build.** Every rank loads the embedding model while rank 0 reads and chunks the corpus and splits the chunks
into contiguous ranges of about equal work (build.split); rank 0 sends each rank its range's texts, embeds its own,
and collects the others' vectors (with each rank's timing and memory). Only when every range is back does rank 0
write the index (write_index: shard files, then the manifest, atomically), so a failed, killed or interrupted
build writes nothing the old index would miss: a rank's error reaches rank 0 and is printed as one line (exit 2);
SIGTERM (Ctrl-C in `swarm-hpc index build`, scancel, mpiexec ending the job after a killed rank) is turned into
KeyboardInterrupt, so that a rank 0 in the middle of writing removes what it wrote.

**Query.** Rank 0 embeds the query while every rank loads its shards (distributed.py); the vector is broadcast,
every rank searches its shards, rank 0 merges the top-k exactly and prints them as `index query` does.

Every wait sleeps (mpiwait.py): a rank done early does not spin on a core another rank embeds on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.errors import EXIT_USAGE, UserError
from swarm_hpc.experts.memory import peak_rss_mb, pss_mb, rss_mb
from swarm_hpc.knowledge import build as builds
from swarm_hpc.knowledge import mpiwait
from swarm_hpc.knowledge.build import BuildPlan
from swarm_hpc.knowledge.chunks import Chunk

TAG_WORK, TAG_VECTORS, TAG_VERDICT = 21, 22, 23
QUERY = "swarm-hpc index query"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def memory() -> dict[str, Any]:
    """This process's memory now, in MB: RSS, PSS (shared pages split among the processes that map them: the
    fair share of a model file several ranks map) and the peak RSS; and the cores it may run on."""
    return {"rss_mb": round(rss_mb(), 1), "pss_mb": round(pss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "cpus": ",".join(map(str, sorted(os.sched_getaffinity(0))))}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build(comm: Any, plan: BuildPlan) -> int:
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    started = time.monotonic()
    error = ""
    embedder = None
    try:
        from swarm_hpc.knowledge.embed import Embedder

        embedder = Embedder(plan.model, Path("."), plan.threads, builds.BUILD, "--model")
    except UserError as e:
        error = str(e)
    if rank != 0:
        return _build_part(comm, embedder, error)
    chunks: list[Chunk] = []
    ranges: list[tuple[int, int]] = []
    if not error:
        try:
            corpus, chunks = builds.chunk_corpus(plan)
            ranges = builds.split(chunks, size)
            assert embedder is not None
            skipped = f", {len(corpus.skipped)} other files skipped" if corpus.skipped else ""
            say(f"embedding {len(chunks)} chunks of {len(corpus.documents)} files ({corpus.chars:,} characters"
                f"{skipped}) with {embedder.model.name} on {size} ranks")
        except UserError as e:
            error = str(e)
    sends = [comm.isend({"error": error, "texts": [] if error else [c.text for c in chunks[a:b]]}, dest=r,
                        tag=TAG_WORK) for r, (a, b) in enumerate(ranges or [(0, 0)] * size) if r > 0]
    for req in sends:
        mpiwait.complete(req)
    if error:
        say(f"swarm-hpc: error: {error}")
        return EXIT_USAGE
    assert embedder is not None
    t0 = time.monotonic()
    a, b = ranges[0]
    parts: dict[int, np.ndarray] = {0: embedder.embed([c.text for c in chunks[a:b]])}
    stats: dict[int, dict[str, Any]] = {0: {"chunks": b - a, "seconds": round(time.monotonic() - t0, 3),
                                             **memory()}}
    embedder.close()
    errors: list[str] = []
    for _ in range(size - 1):
        src, got = mpiwait.receive(comm, MPI.ANY_SOURCE, TAG_VECTORS)
        if got.get("error"):
            errors.append(f"rank {src}: {got['error']}" if not got["error"].startswith(builds.BUILD) else got["error"])
            continue
        parts[src] = got["vectors"]
        stats[src] = got["stats"]
    if errors:
        say(f"swarm-hpc: error: {errors[0]}")
        return EXIT_USAGE
    embed_s = time.monotonic() - t0
    vectors = np.concatenate([parts[r] for r in range(size)]) if chunks else np.zeros((0, embedder.dim), np.float32)
    manifest = builds.write(plan, embedder.model, chunks, vectors)
    total_s = time.monotonic() - started
    if plan.stats:
        atomic_write_json(Path(plan.stats), {"ranks": size, "chunks": len(chunks), "embed_seconds": round(embed_s, 3),
                                             "total_seconds": round(total_s, 3),
                                             "per_rank": [stats[r] for r in range(size)]})
    print(builds.summary(plan, manifest, embedder.model, len(chunks), embed_s, total_s, size), flush=True)
    return 0


def _build_part(comm: Any, embedder: Any, error: str) -> int:
    """A rank > 0: take its texts from rank 0, embed them, send the vectors back (or its error)."""
    _, work = mpiwait.receive(comm, 0, TAG_WORK)
    if work["error"]:   # rank 0 says what was wrong
        return EXIT_USAGE
    reply: dict[str, Any] = {"error": error}
    if not error:
        t0 = time.monotonic()
        try:
            vectors = embedder.embed(work["texts"])
            reply = {"error": "", "vectors": vectors,
                     "stats": {"chunks": len(work["texts"]), "seconds": round(time.monotonic() - t0, 3), **memory()}}
        except Exception as e:   # llama.cpp failing on this rank's texts: rank 0 says so, nothing is written
            reply = {"error": f"{type(e).__name__}: {e}"}
        embedder.close()
    mpiwait.send(comm, reply, 0, TAG_VECTORS)
    return 0


def query(comm: Any, index_path: Path, text: str, k: int, as_json: bool, threads: int) -> int:
    from swarm_hpc.knowledge.distributed import load_part, search_across
    from swarm_hpc.knowledge.index import read_manifest

    rank, size = comm.Get_rank(), comm.Get_size()
    error = ""
    part = embedder = None
    try:
        manifest = read_manifest(index_path, QUERY)
        part = load_part(index_path, len(manifest["shards"]), rank, size, QUERY)
        if rank == 0:
            from swarm_hpc.knowledge.embed import Embedder

            embedder = Embedder(part.model.ref, Path("."), threads, QUERY, "INDEX")
            part.check_model(embedder.model, QUERY, "--model")
    except UserError as e:
        error = str(e)
    verdict = mpiwait.agree(comm, error)
    if verdict:
        if rank == 0:
            say(f"swarm-hpc: error: {verdict}")
        return EXIT_USAGE
    assert part is not None
    t0 = time.monotonic()
    vec = embedder.embed_one(text) if embedder is not None else None
    hits = search_across(comm, part, vec, k)
    if rank == 0:
        from swarm_hpc.knowledge.show import print_hits

        assert hits is not None and embedder is not None
        took_ms = (time.monotonic() - t0) * 1000
        embedder.close()
        print_hits(index_path, text, k, part.model.name, hits, part.count, took_ms, as_json, size)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm_hpc.knowledge.rank", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="the build plan (--build) or the index (--query)")
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--query")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        if args.build:
            return build(comm, BuildPlan.load(args.path))
        if args.query is not None:
            return query(comm, args.path, args.query, args.k, args.json, args.threads)
    except UserError as e:   # a plan that cannot be read: every rank finds it alike
        if comm.Get_rank() == 0:
            say(f"swarm-hpc: error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    ap.error("give --build or --query")
    return EXIT_USAGE


if __name__ == "__main__":
    code = main()
    if code == 130:   # interrupted: other ranks may be gone already, and MPI_Finalize would wait for them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
