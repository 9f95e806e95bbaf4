#!/usr/bin/env python3
"""Experts that share a model: one batch on one rank against one rank per expert, side by side in one run;
writes bench/results/batch.json.

    .venv/bin/python bench/batch.py [--models smollm2,gemma3,qwen-coder-0.5b,qwen-coder-1.5b] [--ks 2,4,8]
                                    [--max-tokens 64] [--reps 2] [--cores 2] [--vote 8]

1. Aggregate generation: K experts (K personas, greedy, `--max-tokens` each) answer at once,
   (a) batched: one process, an ExpertGroup (swarm_hpc/experts/group.py) with min(K, cores) threads;
   (b) separate: K processes, a LlamaExpert each with one thread (what one rank per expert runs);
   on the same cores (taskset). Reported: aggregate tok/s of the turn (completion tokens over the wall time from
   the common start to the last reply, prompts included), aggregate tok/s of generation alone (from the moment
   every prompt is in), per-expert tok/s, the ratios batched/separate [>= 2x at K = 4 on the 270M+ models], and
   PSS after the answers (the group's process against the K processes together). `same_greedy_text` compares
   the batched replies with the separate ones, which run at another thread count (1 against min(K, cores)).
   The two are alternated, `--reps` times each, and the medians are kept.
2. A vote of `--vote` experts on one model through the real swarm (`swarm-hpc run`, mpiexec), batch_experts
   true against false (rank 0 only coordinates): the round's wall time from summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from swarm_hpc.atomic import atomic_write_json  # noqa: E402

PERSONAS = ["You are brief.", "You are a geographer.", "You are a historian.", "You are a teacher.",
            "You are an engineer.", "You are a poet.", "You are careful.", "You are a travel guide."]
QUESTION = "What is the capital of France, and why is it famous? Answer in a few sentences."


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": PERSONAS[i % len(PERSONAS)]}, {"role": "user", "content": QUESTION}]


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the two sides, each in its own process --------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """One side's process: load, say "ready", wait for "go", answer, print the results, wait for "end"."""
    from swarm_hpc.experts.models import resolve_model

    model = resolve_model(args.model, ROOT)
    if args.child == "group":
        from swarm_hpc.experts.group import ExpertGroup, Member

        members = [Member(f"e{i}", n_ctx=1024, temperature=0.0, seed=1, max_tokens=args.max_tokens)
                   for i in range(args.k)]
        group = ExpertGroup(model, members, threads=args.threads)
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.time()
        for i, name in enumerate(group.names):
            group.begin(name, chat(args.first + i))
        done = {}
        gen_start = None
        while group.busy:
            done.update(group.step())
            if gen_start is None and not any(q.pending for q in group.decoder.seqs.values()):
                gen_start = time.time()   # every prompt is in: from here on, generation only
        gens = [done[n] for n in group.names]
    else:
        from swarm_hpc.experts.llama import LlamaExpert

        expert = LlamaExpert("e", model, n_ctx=1024, threads=args.threads, temperature=0.0, seed=1,
                             max_tokens=args.max_tokens)
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.time()
        gens = [expert.answer(chat(args.first))]
        gen_start = t0 + gens[0].prompt_seconds
    print(json.dumps({"start": t0, "gen_start": gen_start or t0, "end": time.time(), "pid": os.getpid(),
                      "replies": [{"tokens": g.completion_tokens, "gen_seconds": g.gen_seconds, "seconds": g.seconds,
                                   "content": g.content} for g in gens]}), flush=True)
    sys.stdin.readline()


def run_side(model: str, k: int, batched: bool, args: argparse.Namespace) -> dict:
    cores = ",".join(str(c) for c in range(args.cores))
    if batched:
        plan = [["--child", "group", "--k", str(k), "--threads", str(min(k, args.cores)), "--first", "0"]]
    else:
        plan = [["--child", "alone", "--k", "1", "--threads", "1", "--first", str(i)] for i in range(k)]
    procs = [subprocess.Popen(["taskset", "-c", cores, sys.executable, __file__, "--models", model,
                               "--max-tokens", str(args.max_tokens), *p], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for p in plan]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        pss = sum(pss_mb(o["pid"]) for o in outs)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("end\n")
            p.stdin.flush()
    finally:
        for p in procs:
            p.wait(timeout=60)
    replies = [r for o in outs for r in o["replies"]]
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    # generation only: from the moment every prompt is in (batched: the step after the last prompt piece; separate:
    # the last process to finish its prompt) to the last reply; the first token of each comes with its prompt
    gen_wall = max(o["end"] for o in outs) - max(o["gen_start"] for o in outs)
    tokens = sum(r["tokens"] for r in replies)
    gen_tokens = sum(max(r["tokens"] - 1, 0) for r in replies)
    return {"wall_s": round(wall, 3), "tokens": tokens, "agg_tok_s": round(tokens / wall, 2),
            "gen_tok_s": round(gen_tokens / max(gen_wall, 1e-9), 2),
            "per_expert_tok_s": round(statistics.median(r["tokens"] / r["seconds"] for r in replies), 2),
            "pss_mb": round(pss, 1), "contents": [r["content"] for r in replies]}


def vote_round(model: str, n: int, batched: bool, max_tokens: int, folder: Path) -> float:
    lines = ['task = "What is the capital of France? Answer in one word."', 'strategy = "vote"', "rounds = 1",
             "round_timeout = 600", "rank0_hosts_expert = false", f"batch_experts = {str(batched).lower()}"]
    for i in range(n):
        lines += ["[[experts]]", f'name = "e{i}"', f'model = "{model}"', f'persona = "{PERSONAS[i % 8]}"',
                  "temperature = 0.7", f"seed = {i + 1}", f"max_tokens = {max_tokens}", "n_ctx = 1024"]
    spec = folder / f"vote-{batched}.toml"
    spec.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "swarm_hpc", "run", str(spec), "--out", str(folder / "runs")],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    run_dir = Path(next(line.split(": ", 1)[1].strip() for line in out.splitlines()
                        if line.startswith("run directory: ")))
    summary = json.loads((run_dir / "summary.json").read_text())
    return float(summary["steps"][0]["wall_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3,qwen-coder-0.5b,qwen-coder-1.5b")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cores", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--vote", type=int, default=8, help="experts in the vote round (0: skip)")
    ap.add_argument("--vote-model", default="gemma3")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "batch.json")
    ap.add_argument("--child", choices=["group", "alone"], help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.model = args.models
        child(args)
        return
    os.environ.pop("SWARM_HPC_SKIP_MODELS", None)
    from swarm_hpc.experts.models import available

    result: dict = {"cores": args.cores, "max_tokens": args.max_tokens, "reps": args.reps, "machine": os.uname().nodename,
                    "runs": []}
    if not args.models and args.out.exists():   # --models "": the vote again, the runs kept
        result = json.loads(args.out.read_text())
    for model in [m for m in args.models.split(",") if m]:
        if not available(model, ROOT):
            print(f"{model}: not installed, skipped", flush=True)
            continue
        for k in [int(x) for x in args.ks.split(",")]:
            sides: dict[str, list[dict]] = {"batched": [], "separate": []}
            for _ in range(args.reps):  # alternated, so that the machine's load falls on both alike
                for name in ("batched", "separate"):
                    sides[name].append(run_side(model, k, name == "batched", args))
            row = {"model": model, "k": k}
            for name, runs in sides.items():
                row[name] = {key: statistics.median(r[key] for r in runs)
                             for key in ("agg_tok_s", "gen_tok_s", "per_expert_tok_s", "wall_s", "pss_mb")}
            row["same_greedy_text"] = sides["batched"][0]["contents"] == sides["separate"][0]["contents"]
            row["speedup"] = round(row["batched"]["agg_tok_s"] / row["separate"]["agg_tok_s"], 2)
            row["gen_speedup"] = round(row["batched"]["gen_tok_s"] / row["separate"]["gen_tok_s"], 2)
            row["pss_ratio"] = round(row["batched"]["pss_mb"] / row["separate"]["pss_mb"], 2)
            result["runs"].append(row)
            print(f"{model:16} K={k}: turn {row['batched']['agg_tok_s']:6.1f} vs {row['separate']['agg_tok_s']:6.1f} "
                  f"tok/s x{row['speedup']}; generation {row['batched']['gen_tok_s']:6.1f} vs "
                  f"{row['separate']['gen_tok_s']:6.1f} tok/s x{row['gen_speedup']}; PSS {row['batched']['pss_mb']:.0f} "
                  f"vs {row['separate']['pss_mb']:.0f} MB; same text: {row['same_greedy_text']}", flush=True)
            atomic_write_json(args.out, result)
    if args.vote:
        with tempfile.TemporaryDirectory() as tmp:
            walls: dict[str, list[float]] = {"batched": [], "separate": []}
            for _ in range(args.reps):
                for name in ("batched", "separate"):
                    walls[name].append(vote_round(args.vote_model, args.vote, name == "batched", args.max_tokens,
                                                  Path(tmp)))
        vote = {k: round(statistics.median(v), 2) for k, v in walls.items()}
        vote["speedup"] = round(vote["separate"] / vote["batched"], 2)
        result["vote"] = {"model": args.vote_model, "experts": args.vote, "round_wall_s": vote}
        print(f"vote of {args.vote} on {args.vote_model}: round {vote['batched']} s batched, {vote['separate']} s "
              f"one rank per expert (x{vote['speedup']})", flush=True)
    atomic_write_json(args.out, result)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
