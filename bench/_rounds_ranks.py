"""The MPI side of bench/rounds.py (started by it with mpiexec; not meant to be run by hand).

Rank 0 only coordinates; ranks 1..N each host one expert on the same model. Rank 0 alternates, rep by rep:
- a parallel step (all N experts answer the same turn at once) and N turns one after another. Every step asks
  a question of its own: had the one-after-another turns repeated the parallel step's prompt, they would find it
  in the KV cache and skip the prompt evaluation that the parallel step paid (8-9 tokens, ~7 % of a turn);
- with --bare: the same turn answered by bare llama-cpp-python inside rank 0 (no MPI, no swarm code) and by
  expert 1 through the layer.
Every step also records the CPU time each rank used during it (rank 0: getrusage; expert ranks: their
schedstat), which shows what waiting costs (SWARM_HPC_WAIT_MAX sets how long a waiting rank may sleep).
Then it reads every expert rank's memory from /proc and writes the raw measurements as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from swarm_hpc.core.dialogue import Turn
from swarm_hpc.core.spec import parse_spec
from swarm_hpc.experts.llama import load_llama
from swarm_hpc.experts.models import resolve_model
from swarm_hpc.mpi.exchange import Exchange
from swarm_hpc.mpi.expert_loop import serve
from swarm_hpc.mpi.startup import start_ranks

SYSTEM = "You are a helpful assistant who explains things clearly."
QUESTION = "Explain in detail how a cluster of small computers can work together on one problem. ({rep})"


def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:"):
            out[parts[0].rstrip(":").lower()] = int(parts[1])
    return out


def cpu_seconds(pid: int | None) -> float:
    """CPU time used so far: this process (all threads) for None, else another rank's main thread."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bare", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    spec = parse_spec({"task": "bench", "strategy": "debate", "rounds": 1, "rank0_hosts_expert": False,
                       "experts": [{"name": f"e{i}", "model": a.model, "persona": SYSTEM, "temperature": 0.0,
                                    "threads": 1, "n_ctx": a.n_ctx, "max_tokens": a.max_tokens}
                                   for i in range(a.experts)]}, "bench")
    started = start_ranks(comm, lambda: (spec, Path(".")))
    if comm.Get_rank() != 0:
        serve(started.channel, started.expert)
        return

    infos = started.infos
    ex = Exchange(started.channel, started.where)
    names = spec.expert_names
    pids = {i.expert: i.pid for i in infos if i.expert}

    def turn(name: str, tag: int) -> Turn:
        return Turn(name, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(rep=tag)}])

    def step(k: int, who: list[str]) -> dict:
        """Step k: its own question (numbered k), so no step finds its prompt in an expert's KV cache."""
        cpu0 = {n: cpu_seconds(pids[n]) for n in names} | {"rank0": cpu_seconds(None)}
        t0 = time.perf_counter()
        res = ex.run_step([turn(n, k) for n in who], timeout=600)
        wall = time.perf_counter() - t0
        cpu = {n: cpu_seconds(pids[n]) - cpu0[n] for n in names} | {"rank0": cpu_seconds(None) - cpu0["rank0"]}
        gens = [r.generation for r in res.values()]
        return {"wall": wall, "slowest": max(g.seconds for g in gens), "tokens": sum(g.completion_tokens for g in gens),
                "gen_tok_s": [g.tok_s for g in gens], "answered": len(gens),
                "prompt_eval": [g.prompt_eval_tokens for g in gens], "prompt_s": [g.prompt_seconds for g in gens],
                "cpu_s": cpu, "idle": [n for n in names if n not in who]}

    k = 0
    rows = []
    bare_llm = None
    if a.bare:
        bare_llm = load_llama(resolve_model(a.model, Path(".")), a.n_ctx, 1, 1)
    step(k := k + 1, names)  # warm-up: page the model in everywhere
    for rep in range(a.reps):
        row = {"rep": rep}
        row["parallel"] = step(k := k + 1, names)
        row["sequential"] = [step(k := k + 1, [n]) for n in names]
        if bare_llm is not None:
            from llama_cpp import llama_cpp as C

            msgs = turn("bare", 1000 + rep).messages
            C.llama_perf_context_reset(bare_llm.ctx)
            t0 = time.perf_counter()
            out = bare_llm.create_chat_completion(messages=msgs, max_tokens=a.max_tokens, temperature=0.0, seed=1)
            wall = time.perf_counter() - t0
            perf = C.llama_perf_context(bare_llm.ctx)
            n = out["usage"]["completion_tokens"]
            row["bare"] = {"tokens": n, "wall": wall, "gen_tok_s": n / (perf.t_eval_ms / 1000.0)}
            one = ex.run_step([turn(names[0], 1000 + rep)], timeout=600)[names[0]].generation
            row["rank"] = {"tokens": one.completion_tokens, "wall": one.seconds, "gen_tok_s": one.tok_s}
        rows.append(row)
    mem = {i.rank: memory_kb(i.pid) for i in infos if i.expert}
    ex.stop()
    a.out.write_text(json.dumps({"experts": a.experts, "model": a.model, "n_ctx": a.n_ctx,
                                 "model_path": infos[1].model_path, "wakeup": {i.rank: i.wakeup for i in infos},
                                 "rows": rows, "memory_kb": mem}))


if __name__ == "__main__":
    main()
