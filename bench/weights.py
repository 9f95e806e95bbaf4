#!/usr/bin/env python3
"""Ranks that share a model share its weights (issue 16): llama.cpp's weight repacking on and off, side by side in
one run; writes bench/results/weights.json and prints a table.

    .venv/bin/python bench/weights.py [--models qwen-coder-1.5b,qwen-coder-0.5b,gemma3,smollm2] [--repeats 5]
                                      [--ranks 3] [--n-ctx 2048]

llama.cpp's CPU backend by default copies the weights of some quantisations (Q4_0, Q4_K, IQ4_NL on x86 with AVX2,
and on ARM) into a repacked layout in private memory; swarm-hpc loads without it (swarm_hpc/experts/llama.py
`load_llama`). Every measurement is a process of its own that loads a model with `load_llama(repack=...)`, one
thread, n_ctx --n-ctx, and the variants take turns (repeat by repeat, model by model, in alternating order), so
both see the same busy machine:

1. per model and variant (medians over --repeats): load seconds; after a warm-up completion, prompt tok/s on
   prompts of 16, 128 and 384 tokens and generation tok/s over 64 tokens (EOS banned) after a short prompt; then,
   with the process idle, its RSS and PSS ("alone": the PSS with the model file counted whole, as if no other
   process mapped it; on a shared machine another user's run may), and its private memory (Private_Clean + Private_Dirty of
   /proc/PID/smaps_rollup) while this benchmark maps and touches the whole model file too, as a second rank on
   the node would: what the rank does not share (alone, the file's pages it maps count as private too);
2. N = 1..--ranks processes of the first model at once (each loaded and through a short completion): their total
   PSS, and the same with the model file counted once (the sum of their PSS outside the file, plus the file's
   resident pages: equal when nothing else maps the file), which is held to the target
   "N ranks <= model file + N x (KV cache at n_ctx + 150 MB)".
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from swarm_hpc.atomic import atomic_write_json  # noqa: E402

MB = 2**20
RANK_ALLOWANCE_MB = 150   # the target's per-rank allowance on top of the KV cache
TEXT = ("The cluster room holds eight boards on a shelf, each with its own power supply and network cable. "
        "Every morning the caretaker checks the fans, the lights on the switch and the temperature log. ") * 12
SHORT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."

PROMPT_LENGTHS = (16, 128, 384)   # a one-line question; a swarm turn's new tail (peers' replies); a long prompt

CHILD = r"""
import json, sys, time
from pathlib import Path
from swarm_hpc.experts.llama import load_llama
from swarm_hpc.experts.models import resolve_model
from llama_cpp import llama_cpp as C

ref, repack, n_ctx, mode = sys.argv[1], sys.argv[2] == "on", int(sys.argv[3]), sys.argv[4]
text, short_prompt, lengths = json.loads(sys.stdin.readline())
model = resolve_model(ref, Path("."))
t0 = time.perf_counter()
llm = load_llama(model, n_ctx, 1, 1, repack=repack)
out = {"load_s": time.perf_counter() - t0, "repack": bool(llm.model_params.use_extra_bufts)}

def run(tokens, n, ban_eos):
    llm.reset()
    C.llama_perf_context_reset(llm.ctx)
    bias = {llm.token_eos(): -1e9} if ban_eos else None
    llm.create_completion(tokens, max_tokens=n, temperature=0.0, logit_bias=bias)
    p = C.llama_perf_context(llm.ctx)
    return {"prompt_tokens": p.n_p_eval, "prompt_tok_s": p.n_p_eval / (p.t_p_eval_ms / 1e3),
            "gen_tokens": p.n_eval, "gen_tok_s": p.n_eval / (p.t_eval_ms / 1e3) if p.t_eval_ms else None}

short = llm.tokenize(short_prompt.encode(), add_bos=True)
if mode == "speed":
    run(short, 2, False)   # warm-up: the first decode also faults the mapped weights in
    long = llm.tokenize(text.encode(), add_bos=True)
    out["prompt"] = {n: run(long[:n], 1, False) for n in lengths}
    out["gen"] = run(short, 64, True)
else:
    out["gen"] = run(short, 8, False)
print(json.dumps(out), flush=True)
sys.stdin.readline()   # held until the benchmark has read its memory
"""


def smaps(pid: int, path: Path) -> dict[str, float]:
    """RSS, PSS, private (clean + dirty) and anonymous memory of a process, MB; and the RSS and PSS of its
    mappings of the model file `path`."""
    kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        kb[name] = int(value.split()[0])
    real, inside = os.path.realpath(path), False
    file_kb = {"Rss": 0, "Pss": 0}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and ":" not in head[0]:   # a mapping's first line: address range, perms, offset, dev, inode, path
            inside = len(head) == 6 and head[5] == real
        elif inside and head[0][:-1] in file_kb:
            file_kb[head[0][:-1]] += int(head[1])
    return {"rss_mb": kb["Rss"] / 1024, "pss_mb": kb["Pss"] / 1024,
            "private_mb": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024, "anon_mb": kb["Anonymous"] / 1024,
            "file_rss_mb": file_kb["Rss"] / 1024, "file_pss_mb": file_kb["Pss"] / 1024}


def other_mappers(path: Path, ours: set[int]) -> int:
    """Processes besides `ours` (and this one) that map `path`: another user's run on a shared machine, which
    takes its share of the file's PSS."""
    real, found = os.path.realpath(path), 0
    for maps in Path("/proc").glob("[0-9]*/maps"):
        pid = int(maps.parent.name)
        if pid in ours or pid == os.getpid():
            continue
        try:
            found += real in maps.read_text()
        except OSError:
            continue
    return found


class Rank:
    """One process with a model loaded (CHILD), held until `close`."""

    def __init__(self, ref: str, repack: bool, n_ctx: int, mode: str):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, ref, "on" if repack else "off", str(n_ctx), mode],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([TEXT, SHORT_PROMPT, PROMPT_LENGTHS]) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark process failed (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def shared_private(pid: int, path: Path) -> dict[str, float]:
    """The process's memory while this one maps and touches all of `path` as well (a second rank)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
        return smaps(pid, path)


def trial(ref: str, path: Path, repack: bool, n_ctx: int) -> dict[str, Any]:
    r = Rank(ref, repack, n_ctx, "speed")
    try:
        out = r.result()
        out.update(smaps(r.proc.pid, path), other_mappers=other_mappers(path, {r.proc.pid}))
        out["pss_alone_mb"] = out["pss_mb"] - out["file_pss_mb"] + out["file_rss_mb"]
        out["private_mb"] = shared_private(r.proc.pid, path)["private_mb"]
    finally:
        r.close()
    return out


def ranks_at_once(ref: str, path: Path, n: int, repack: bool, n_ctx: int) -> dict[str, Any]:
    ranks = [Rank(ref, repack, n_ctx, "ready") for _ in range(n)]
    try:
        loaded = [r.result() for r in ranks]
        mem = [smaps(r.proc.pid, path) for r in ranks]
        others = other_mappers(path, {r.proc.pid for r in ranks})
    finally:
        for r in ranks:
            r.close()
    return {"ranks": n, "repack": repack, "total_pss_mb": sum(m["pss_mb"] for m in mem),
            "total_file_once_mb": sum(m["pss_mb"] - m["file_pss_mb"] for m in mem) + max(m["file_rss_mb"] for m in mem),
            "other_mappers": others, "total_rss_mb": sum(m["rss_mb"] for m in mem),
            "rank_private_mb": [m["private_mb"] for m in mem], "load_s": [x["load_s"] for x in loaded]}


def median(rows: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
    vals = [(r[sub][key] if sub else r[key]) for r in rows]
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen-coder-1.5b,qwen-coder-0.5b,gemma3,smollm2",
                    help="bundled names or GGUF paths; the first one is used for the N-ranks test")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "weights.json")
    args = ap.parse_args()
    from swarm_hpc.experts.ggufmeta import kv_cache_bytes, read_metadata
    from swarm_hpc.experts.models import resolve_model

    models = {ref: resolve_model(ref, Path(".")).path for ref in args.models.split(",")}
    for path in models.values():   # into the page cache first, so that no variant pays for the disk
        path.read_bytes()
    rows: dict[tuple[str, bool], list[dict[str, Any]]] = {(m, v): [] for m in models for v in (False, True)}
    for rep in range(args.repeats):
        for ref, path in models.items():
            for repack in ((False, True) if rep % 2 == 0 else (True, False)):
                t = trial(ref, path, repack, args.n_ctx)
                rows[ref, repack].append(t)
                print(f"  {ref} repack {'on ' if repack else 'off'} load {t['load_s']:.2f}s private "
                      f"{t['private_mb']:.0f} MB prompt " + "/".join(f"{p['prompt_tok_s']:.0f}" for p in t["prompt"].values())
                      + f" gen {t['gen']['gen_tok_s']:.1f} tok/s", flush=True)
    per_model = []
    for (ref, repack), rs in rows.items():
        per_model.append({
            "model": ref, "file_mb": round(models[ref].stat().st_size / MB, 1), "repack": repack,
            "repacked": all(r["repack"] for r in rs), "trials": len(rs),
            "load_s": median(rs, "load_s"), "rss_mb": median(rs, "rss_mb"), "pss_mb": median(rs, "pss_mb"),
            "pss_alone_mb": median(rs, "pss_alone_mb"), "other_mappers": max(r["other_mappers"] for r in rs),
            "private_mb": median(rs, "private_mb"), "anon_mb": median(rs, "anon_mb"),
            "prompt_tok_s": {n: median([r["prompt"][n] for r in rs], "prompt_tok_s") for n in rs[0]["prompt"]},
            "gen_tok_s": median(rs, "gen_tok_s", "gen"), "gen_tokens": rs[0]["gen"]["gen_tokens"],
            "raw": rs})

    first = next(iter(models))
    kv_mb = kv_cache_bytes(read_metadata(models[first]), args.n_ctx) / MB
    file_mb = models[first].stat().st_size / MB
    together = []
    for n in range(1, args.ranks + 1):
        for repack in ((False, True) if n % 2 else (True, False)):
            r = ranks_at_once(first, models[first], n, repack, args.n_ctx)
            r["target_mb"] = round(file_mb + n * (kv_mb + RANK_ALLOWANCE_MB), 1)
            r["within_target"] = r["total_file_once_mb"] <= r["target_mb"]
            together.append(r)
            print(f"  {n} x {first} repack {'on ' if repack else 'off'}: total PSS {r['total_pss_mb']:.0f} MB, "
                  f"the file once {r['total_file_once_mb']:.0f} MB (target {r['target_mb']:.0f})", flush=True)
    together.sort(key=lambda r: (r["ranks"], r["repack"]))

    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "n_ctx": args.n_ctx, "threads": 1, "repeats": args.repeats,
              "models": per_model,
              "ranks": {"model": first, "file_mb": round(file_mb, 1), "kv_cache_mb": round(kv_mb, 1),
                        "allowance_mb": RANK_ALLOWANCE_MB, "runs": together}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)

    print(f"\n{'model':16} {'repack':6} {'load s':>7} {'RSS MB':>7} {'PSS MB':>7} {'alone':>6} {'private':>8} "
          + "".join(f"{f'prompt {n}':>11}" for n in PROMPT_LENGTHS) + f" {'gen t/s':>8}")
    for m in per_model:
        print(f"{m['model']:16} {'on' if m['repack'] else 'off':6} {m['load_s']:7.2f} {m['rss_mb']:7.0f} "
              f"{m['pss_mb']:7.0f} {m['pss_alone_mb']:6.0f} {m['private_mb']:8.0f} "
              + "".join(f"{v:11.1f}" for v in m["prompt_tok_s"].values()) + f" {m['gen_tok_s']:8.2f}")
    print(f"\n{first}: file {file_mb:.0f} MB, KV cache {kv_mb:.0f} MB at n_ctx {args.n_ctx}")
    print(f"{'ranks':>5} {'repack':6} {'total PSS MB':>12} {'file once':>9} {'target MB':>9}  ok")
    for r in together:
        print(f"{r['ranks']:5} {'on' if r['repack'] else 'off':6} {r['total_pss_mb']:12.0f} "
              f"{r['total_file_once_mb']:9.0f} {r['target_mb']:9.0f}  {'yes' if r['within_target'] else 'NO'}")
    others = sum(m["other_mappers"] for m in per_model) + sum(r["other_mappers"] for r in together)
    if others:
        print("(other processes mapped a model file meanwhile: PSS was split with them; 'alone' and 'file once' "
              "count the file whole)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
