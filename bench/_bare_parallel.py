"""The hardware's own ceiling for bench/rounds.py: N bare llama-cpp-python processes (no MPI, no swarm code)
answering a turn at the same moment, versus one of them (each in turn) answering a turn alone. The two alternate rep by rep
(as the swarm's parallel and one-after-another steps do), and every turn asks a question of its own, so that
none finds its prompt in the KV cache. Prints JSON: per rep, the alone wall time and the together wall time
(until the last process has answered)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from _rounds_ranks import QUESTION, SYSTEM  # the same turn the MPI side answers


def worker(i: int, n: int, model: str, n_ctx: int, max_tokens: int, reps: int, barrier, out) -> None:
    from swarm_hpc.experts.llama import load_llama
    from swarm_hpc.experts.models import resolve_model

    llm = load_llama(resolve_model(model, Path(".")), n_ctx, 1, 1)
    msgs = lambda tag: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(rep=tag)}]
    answer = lambda tag: llm.create_chat_completion(messages=msgs(tag), max_tokens=max_tokens, temperature=0.0, seed=1)
    llm.create_chat_completion(messages=msgs(-1), max_tokens=8, temperature=0.0)  # warm-up
    alone, together = [], []
    for rep in range(reps):
        barrier.wait()
        if i == rep % n:  # each process in turn (as each expert takes its turn); the others wait asleep
            t0 = time.perf_counter()
            answer(2000 + 2 * rep)
            alone.append(time.perf_counter() - t0)
        barrier.wait()
        t0 = time.perf_counter()
        answer(2001 + 2 * rep)
        together.append(time.perf_counter() - t0)
    out.put((i, alone, together))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(a.n), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, a.n, a.model, a.n_ctx, a.max_tokens, a.reps, barrier, out)) for i in range(a.n)]
    for p in procs:
        p.start()
    results = sorted(out.get() for _ in procs)
    for p in procs:
        p.join()
    alone = [results[k % a.n][1][k // a.n] for k in range(a.reps)]  # rep k: process k % n alone
    together = [max(r[2][k] for r in results) for k in range(a.reps)]
    print(json.dumps({"alone": alone, "together": together, "n": a.n}))


if __name__ == "__main__":
    main()
