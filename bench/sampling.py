#!/usr/bin/env python3
"""How much can a vote over sampled answers gain? (issue 11) One expert's greedy answer against a vote over k of
its swarm's sampled answers, k = 1..--draws, on the same questions: the headroom of the `vote`, `sc` and
Self-MoA arms before an eval spends hours on them. Writes bench/results/sampling-<task>-<form>.json.

    .venv/bin/python bench/sampling.py --questions rg:basic_arithmetic:100:1 --limit 20 [--form text|program]
                                       [--spec jobs/eval/qwen.toml] [--draws 8] [--procs 2]

Every prompt is the eval's own (swarm_hpc/eval/arms.py: the same system prompt, task line and instruction;
`--form program` asks for the `program` arm's program and reads it with the checker). The greedy answer is the
spec's first expert's (`single:<first>`); draw d is the spec's expert (d - 1) mod n with its temperature and the seed
expert.seed + d, as `self-consistency` draws them, so the draws are the answers a swarm of those experts would
give. The vote is the swarm's (swarm_hpc/core/strategies/tally.py; over checked answers for programs), and
grading is the eval's. --procs processes, each on one core and with its own copy of the model, share the
questions; accuracy does not depend on how busy the machine is (greedy and seeded answers).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from swarm_hpc.atomic import atomic_write_json  # noqa: E402
from swarm_hpc.core.dialogue import Dialogue, Reply, make_reply  # noqa: E402
from swarm_hpc.core.spec import SwarmSpec, load_spec  # noqa: E402
from swarm_hpc.core.strategies.program import PROGRAM_INSTRUCTION  # noqa: E402
from swarm_hpc.core.strategies.self_consistency import draw_sampling  # noqa: E402
from swarm_hpc.core.strategies.tally import tally  # noqa: E402
from swarm_hpc.core.strategies.verify import checked_tally  # noqa: E402
from swarm_hpc.eval.arms import GREEDY, INSTRUCTION  # noqa: E402
from swarm_hpc.eval.questions import Question, load_questions  # noqa: E402
from swarm_hpc.eval.results import grade  # noqa: E402


def answers(spec: SwarmSpec, spec_dir: Path, questions: list[Question], draws: int, form: str,
            core: int | None) -> list[dict[str, Any]]:
    """Per question: the greedy answer and `draws` sampled ones, as the eval would grade them."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    from swarm_hpc.experts.factory import build_expert
    names = spec.expert_names
    experts = {n: build_expert(spec, n, spec_dir) for n in names}   # one model file, mmapped once
    instruction = PROGRAM_INSTRUCTION if form == "program" else INSTRUCTION
    rows = []
    for q in questions:
        d = Dialogue(spec.model_copy(update={"task": q.question}))
        prompt = f"Task: {q.question}\n\n{instruction}"
        t0 = time.perf_counter()
        plan = [(names[0], GREEDY)]
        for k in range(1, draws + 1):
            name = names[(k - 1) % len(names)]
            plan.append((name, draw_sampling(spec.expert(name), k)))
        texts = []
        for name, sampling in plan:
            turn = d.fresh(name, prompt, [], sampling)
            texts.append(experts[name].answer(turn.messages, sampling=sampling).content)
        rows.append({"id": q.id, "gold": q.answer, "texts": texts, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[core {core}] {q.id}: {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def verdict(texts: list[str], q: Question, form: str) -> bool:
    """Is a vote over these answers right (one answer: is it right)?"""
    replies: list[Reply] = [make_reply(f"e{i}", f"m{i}", t, []) for i, t in enumerate(texts)]
    final = checked_tally(replies) if form == "program" else tally(replies)
    return grade(final.content, q)


def summarise(rows: list[dict[str, Any]], questions: dict[str, Question], draws: int, form: str) -> dict[str, Any]:
    pairs = [(r["texts"], questions[r["id"]]) for r in rows]
    greedy = sum(verdict(texts[:1], q, form) for texts, q in pairs)
    vote = {k: sum(verdict(texts[1:k + 1], q, form) for texts, q in pairs) for k in range(1, draws + 1)}
    anyone = sum(any(verdict([t], q, form) for t in texts) for texts, q in pairs)
    return {"n": len(rows), "greedy": greedy, "vote_of_k_draws": vote, "some_answer_right": anyone}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "jobs/eval/qwen.toml"))
    ap.add_argument("--questions", required=True)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--form", choices=("text", "program"), default="text")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec_path = Path(a.spec)
    spec = load_spec(spec_path)
    questions = load_questions(a.questions)[:a.limit]
    shards = [questions[i::a.procs] for i in range(a.procs)]
    cores = sorted(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(a.procs) as pool:
        parts = pool.starmap(answers, [(spec, spec_path.parent, s, a.draws, a.form, cores[i % len(cores)])
                                       for i, s in enumerate(shards)])
    order = {q.id: i for i, q in enumerate(questions)}
    rows = sorted((r for p in parts for r in p), key=lambda r: order[r["id"]])
    result = {"questions_from": a.questions, "spec": os.path.relpath(spec_path, ROOT),
              "form": a.form, "draws": a.draws, "greedy_expert": spec.expert_names[0],
              "wall_s": round(time.perf_counter() - t0, 1),
              **summarise(rows, {q.id: q for q in questions}, a.draws, a.form), "answers": rows}
    task = a.questions.split(":")[1] if a.questions.startswith("rg:") else Path(a.questions).stem
    out = Path(a.out) if a.out else HERE / "results" / f"sampling-{task}-{a.form}.json"
    atomic_write_json(out, result)
    n = result["n"]
    print(f"{a.questions}, {a.form}, {n} questions: greedy {result['greedy']}/{n}; vote of k draws: "
          + ", ".join(f"k={k} {v}/{n}" for k, v in result["vote_of_k_draws"].items())
          + f"; some answer right: {result['some_answer_right']}/{n} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
