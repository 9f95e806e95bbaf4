#!/usr/bin/env python3
"""The swarm's part of issue 12's retrieval benchmark: how many questions about made-up people (bench/ragdata.py)
a swarm answers with retrieval against the same swarm without it, graded by `swarm-hpc eval` (real mpiexec ranks,
real llama.cpp); writes bench/results/rag-answers.json and .md.

    .venv/bin/python bench/rag_answers.py [--model qwen-coder-1.5b] [--questions 50] [--docs 2000] [--experts 2]

The swarm: `--experts` experts on the model (one node: batched on one rank), a vote of one round; the questions
are the first `--questions` of eval_set() (a corpus of `--docs` people, one document each, indexed with MiniLM).
With RAG the spec's [knowledge] table names that index (top_k 4); without, there is none. [target: >= 80 % with
RAG, about 0 % without]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from ragdata import WORK, eval_set  # noqa: E402

from swarm_hpc.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402

INSTRUCTION = "Answer in one short sentence, then end with a line 'Answer: <the answer in one or two words>'."


def spec(model: str, experts: int, index: Path | None) -> str:
    lines = ['task = "-"', 'strategy = "vote"', "rounds = 1", "round_timeout = 300", f'instruction = "{INSTRUCTION}"']
    if index is not None:
        lines += ["[knowledge]", f'index = "{index}"', "top_k = 4"]
    for i in range(experts):
        lines += ["[[experts]]", f'name = "reader{i + 1}"', f'model = "{model}"',
                  'persona = "You answer questions about people from what you are told."',
                  "temperature = 0.0" if i == 0 else f"temperature = 0.3\nseed = {i}", "max_tokens = 48",
                  "n_ctx = 1024"]
    return "\n".join(lines) + "\n"


def run_eval(spec_path: Path, questions: Path, out: Path) -> dict:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "swarm_hpc", "eval", str(spec_path), "--questions", str(questions),
                        "--arms", "vote", "--out", str(out)], capture_output=True, text=True, timeout=6 * 3600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        raise SystemExit(f"eval failed: {p.stderr.strip()[-2000:]}")
    arm = json.loads((out / "results.json").read_text())["arms"]["vote"]
    return {"accuracy": arm["accuracy"], "ci": arm["ci"], "n": arm["n"], "wall_s": round(time.monotonic() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen-coder-1.5b")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--experts", type=int, default=2)
    args = ap.parse_args()
    data = eval_set(docs=args.docs, n_questions=args.questions)
    work = WORK / f"answers-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    qfile = work / "questions.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i}", "question": q.question, "answer": q.answer, "kind": q.fact})
                             + "\n" for i, q in enumerate(data.questions)))
    result: dict = {"model": args.model, "experts": args.experts, "docs": args.docs, "questions": args.questions,
                    "strategy": "vote, 1 round", "top_k": 4}
    for name, index in (("with_rag", data.index.resolve()), ("without_rag", None)):
        path = work / f"{name}.toml"
        path.write_text(spec(args.model, args.experts, index))
        result[name] = run_eval(path, qfile, work / name)
        print(name, result[name], flush=True)
    atomic_write_json(HERE / "results" / "rag-answers.json", result)
    md = ["| swarm of {experts} x {model}, vote | answered right | 95 % interval | wall time |".format(**result),
          "|---|---|---|---|"]
    for name in ("with_rag", "without_rag"):
        r = result[name]
        md.append(f"| {name.replace('_', ' ')} | {r['accuracy']:.2f} ({r['n']} questions) | "
                  f"{r['ci'][0]:.2f}-{r['ci'][1]:.2f} | {r['wall_s']:.0f} s |")
    atomic_write_bytes(HERE / "results" / "rag-answers.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
