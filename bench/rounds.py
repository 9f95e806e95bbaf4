#!/usr/bin/env python3
"""Benchmark of the swarm core on a bundled model; prints ratios measured side by side in one run and writes
bench/results/rounds.json.

    .venv/bin/python bench/rounds.py [--model smollm2] [--reps 5] [--max-tokens 64]

What it measures (targets in brackets):
1. speedup of a parallel round over the same turns answered one after another [>= 0.9 x min(experts, cores)],
   next to the same speedup for bare llama-cpp-python processes (what the machine allows at that moment);
2. the layer's own cost: round wall time minus the slowest expert's turn, as a share of the round [<= 2 %];
3. an expert rank's generation tok/s over bare llama-cpp-python, same model, prompt and threads [>= 0.97];
4. memory of N ranks sharing one model file [<= model + N x (KV cache + 150 MB)], next to one rank's;
5. what waiting costs: the CPU that rank 0 and an idle expert rank use while they wait [<= 0.5 % of a core], and
   1 and 2 again for another way of waiting, alternated half by half: `--against REV` runs the MPI side of this
   benchmark as it stood at git revision REV (from a temporary worktree); without it, this code with its
   doorbells off (SWARM_HPC_WAKEUP=poll: probing with the capped back-off alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swarm_hpc.atomic import atomic_write_json  # noqa: E402
from swarm_hpc.executor import LocalExecutor  # noqa: E402
from swarm_hpc.experts.models import resolve_model  # noqa: E402

MB = 1024 * 1024


def run_ranks(n_experts: int, args: argparse.Namespace, bare: bool, root: Path = HERE.parent,
              env: dict[str, str] | None = None) -> dict:
    """bench/_rounds_ranks.py of the source tree at `root` under mpiexec; its raw measurements."""
    ex = LocalExecutor()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "raw.json"
        cmd = [ex.mpiexec, "-n", str(n_experts + 1), sys.executable, str(root / "bench" / "_rounds_ranks.py"),
               "--experts", str(n_experts), "--model", args.model, "--reps", str(args.reps),
               "--max-tokens", str(args.max_tokens), "--n-ctx", str(args.n_ctx), "--out", str(out)]
        full_env = {**ex.env(), "PYTHONPATH": str(root), **(env or {})}
        subprocess.run(cmd + (["--bare"] if bare else []), env=full_env, check=True, cwd=root)
        return json.loads(out.read_text())


@contextlib.contextmanager
def other_waiting(against: str | None) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(label, source tree, environment) of the way of waiting to compare with."""
    if against is None:
        yield "probing alone (SWARM_HPC_WAKEUP=poll)", HERE.parent, {"SWARM_HPC_WAKEUP": "poll"}
        return
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), against], cwd=HERE.parent, check=True,
                       capture_output=True)
        try:
            yield f"revision {against}", tree, {}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=HERE.parent, capture_output=True)


def kv_cache_bytes(model_path: str, n_ctx: int) -> int:
    from swarm_hpc.experts.llama import vocab_model

    md = vocab_model(Path(model_path)).metadata
    arch = md["general.architecture"]
    layers = int(md[f"{arch}.block_count"])
    heads = int(md[f"{arch}.attention.head_count"])
    heads_kv = int(md.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(md.get(f"{arch}.attention.key_length", int(md[f"{arch}.embedding_length"]) // heads))
    return n_ctx * layers * heads_kv * head_dim * 2 * 2  # K and V, f16


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def speedups_of(run: dict) -> list[float]:
    """Per rep: the one-after-another turns' total wall time over the parallel step's."""
    return [sum(s["wall"] for s in r["sequential"]) / r["parallel"]["wall"] for r in run["rows"]]


def overheads_of(run: dict) -> list[float]:
    """Per rep: the parallel step's wall time beyond its slowest turn, as a share of it."""
    return [(r["parallel"]["wall"] - r["parallel"]["slowest"]) / r["parallel"]["wall"] for r in run["rows"]]


def waiting_cpu(run: dict) -> dict[str, float]:
    """CPU share (of one core) of rank 0 during the parallel steps, and of the idle expert rank during the
    one-after-another steps (it waits for its next turn meanwhile)."""
    rows = run["rows"]
    rank0 = sum(r["parallel"]["cpu_s"]["rank0"] for r in rows) / sum(r["parallel"]["wall"] for r in rows)
    idle_cpu = sum(s["cpu_s"][n] for r in rows for s in r["sequential"] for n in s["idle"])
    idle_wall = sum(s["wall"] * len(s["idle"]) for r in rows for s in r["sequential"])
    return {"rank0_parallel": round(rank0, 5), "idle_expert": round(idle_cpu / idle_wall, 5)}


def prompt_eval(run: dict) -> dict[str, float]:
    """Median prompt tokens evaluated per turn, parallel vs one after another (they should match)."""
    return {"parallel": med([t for r in run["rows"] for t in r["parallel"]["prompt_eval"]]),
            "sequential": med([t for r in run["rows"] for s in r["sequential"] for t in s["prompt_eval"]])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--memory-ranks", type=int, default=4, help="N for the shared-memory measurement")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rounds.json")
    ap.add_argument("--against", help="a git revision whose waiting to compare with (default: doorbells off)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    n = min(2, cores) if cores >= 2 else 2
    t_start = time.time()

    print(f"bench/rounds.py: model {args.model}, {args.reps} reps, {args.max_tokens} tokens a turn, {cores} cores", flush=True)
    # this code's runs and the other way of waiting alternate in two halves, so that a drift in the machine's
    # speed hits both alike
    half = argparse.Namespace(**{**vars(args), "reps": (args.reps + 1) // 2})
    with other_waiting(args.against) as (other_label, other_root, other_env):
        # both sides run the bare-llama.cpp turns too, so that they do the same work
        new1, old1 = run_ranks(n, half, bare=True), run_ranks(n, half, bare=True, root=other_root, env=other_env)
        hw = json.loads(subprocess.run([sys.executable, str(HERE / "_bare_parallel.py"), "--n", str(n), "--model",
                                        args.model, "--reps", str(args.reps), "--max-tokens", str(args.max_tokens),
                                        "--n-ctx", str(args.n_ctx)],
                                       check=True, capture_output=True, text=True, cwd=HERE.parent).stdout)
        new2, old2 = run_ranks(n, half, bare=True), run_ranks(n, half, bare=True, root=other_root, env=other_env)
    par, par_old = {**new1, "rows": new1["rows"] + new2["rows"]}, {**old1, "rows": old1["rows"] + old2["rows"]}
    mem_n = run_ranks(args.memory_ranks, argparse.Namespace(**{**vars(args), "reps": 1}), bare=False)
    one = run_ranks(1, argparse.Namespace(**{**vars(args), "reps": 1}), bare=False)

    # 1. parallel vs one after another, rep by rep
    speedups = speedups_of(par)
    speedup = med(speedups)
    speedup_target = 0.9 * min(n, cores)
    # the same, for n bare llama-cpp-python processes: what this machine allows at all, right now
    hw_speedups = [n * a / t for a, t in zip(hw["alone"], hw["together"], strict=True)]
    hw_speedup = med(hw_speedups)
    # 2. the layer's own cost in a parallel round
    overheads = overheads_of(par)
    overhead = med(overheads)
    # 3. tok/s through a rank vs bare llama-cpp-python (same model, prompt, threads), alternated rep by rep
    tok_ratios = [r["rank"]["gen_tok_s"] / r["bare"]["gen_tok_s"] for r in par["rows"]]
    wall_ratios = [(r["rank"]["tokens"] / r["rank"]["wall"]) / (r["bare"]["tokens"] / r["bare"]["wall"]) for r in par["rows"]]
    tok_ratio = med(tok_ratios)
    # 4. memory: N ranks on one model file vs one rank
    model_path = par["model_path"] or str(resolve_model(args.model, Path(".")).path)
    model_bytes = os.path.getsize(model_path)
    kv = kv_cache_bytes(model_path, args.n_ctx)
    pss_n = sum(m["pss"] for m in mem_n["memory_kb"].values()) * 1024
    rss_n = sum(m["rss"] for m in mem_n["memory_kb"].values()) * 1024
    rss_one = sum(m["rss"] for m in one["memory_kb"].values()) * 1024
    bound = model_bytes + args.memory_ranks * (kv + 150 * MB)

    # 5. what waiting costs, this code against the other way: speedup, layer cost, CPU of the waiting ranks
    old_speedups = speedups_of(par_old)
    old_speedup, old_overhead = med(old_speedups), med(overheads_of(par_old))
    waiting = {"this": waiting_cpu(par), "other": waiting_cpu(par_old)}
    waiting_max = max(waiting["this"].values())

    checks = {
        "parallel_speedup": {"value": round(speedup, 3), "target": f">= {speedup_target:.2f}", "pass": speedup >= speedup_target,
                             "per_rep": [round(x, 3) for x in speedups], "experts": n, "cores": cores,
                             "bare_processes_speedup": round(hw_speedup, 3),
                             "bare_per_rep": [round(x, 3) for x in hw_speedups],
                             "share_of_bare": round(speedup / hw_speedup, 3),
                             "prompt_eval_tokens": prompt_eval(par)},
        "layer_overhead_share": {"value": round(overhead, 4), "target": "<= 0.02", "pass": overhead <= 0.02,
                                 "per_rep": [round(x, 4) for x in overheads]},
        "rank_vs_bare_tok_s": {"value": round(tok_ratio, 3), "target": ">= 0.97", "pass": tok_ratio >= 0.97,
                               "per_rep": [round(x, 3) for x in tok_ratios],
                               "wall_clock_ratio": round(med(wall_ratios), 3),
                               "bare_tok_s": round(med([r["bare"]["gen_tok_s"] for r in par["rows"]]), 1),
                               "rank_tok_s": round(med([r["rank"]["gen_tok_s"] for r in par["rows"]]), 1)},
        "memory_shared_model": {"value_mb": round(pss_n / MB, 1), "bound_mb": round(bound / MB, 1), "pass": pss_n <= bound,
                                "ranks": args.memory_ranks, "sum_rss_mb": round(rss_n / MB, 1),
                                "one_rank_rss_mb": round(rss_one / MB, 1), "model_mb": round(model_bytes / MB, 1),
                                "kv_cache_mb": round(kv / MB, 1)},
        "waiting_cpu_share": {"value": round(waiting_max, 5), "target": "<= 0.005", "pass": waiting_max <= 0.005,
                              "this": waiting["this"], "ranks_wait": sorted(set(par["wakeup"].values()))},
        "against": {"other": other_label, "ranks_wait": sorted(set(par_old["wakeup"].values())),
                    "speedup": round(speedup, 3), "other_speedup": round(old_speedup, 3),
                    "speedup_ratio": round(speedup / old_speedup, 3), "other_per_rep": [round(x, 3) for x in old_speedups],
                    "layer_cost": round(overhead, 4), "other_layer_cost": round(old_overhead, 4),
                    "waiting_cpu_share": waiting},
    }
    mark = lambda ok: "PASS" if ok else "MISS"
    c = checks
    print(f"parallel round vs one after another ({n} experts, {cores} cores): {speedup:.2f}x "
          f"[target >= {speedup_target:.2f}] {mark(c['parallel_speedup']['pass'])}")
    print(f"  the same for {n} bare llama-cpp-python processes (this machine's ceiling now): {hw_speedup:.2f}x; "
          f"the swarm reaches {speedup / hw_speedup:.0%} of it")
    print(f"layer's own cost in a parallel round: {overhead * 100:.2f} % [target <= 2 %] {mark(c['layer_overhead_share']['pass'])}")
    print(f"expert rank vs bare llama-cpp-python, generation tok/s: {tok_ratio:.3f} "
          f"({c['rank_vs_bare_tok_s']['rank_tok_s']} vs {c['rank_vs_bare_tok_s']['bare_tok_s']} tok/s; "
          f"wall clock {c['rank_vs_bare_tok_s']['wall_clock_ratio']:.3f}) [target >= 0.97] {mark(c['rank_vs_bare_tok_s']['pass'])}")
    print(f"waiting ranks' CPU: at most {waiting_max * 100:.2f} % of a core [target <= 0.5 %] "
          f"{mark(c['waiting_cpu_share']['pass'])}")
    print(f"against {other_label}: speedup {speedup:.2f}x vs {old_speedup:.2f}x (ratio {speedup / old_speedup:.3f}); "
          f"layer cost {overhead * 100:.2f} % vs {old_overhead * 100:.2f} %")
    for mode, w in (("this", waiting["this"]), (other_label, waiting["other"])):
        print(f"  {mode}: rank 0 uses {w['rank0_parallel'] * 100:.2f} % of a core while the experts generate, "
              f"an idle expert rank {w['idle_expert'] * 100:.2f} %")
    print(f"memory of {args.memory_ranks} ranks sharing {args.model}: {pss_n / MB:.0f} MB (PSS; RSS sum {rss_n / MB:.0f} MB), "
          f"one rank {rss_one / MB:.0f} MB; bound {model_bytes / MB:.0f} + {args.memory_ranks} x ({kv / MB:.0f} + 150) = "
          f"{bound / MB:.0f} MB {mark(c['memory_shared_model']['pass'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"bench": "rounds", "model": args.model, "reps": args.reps, "max_tokens": args.max_tokens,
                                 "n_ctx": args.n_ctx, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "seconds": round(time.time() - t_start, 1), "checks": checks,
                                 "raw": {"parallel": par, "parallel_other": par_old, "bare_parallel": hw,
                                         "memory_n": mem_n, "one": one}})
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
