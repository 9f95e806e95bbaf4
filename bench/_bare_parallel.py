"""The hardware's own ceiling for bench/rounds.py: N bare llama-cpp-python processes (no MPI, no swarm code)
answering the same turn at the same moment, versus one answering it alone. Prints JSON."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from _rounds_ranks import QUESTION, SYSTEM  # the same turn the MPI side answers


def worker(model: str, n_ctx: int, max_tokens: int, reps: int, barrier, out) -> None:
    from swarm_hpc.expert import load_llama
    from swarm_hpc.models import resolve_model

    llm = load_llama(resolve_model(model, Path(".")), n_ctx, 1, 1)
    msgs = lambda rep: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(rep=rep)}]
    llm.create_chat_completion(messages=msgs(-1), max_tokens=8, temperature=0.0)  # warm-up
    walls = []
    for rep in range(reps):
        barrier.wait()
        t0 = time.perf_counter()
        llm.create_chat_completion(messages=msgs(2000 + rep), max_tokens=max_tokens, temperature=0.0, seed=1)
        walls.append(time.perf_counter() - t0)
    out.put(walls)


def run(n: int, model: str, n_ctx: int, max_tokens: int, reps: int) -> list[float]:
    """Per rep, the wall time until all n processes have answered."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(model, n_ctx, max_tokens, reps, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return [max(r[i] for r in results) for i in range(reps)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    alone = run(1, a.model, a.n_ctx, a.max_tokens, a.reps)
    together = run(a.n, a.model, a.n_ctx, a.max_tokens, a.reps)
    print(json.dumps({"alone": alone, "together": together, "n": a.n}))


if __name__ == "__main__":
    main()
