#!/usr/bin/env python3
"""Benchmark of federated learning (`swarm-hpc fed run`, real mpiexec ranks), in one run; writes
bench/results/fed.json and fed.md.

    .venv/bin/python bench/fed.py [--rounds 30] [--seed 0]

1. Digits, Dirichlet 0.5, FedAvg with the demo's settings (jobs/examples/fed-digits.toml), 4 and 8 clients:
   the round at which the federated model is within 1 point of the centralised one [<= 10 with 4 clients,
   <= 20 with 8], communication per round (`comm_ms`: a round's wait for the updates less the slowest
   client's own compute) [<= 5 ms on one machine], bytes per round.
2. The learned router: requests of four skills (math, code, geography, writing), made up from templates, one
   node's records mostly of one skill (non-IID: 80 % of a node's records are its own skill). Three routers on
   the same held-out requests, phrased with other templates than the training ones (many without any of the
   rules' keywords): the keyword rules of a [[routes]] table, a router trained centrally on every node's
   records pooled, and the router trained federatedly (4 clients, one per node), all on MiniLM embeddings.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from swarm_hpc.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402

SKILLS = {
    "math": (
        ["What is {a} plus {b}?", "Compute {a} times {b}.", "How much is {a} minus {b}?", "Calculate {a} divided by {b}.",
         "What is the sum of {a} and {b}?", "Find {a} percent of {b}.", "Solve {a}x = {b} for x."],
        ["If a box holds {a} eggs, how many eggs are in {b} boxes?", "A train goes {a} km an hour; how far does it "
         "get in {b} hours?", "How many minutes are there in {a} hours?", "I had {a} marbles and lost {b}; how many "
         "are left?", "What do you get when you double {a}?", "Is {a} a prime number?"]),
    "code": (
        ["Write a Python function that reverses a list.", "Fix the bug in this Python code: for i in range({a}) print(i)",
         "How do I read a file line by line in Python?", "Write code that sorts {a} numbers.",
         "What does this function return: def f(x): return x * {a}?", "Explain Python list comprehensions."],
        ["How can my script skip blank lines of a text file?", "Why does my loop never stop?", "What is the difference "
         "between a tuple and a list?", "How do I catch an exception when a key is missing in a dict?",
         "My program says IndexError: list index out of range. What happened?", "How do I install a package with pip?"]),
    "geography": (
        ["What is the capital of {c}?", "Which river flows through {c}?", "On which continent is {c}?",
         "Which countries border {c}?", "What is the largest city of {c}?", "How many people live in {c}?"],
        ["Where would I land if I flew to the main airport of {c}?", "Is {c} north or south of the equator?",
         "What language do people speak in {c}?", "Which mountains are in {c}?", "What is the weather like in {c} in "
         "winter?", "Which sea lies next to {c}?"]),
    "writing": (
        ["Write a poem about {t}.", "Write a short story about {t}.", "Write an essay on {t}.", "Write a haiku about {t}.",
         "Write a limerick about {t}.", "Write the opening line of a novel about {t}."],
        ["Give me four rhyming lines about {t}.", "Describe {t} in the voice of a pirate.", "Make up a fairy tale "
         "in which {t} plays a part.", "Compose a birthday card verse about {t}.", "Tell me a bedtime tale about {t}.",
         "Draft a toast for a wedding that mentions {t}."]),
}
KEYWORDS = {"math": ["plus", "times", "minus", "sum", "calculate", "compute", "divided", "percent", "solve"],
            "code": ["python", "function", "code", "bug", "script"],
            "geography": ["capital", "river", "continent", "country", "countries", "border"],
            "writing": ["poem", "story", "essay", "haiku", "write", "poetry"]}
COUNTRIES = ["France", "Peru", "Kenya", "Japan", "Norway", "Chile", "Egypt", "Canada", "India", "Spain", "Ghana",
             "Vietnam", "Poland", "Mexico", "Nepal", "Italy"]
TOPICS = ["the sea", "a lost cat", "autumn", "a robot", "the moon", "a small village", "friendship", "coffee",
          "a thunderstorm", "an old clock"]


def fill(template: str, rng: random.Random) -> str:
    return template.format(a=rng.randint(2, 999), b=rng.randint(2, 99), c=rng.choice(COUNTRIES), t=rng.choice(TOPICS))


def records(n_per_node: int, seed: int, own: float = 0.8) -> list[dict]:
    """Training records: node i mostly asks skill i (share `own`), from each skill's first template list."""
    rng = random.Random(seed)
    names = list(SKILLS)
    out = []
    for i, node_skill in enumerate(names):
        for _ in range(n_per_node):
            skill = node_skill if rng.random() < own else rng.choice([s for s in names if s != node_skill])
            out.append({"request": fill(rng.choice(SKILLS[skill][0]), rng), "skill": skill, "node": f"pi{i + 1}"})
    return out


def held_out(n_per_skill: int, seed: int, wording: int) -> list[dict]:
    """New requests: `wording` 0, phrased like the training records (new numbers, countries, topics); 1, with the
    other template list, wording the routers were not trained on."""
    rng = random.Random(seed + 1000 + wording)
    return [{"request": fill(rng.choice(SKILLS[s][wording]), rng), "skill": s}
            for s in SKILLS for _ in range(n_per_skill)]


def run_fed(spec: Path, out: Path) -> dict:
    t0 = time.monotonic()
    p = subprocess.run([str(ROOT / ".venv/bin/swarm-hpc"), "fed", "run", str(spec), "--out", str(out)],
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"fed run failed: {p.stderr.strip()}")
    run_dir = Path(next(line.split(": ", 1)[1] for line in p.stdout.splitlines() if line.startswith("run directory")))
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    comm = [r["comm_ms"] for r in rounds if r.get("comm_ms") is not None]
    return {"run_dir": str(run_dir), "wall_s": round(time.monotonic() - t0, 2), **{k: summary[k] for k in (
        "final_accuracy", "centralised_accuracy", "rounds_to_centralised_within_1pt", "bytes_per_round")},
        "comm_ms_p50": round(statistics.median(comm), 3), "comm_ms_mean": round(statistics.mean(comm), 3)}


def digits(clients: int, rounds: int, work: Path) -> dict:
    text = (ROOT / "jobs/examples/fed-digits.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(("clients", "rounds"))]
    spec = work / f"digits-{clients}.toml"
    spec.write_text("\n".join(lines + [f"clients = {clients}", f"rounds = {rounds}"]) + "\n")
    return {"clients": clients, **run_fed(spec, work / "runs")}


def router(seed: int, work: Path) -> dict:
    import numpy as np

    from swarm_hpc.core.routing import route
    from swarm_hpc.core.spec import SwarmSpec
    from swarm_hpc.fed import model
    from swarm_hpc.fed.router import LearnedRouter
    from swarm_hpc.knowledge.embed import Embedder

    train = records(60, seed)
    (work / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (work / "router.toml").write_text('name = "router"\ndataset = "router"\nrecords = "records.jsonl"\nclients = 4\n'
                                      f'rounds = 30\nlr = 1.0\nlocal_epochs = 5\nbatch_size = 16\nseed = {seed}\n'
                                      'test_fraction = 0.2\ncentralised_epochs = 100\n')
    fed = run_fed(work / "router.toml", work / "runs")
    learned = LearnedRouter(fed["run_dir"])
    emb = Embedder("minilm")   # the centralised router: the same softmax and SGD on every node's records pooled
    classes = sorted(SKILLS)
    x = emb.embed([r["request"] for r in train]).astype(np.float64)
    y = np.array([classes.index(r["skill"]) for r in train])
    params = model.sgd(model.init_params("softmax", x.shape[1], len(classes), 0, seed), x, y, epochs=100,
                       batch_size=16, lr=1.0, rng=np.random.default_rng(seed))
    spec = SwarmSpec.model_validate({
        "task": "-", "strategy": "vote", "rounds": 1,
        "experts": [{"name": s, "model": "smollm2", "persona": s, "skills": [s]} for s in classes],
        "routes": [{"skill": s, "keywords": KEYWORDS[s]} for s in classes]})
    sets: dict[str, dict] = {}
    timings: list[float] = []
    for name, wording in (("same_wording", 0), ("new_wording", 1)):
        test = held_out(25, seed, wording)
        truth = [r["skill"] for r in test]
        t0 = time.monotonic()
        fed_pred = [learned(r["request"])[0] for r in test]
        timings.append((time.monotonic() - t0) * 1000 / len(test))
        probs, _ = model.forward(params, emb.embed([r["request"] for r in test]).astype(np.float64))
        central_pred = [classes[i] for i in probs.argmax(axis=1)]
        rule_pred = [route(spec, r["request"]).skill for r in test]

        def acc(pred: list[str | None], truth: list[str] = truth) -> float:
            return round(sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth), 4)

        sets[name] = {"requests": len(test), "without_any_keyword": sum(p is None for p in rule_pred),
                      "accuracy": {"keyword_rules": acc(rule_pred), "central": acc(central_pred),
                                   "federated": acc(fed_pred)}}
    learned.close()
    emb.close()
    return {"train_records": len(train), "nodes": 4, "own_skill_share": 0.8, "held_out": sets,
            "router_ms_per_request": round(statistics.median(timings), 2), "fed_run": fed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        work = Path(tmp)
        result = {"digits": [digits(4, args.rounds, work), digits(8, args.rounds, work)],
                  "router": router(args.seed, work)}
    for d in result["digits"]:
        d.pop("run_dir")
    result["router"]["fed_run"].pop("run_dir")
    out = HERE / "results"
    atomic_write_json(out / "fed.json", result)
    md = ["| digits clients | rounds to within 1 pt of centralised | final / centralised | comm ms p50 | bytes/round |",
          "|---|---|---|---|---|"]
    for d in result["digits"]:
        md.append(f"| {d['clients']} | {d['rounds_to_centralised_within_1pt']} | {d['final_accuracy']:.4f} / "
                  f"{d['centralised_accuracy']:.4f} | {d['comm_ms_p50']} | {d['bytes_per_round']:.0f} |")
    r = result["router"]
    md += ["", "| router, held-out requests | keyword rules | central | federated | without any keyword |",
           "|---|---|---|---|---|"]
    for name, h in r["held_out"].items():
        a = h["accuracy"]
        md.append(f"| {name.replace('_', ' ')} ({h['requests']}) | {a['keyword_rules']:.2f} | {a['central']:.2f} | "
                  f"{a['federated']:.2f} | {h['without_any_keyword']} |")
    md += ["", f"{r['train_records']} training records on {r['nodes']} nodes (80 % of a node's records its own skill); "
           f"the learned router takes {r['router_ms_per_request']} ms a request (MiniLM embedding included)."]
    atomic_write_bytes(out / "fed.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
