#!/usr/bin/env python3
"""Retrieval over a sharded index (issue 12), side by side in one run; writes bench/results/rag.json and rag.md.

    .venv/bin/python bench/rag.py [--docs 10000] [--build-docs 2000] [--questions 500] [--seed 0] [--repeats 1]

A generated corpus (bench/ragdata.py: one short document per made-up person, facts no model can know; written
to bench/work/rag/, not committed) and generated questions whose answers are in it. Measured, with the bundled
MiniLM (llama.cpp, one thread a rank):

1. index build on 1 rank against 2 ranks (`swarm-hpc index build --np N`, Open MPI binding each rank to a core
   of its own, `--build-docs` documents, --repeats times in alternating order): wall time of the command, the
   embedding time rank 0 reports, the speed-up, memory (RSS, PSS, peak RSS) per rank, and whether the two
   indexes hold the same vectors (they must, to the bit); and the machine's ceiling for that speed-up, two bare
   embedding processes (no MPI, no swarm-hpc between them) against one;
2. the full --docs index built on 2 ranks (its build time and memory too);
3. recall@5 (the gold document among the 5 hits) on both indexes, and query latency (embedding the question
   and searching, in one process pinned to one core, one thread) p50/p90 on the full index, split into embed and
   search; the query process's memory;
4. exact search alone on random vectors of 10k to 400k chunks: how far exact search stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from ragdata import WORK, Question, people, questions, write_corpus  # noqa: E402

from swarm_hpc.atomic import atomic_write, atomic_write_json  # noqa: E402

RESULTS = HERE / "results"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMPI_MCA_hwloc_base_binding_policy": "core",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

QUERY_CHILD = r"""
import json, sys, time
from pathlib import Path
from swarm_hpc.knowledge.embed import Embedder
from swarm_hpc.knowledge.index import load_index
index, qfile, k = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
qs = [json.loads(line) for line in qfile.read_text().splitlines()]
t = time.monotonic(); idx = load_index(index); load_s = time.monotonic() - t
emb = Embedder(idx.model.ref, threads=1)
for q in qs[:5]:   # warm-up
    idx.search(emb.embed_one(q["question"]), k)
rows = []
for q in qs:
    t0 = time.perf_counter(); v = emb.embed_one(q["question"]); t1 = time.perf_counter()
    hits = idx.search(v, k); t2 = time.perf_counter()
    sources = [h.source for h in hits]
    rows.append({"embed_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3, "hit": q["source"] in sources,
                 "rank": sources.index(q["source"]) + 1 if q["source"] in sources else None,
                 "answer_in_passage": any(q["answer"] in h.text for h in hits if h.source == q["source"]),
                 "fact": q["fact"]})
mem = {}
for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
    key, _, rest = line.partition(":")
    if key in ("Rss", "Pss"):
        mem[key.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
print(json.dumps({"chunks": idx.count, "load_s": load_s, "rows": rows, "memory": mem,
                  "cpus": Path("/proc/self/status").read_text().split("Cpus_allowed_list:")[1].split()[0]}))
"""


BARE_CHILD = r"""
import json, sys, time
from pathlib import Path
from swarm_hpc.knowledge.embed import Embedder
texts = [Path(p).read_text() for p in sys.argv[1:]]
emb = Embedder("minilm", threads=1)
emb.embed(texts[:3])
t = time.monotonic(); emb.embed(texts); print(json.dumps({"seconds": time.monotonic() - t}))
"""


def ceiling(work: Path, corpus: str, n: int) -> dict[str, Any]:
    """The machine's own ceiling: one bare embedding process (no MPI) on core 0, then two at once on cores 0 and
    1, each embedding the same `n` documents: 2 x alone / together is the most 2 ranks could gain."""
    files = [str(p) for p in sorted((work / corpus).iterdir())[:n]]
    cmd = lambda core: ["taskset", "-c", str(core), sys.executable, "-c", BARE_CHILD, *files]
    alone = json.loads(sh(cmd(0), work)[1].strip().splitlines()[-1])["seconds"]
    procs = [subprocess.Popen(cmd(c), cwd=work, env=ENV, stdout=subprocess.PIPE, text=True) for c in (0, 1)]
    both = [json.loads(p.communicate()[0].strip().splitlines()[-1])["seconds"] for p in procs]
    return {"texts": n, "alone_seconds": round(alone, 3), "together_seconds": [round(b, 3) for b in both],
            "speedup": round(2 * alone / max(both), 3)}


SCALE_CHILD = r"""
import json, sys, time
import numpy as np
from swarm_hpc.knowledge.index import ExactSearch
rng = np.random.default_rng(0)
out = {}
for n in map(int, sys.argv[1:]):
    v = rng.standard_normal((n, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = ExactSearch(v)
    qs = v[rng.integers(0, n, 25)] + 0.1 * rng.standard_normal((25, 384)).astype(np.float32)
    times = []
    for q in qs:
        t = time.perf_counter(); s.search(q, 5); times.append((time.perf_counter() - t) * 1e3)
    out[n] = sorted(times)[len(times) // 2]
    del v, s
print(json.dumps(out))
"""


def search_scaling(work: Path, sizes: list[int]) -> dict[str, float]:
    """Exact search p50 (ms, top-5, one core) over random unit vectors of 384 dimensions, by index size."""
    _, out = sh(["taskset", "-c", "0", sys.executable, "-c", SCALE_CHILD, *map(str, sizes)], work)
    return {k: round(v, 3) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] = ENV) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return took, p.stdout + p.stderr


def build(work: Path, corpus: str, out: str, ranks: int) -> dict[str, Any]:
    """`swarm-hpc index build --np ranks` into a new folder; its wall time and rank 0's stats."""
    shutil.rmtree(work / out, ignore_errors=True)
    stats = work / f"{out}.stats.json"
    took, log = sh([sys.executable, "-m", "swarm_hpc", "index", "build", corpus, "--out", out, "--np", str(ranks),
                    "--stats", str(stats), "--threads", "1"], work)
    print(f"  {log.strip().splitlines()[-1]}", flush=True)
    return {"ranks": ranks, "wall_seconds": round(took, 2), **json.loads(stats.read_text())}


def same_vectors(a: Path, b: Path) -> bool:
    import numpy as np

    from swarm_hpc.knowledge.index import load_index

    va = np.concatenate([s.searcher.vectors for s in load_index(a).shards])
    vb = np.concatenate([s.searcher.vectors for s in load_index(b).shards])
    return bool(va.shape == vb.shape and np.array_equal(va, vb))


def query_run(work: Path, index: str, qs: list[Question], k: int = 5) -> dict[str, Any]:
    qfile = work / f"{index}.questions.jsonl"
    qfile.write_text("".join(json.dumps(asdict(q)) + "\n" for q in qs))
    _, out = sh(["taskset", "-c", "0", sys.executable, "-c", QUERY_CHILD, index, str(qfile), str(k)], work)
    got = json.loads(out.strip().splitlines()[-1])
    rows = got["rows"]
    total = [r["embed_ms"] + r["search_ms"] for r in rows]
    pct = lambda xs, p: round(statistics.quantiles(xs, n=100)[p - 1], 2)
    by_fact: dict[str, list[bool]] = {}
    for r in rows:
        by_fact.setdefault(r["fact"], []).append(r["hit"])
    return {"index": index, "chunks": got["chunks"], "questions": len(rows), "k": k,
            "recall_at_k": round(sum(r["hit"] for r in rows) / len(rows), 4),
            "answer_in_gold_passage": round(sum(r["answer_in_passage"] for r in rows) / len(rows), 4),
            "recall_by_fact": {f: round(sum(v) / len(v), 3) for f, v in sorted(by_fact.items())},
            "mean_rank_of_gold": round(statistics.mean(r["rank"] for r in rows if r["rank"]), 2),
            "latency_ms": {"p50": pct(total, 50), "p90": pct(total, 90), "embed_p50": pct([r["embed_ms"] for r in rows], 50),
                           "search_p50": pct([r["search_ms"] for r in rows], 50)},
            "load_seconds": round(got["load_s"], 3), "memory": got["memory"], "cpus": got["cpus"],
            "misses": [asdict(q) for q, r in zip(qs, rows, strict=True) if not r["hit"]][:10]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10000, help="documents in the full corpus (chunks: one each)")
    ap.add_argument("--build-docs", type=int, default=2000, help="documents of the 1-vs-2-rank build comparison")
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="builds per rank count (alternating order)")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=RESULTS / "rag.json")
    args = ap.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    persons = people(args.docs, args.seed)
    small, full = f"people-{args.build_docs}-s{args.seed}", f"people-{args.docs}-s{args.seed}"
    write_corpus(work / small, persons[:args.build_docs])
    write_corpus(work / full, persons)
    load_before = os.getloadavg()
    print(f"corpus: {args.docs} documents ({full}), {args.build_docs} for the build comparison; load {load_before}")

    builds: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for ranks in ((1, 2) if rep % 2 == 0 else (2, 1)):
            print(f"build {small} on {ranks} rank(s), repeat {rep + 1}", flush=True)
            builds.append(build(work, small, f"{small}-np{ranks}.index", ranks))
    print("bare ceiling", flush=True)
    bare = ceiling(work, small, min(300, args.build_docs))
    med = {n: {key: statistics.median(b[key] for b in builds if b["ranks"] == n)
               for key in ("wall_seconds", "embed_seconds", "total_seconds")} for n in (1, 2)}
    same = same_vectors(work / f"{small}-np1.index", work / f"{small}-np2.index")
    print(f"build {full} on 2 ranks", flush=True)
    full_build = build(work, full, f"{full}.index", 2)

    print("queries", flush=True)
    q_small = query_run(work, f"{small}-np2.index", questions(persons[:args.build_docs], small, args.questions, args.seed))
    q_full = query_run(work, f"{full}.index", questions(persons, full, args.questions, args.seed))

    print("exact search by size", flush=True)
    scaling = search_scaling(work, [10_000, 50_000, 100_000, 200_000, 400_000])

    result = {
        "benchmark": "rag", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                    "load_after": os.getloadavg()},
        "model": "minilm (all-MiniLM-L6-v2, llama.cpp, 1 thread a rank)",
        "corpus": {"documents": args.docs, "build_documents": args.build_docs, "seed": args.seed,
                   "example": persons[0].document().strip()},
        "build": {"runs": builds, "median": med,
                  "speedup_embed": round(med[1]["embed_seconds"] / med[2]["embed_seconds"], 3),
                  "speedup_wall": round(med[1]["wall_seconds"] / med[2]["wall_seconds"], 3),
                  "same_vectors_1_vs_2_ranks": same, "bare_ceiling": bare, "full_index_on_2_ranks": full_build},
        "query": {"small": q_small, "full": q_full},
        "exact_search_p50_ms_by_chunks": scaling,
        "targets": {"recall_at_5": ">= 0.95", "latency_p50_ms_10k": "<= 20", "build_speedup_2_ranks": ">= 1.8"},
    }
    atomic_write_json(args.out, result)
    atomic_write(args.out.with_suffix(".md"), report(result))
    print(report(result))


def report(r: dict[str, Any]) -> str:
    b, qs, qf = r["build"], r["query"]["small"], r["query"]["full"]
    m1, m2 = b["median"][1], b["median"][2]
    ranks2 = b["runs"][[x["ranks"] for x in b["runs"]].index(2)]["per_rank"]
    lines = [
        f"# Retrieval benchmark ({r['date']}, {r['machine']['cpus']} cores, load before {r['machine']['load_before'][0]:.2f})",
        "",
        f"Corpus: {r['corpus']['documents']} made-up people, one short document each, e.g. \"{r['corpus']['example']}\"",
        f"Model: {r['model']}. Generated by `bench/rag.py` (seed {r['corpus']['seed']}).",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| recall@5, {qf['chunks']} chunks ({qf['questions']} questions) | {qf['recall_at_k']:.3f} | >= 0.95 |",
        f"| recall@5, {qs['chunks']} chunks ({qs['questions']} questions) | {qs['recall_at_k']:.3f} | >= 0.95 |",
        f"| query p50 (embed + search), {qf['chunks']} chunks, 1 core | {qf['latency_ms']['p50']:.1f} ms "
        f"(embed {qf['latency_ms']['embed_p50']:.1f}, search {qf['latency_ms']['search_p50']:.2f}; p90 "
        f"{qf['latency_ms']['p90']:.1f}) | <= 20 ms |",
        f"| build of {r['corpus']['build_documents']} chunks, 1 rank -> 2 ranks (embedding) | {m1['embed_seconds']:.1f} s -> "
        f"{m2['embed_seconds']:.1f} s: {b['speedup_embed']:.2f}x | >= 1.8x |",
        f"| the same, whole command (start-up, chunking, writing) | {m1['wall_seconds']:.1f} s -> {m2['wall_seconds']:.1f} s: "
        f"{b['speedup_wall']:.2f}x | |",
        f"| the machine's ceiling: 2 bare embedding processes (no MPI) vs 1, {b['bare_ceiling']['texts']} texts each "
        f"| {b['bare_ceiling']['speedup']:.2f}x | |",
        f"| vectors of the 2-rank build == 1-rank build | {b['same_vectors_1_vs_2_ranks']} | bit for bit |",
        f"| full index ({qf['chunks']} chunks) on 2 ranks | {b['full_index_on_2_ranks']['wall_seconds']:.1f} s | |",
        "",
        "Memory per rank, 2-rank build (MB): " + "; ".join(
            f"rank {i}: RSS {x.get('rss_mb')}, PSS {x.get('pss_mb')}, peak RSS {x.get('peak_rss_mb')}"
            for i, x in enumerate(ranks2)),
        f"Query process ({qf['chunks']} chunks loaded, model loaded): RSS {qf['memory'].get('rss_mb')} MB, "
        f"PSS {qf['memory'].get('pss_mb')} MB.",
        "",
        "Exact search alone (top-5, one core, random unit vectors of 384 dimensions), p50 ms by chunks: "
        + ", ".join(f"{int(k):,}: {v:.2f}" for k, v in r["exact_search_p50_ms_by_chunks"].items()),
        "",
        f"Recall@5 by fact asked ({qf['chunks']} chunks): " + ", ".join(f"{k} {v:.3f}" for k, v in qf["recall_by_fact"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
