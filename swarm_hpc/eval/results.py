"""An eval's results, read from its run directories: per question and arm the final answer and whether it is
right, per arm the accuracy with a 95 % bootstrap interval, tokens, wall time, and the accuracy of a vote over
each round's answers (so "vote after round 1" and "debate after round R" sit side by side).

Grading is swarm_hpc/core/answers.py's `is_correct`; for reasoning-gym questions its own checker may also
accept an answer (on the extracted answer text), since some of its tasks take several answer spellings.
"""

from __future__ import annotations

import fcntl
import itertools
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.atomic import atomic_write, atomic_write_json
from swarm_hpc.core.answers import answer_text, is_correct
from swarm_hpc.core.dialogue import make_reply
from swarm_hpc.core.recorder import is_complete, read_records
from swarm_hpc.core.strategies.tally import tally
from swarm_hpc.core.strategies.verify import checked_tally
from swarm_hpc.eval.plan import Plan
from swarm_hpc.eval.questions import Question, rg_dataset

BOOTSTRAP = 2000   # resamples for the interval (seeded: the same results give the same interval)
RESULTS, TABLE = "results.json", "results.md"


@dataclass
class Outcome:
    """One arm's run on one question."""

    done: bool
    answer: str = ""
    correct: bool = False
    tokens: int = 0
    wall_s: float = 0.0
    by_round: list[bool] = field(default_factory=list)   # was a vote over that round's answers right?
    round_answers: list[list[str]] = field(default_factory=list)


@cache
def _rg(task: str, size: int, seed: int) -> Any:
    return rg_dataset(task, size, seed, f"rg:{task}:{size}:{seed}")


def grade(reply: str, q: Question) -> bool:
    if is_correct(reply, q.answer):
        return True
    if q.rg is not None:
        try:
            ds = _rg(q.rg["task"], q.rg["size"], q.rg["seed"])
            return float(ds.score_answer(answer_text(reply), ds[q.rg["index"]])) >= 1.0
        except Exception:  # a checker that cannot read this answer did not accept it
            return False
    return False


def outcome(run_dir: Path, q: Question, expert: str | None = None, checked: bool = False) -> Outcome:
    """How one arm did on one question; `expert`: a single (calc, code) arm's expert, whose own answer in the
    shared run counts; `checked`: answers as the checker computes them (calc, code, verify and program arms)."""
    if not is_complete(run_dir):
        return Outcome(done=False)
    records = read_records(run_dir)
    if expert is not None:
        mine = [r for r in records if r.get("type") == "message" and r.get("role") == "expert" and r["expert"] == expert]
        text = mine[0]["content"] if mine and mine[0].get("status", "ok") == "ok" else ""
        if checked and text:
            text = checked_tally([make_reply(expert, mine[0]["id"], text, [])]).content
        tokens = sum(r.get("completion_tokens") or 0 for r in mine)
        seconds = round(sum(r.get("seconds") or 0.0 for r in mine), 3)
        return Outcome(True, text, grade(text, q), tokens, seconds, [grade(text, q)], [[text]])
    final = next(r for r in records if r.get("role") == "final")
    rounds: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("type") == "message" and r.get("role") == "expert":
            rounds.setdefault(r["round"], []).append(r)
    by_round, round_answers = [], []
    for k in sorted(rounds):
        replies = [make_reply(r["expert"], r["id"], r["content"], [], r.get("status", "ok")) for r in rounds[k]]
        by_round.append(grade((checked_tally if checked else tally)(replies).content, q))
        round_answers.append([r["content"] for r in rounds[k]])
    return Outcome(True, final["content"], grade(final["content"], q),
                   sum(r.get("completion_tokens") or 0 for r in records if r.get("type") == "message"),
                   round(sum(r.get("wall_s", 0.0) for r in records if r.get("type") == "step_end"), 3),
                   by_round, round_answers)


def interval(hits: list[bool], seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the accuracy."""
    if not hits:
        return (0.0, 0.0)
    x = np.asarray(hits, dtype=float)
    means = np.random.default_rng(seed).choice(x, size=(BOOTSTRAP, len(x)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (round(float(low), 4), round(float(high), 4))


def vote_by_size(outcomes: list[Outcome], questions: list[Question]) -> dict[int, float]:
    """Accuracy of a vote among k of the experts (averaged over every set of k), from the first round's
    answers of the `vote` arm: how accuracy grows with the number of experts, without extra runs."""
    per_q = [(o.round_answers[0], q) for o, q in zip(outcomes, questions, strict=True) if o.done and o.round_answers]
    if not per_q:
        return {}
    n = min(len(a) for a, _ in per_q)
    curve = {}
    for k in range(1, n + 1):
        hits = []
        for answers, q in per_q:
            for subset in itertools.combinations(answers[:n], k):
                replies = [make_reply(f"e{i}", f"r1.e{i}", t, []) for i, t in enumerate(subset)]
                hits.append(grade(tally(replies).content, q))
        curve[k] = round(float(np.mean(hits)), 4)
    return curve


def build(out: Path, plan: Plan) -> dict[str, Any]:
    """results.json's content: `arms` {name: {accuracy, n, ci, ...}}, `questions` [...], `vote_by_experts`."""
    table: dict[str, list[Outcome]] = {
        a.name: [outcome(plan.run_dir(out, i, a), q, a.own_reply, checked=a.checked)
                 for i, q in enumerate(plan.questions)] for a in plan.arms}
    arms = {}
    for name, outs in table.items():
        done = [o for o in outs if o.done]
        hits = [o.correct for o in done]
        rounds = max((len(o.by_round) for o in done), default=0)
        arms[name] = {
            "accuracy": round(sum(hits) / len(hits), 4) if hits else 0.0,
            "n": len(hits),
            "ci": list(interval(hits)),
            "completion_tokens": sum(o.tokens for o in done),
            "tokens_per_question": round(sum(o.tokens for o in done) / max(len(done), 1), 1),
            "wall_s": round(sum(o.wall_s for o in done), 2),
            "accuracy_by_round": [round(float(np.mean([o.by_round[k] for o in done if len(o.by_round) > k])), 4)
                                  for k in range(rounds)],
        }
    questions = [{"id": q.id, "question": q.question, "answer": q.answer,
                  "arms": {name: {"answer": outs[i].answer, "correct": outs[i].correct} for name, outs in table.items()
                           if outs[i].done}}
                 for i, q in enumerate(plan.questions)]
    result: dict[str, Any] = {"questions_from": plan.questions_from, "n_questions": len(plan.questions),
                              "arms": arms, "questions": questions}
    if "vote" in table:
        result["vote_by_experts"] = vote_by_size(table["vote"], plan.questions)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Eval: {result['questions_from']} ({result['n_questions']} questions)", "",
             "| arm | accuracy | 95 % interval | n | tokens per question | wall s | vote accuracy after each round |",
             "|---|---|---|---|---|---|---|"]
    for name, a in sorted(result["arms"].items(), key=lambda kv: -kv[1]["accuracy"]):
        by_round = " / ".join(f"{x:.0%}" for x in a["accuracy_by_round"])
        lines.append(f"| {name} | {a['accuracy']:.1%} | {a['ci'][0]:.0%}-{a['ci'][1]:.0%} | {a['n']} | "
                     f"{a['tokens_per_question']:.0f} | {a['wall_s']:.0f} | {by_round} |")
    if result.get("vote_by_experts"):
        lines += ["", "Vote among k experts (first-round answers of `vote`, every set of k): "
                  + ", ".join(f"k={k}: {v:.0%}" for k, v in result["vote_by_experts"].items())]
    return "\n".join(lines) + "\n"


def write(out: Path, plan: Plan) -> dict[str, Any]:
    """results.json, results.md and the plot, from every question answered so far. Shards of a SLURM eval that
    end together take turns (an flock), so the last one reads everything the others wrote."""
    from swarm_hpc.eval.plot import plot

    with open(Path(out) / ".results.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = build(out, plan)
        atomic_write_json(Path(out) / RESULTS, result)
        atomic_write(Path(out) / TABLE, markdown(result))
        plot(result, Path(out))
    return result
