"""The long-conversation needle benchmark of issue 13: memory policies side by side, and the teachable store.

`needle` (default): 3 experts debate for --rounds rounds (same model, same seeds), once per policy, the
policies' rounds interleaved so both see the same machine. In rounds 1-3 the experts' replies carry 10 facts
(one "Note for the team: X is Y." each; none is in the task). After round 4 and after the last round every
expert is asked every fact ("What is X?") on a copy of its memory (the probe is not part of the conversation,
and a fold the probe would trigger is undone); a fact counts as recalled when the answer contains its value.
Per policy it reports: recall at round 4 and at the end (and their ratio: the issue asks for >= 0.8 with
compression, drop-oldest is expected near 0), context overflows (a turn that failed or dropped messages), the
prompt tokens llama.cpp evaluated per round over the tokens new in that round (the issue asks for <= 1.3), the
share of a round's wall time spent on memory management (<= 10 %), the largest context and the process RSS.

`teach`: 20 facts go into a fresh store (as `swarm-hpc memory add` would), then every question is asked of a new
expert whose system prompt holds what the store recalls for it (what a later job's rank 0 does with its task:
by meaning with minilm, or --retriever bm25 by words); reports the share answered correctly (the issue asks
>= 90 % with the capable bundled model) and the share whose fact was recalled. --paraphrase asks each question in
other words, which share few with the fact.

`teach-jobs`: the same through the real interfaces: the facts taught with `swarm-hpc memory add`, then asked in a
new job (`swarm-hpc eval` on mpiexec ranks, a spec whose [memory] names the store; rank 0 recalls per question).

The experts run in this process (llama.cpp through swarm_hpc.experts.llama.LlamaExpert, memory as in a run;
no MPI: ranks are not what this measures). Writes bench/results/memory-<mode>-<time>.json and prints a summary.

    python bench/memory.py needle --rounds 100 --model smollm2            # ~30-60 min on 2 cores
    python bench/memory.py needle --rounds 12                              # a smoke run, ~5 min
    python bench/memory.py teach --model PATH/qwen2.5-coder-1.5b.gguf [--retriever bm25]
    python bench/memory.py teach-jobs --model qwen-coder-1.5b [--paraphrase]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.core.dialogue import Dialogue, make_reply
from swarm_hpc.core.spec import parse_spec
from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.memory import rss_mb
from swarm_hpc.experts.models import resolve_model
from swarm_hpc.knowledge.recall import Recall
from swarm_hpc.memory.options import ExpertMemory
from swarm_hpc.memory.retrieval import LexicalRetriever
from swarm_hpc.memory.store import Store

RESULTS = Path(__file__).parent / "results"
TASK = "Our team must plan a small computing lab for a school. Discuss what to buy and how to run it."
FACTS = [("the code name of the project", "Bluefinch"), ("the number of boards in the rack", "37"),
         ("the name of the lab's caretaker", "Ottoline"), ("the budget in euros", "4820"),
         ("the room number of the lab", "B214"), ("the day of the weekly meeting", "Thursday"),
         ("the brand of the network switch", "Zyntrix"), ("the number of students per class", "26"),
         ("the password hint", "walrus"), ("the opening hour of the lab", "7:45")]
TEACH = FACTS + [("the name of the school", "Ravensmoor"), ("the year the lab opens", "2027"),
                 ("the colour of the lab's door", "teal"), ("the number of monitors", "41"),
                 ("the supplier of the cables", "Kabelwerk"), ("the name of the principal", "Dr. Imbrie"),
                 ("the Wi-Fi channel", "11"), ("the name of the robot kit", "Sprocket"),
                 ("the weight limit of the shelf in kg", "65"), ("the lab's phone extension", "3391")]
# the same questions in other words (few shared with the fact): what recall by meaning is for (--paraphrase)
PARAPHRASES = {
    "the code name of the project": "What do we call the project internally?",
    "the number of boards in the rack": "How many circuit boards sit in the cabinet?",
    "the name of the lab's caretaker": "Who looks after the lab?",
    "the budget in euros": "How much money can we spend?",
    "the room number of the lab": "Which room is the lab in?",
    "the day of the weekly meeting": "On which day do we get together each week?",
    "the brand of the network switch": "Who makes our networking hardware?",
    "the number of students per class": "How big is a class?",
    "the password hint": "What reminds me of the login secret?",
    "the opening hour of the lab": "When does the lab open in the morning?",
    "the name of the school": "What is our school called?",
    "the year the lab opens": "When will the lab be ready for use?",
    "the colour of the lab's door": "What colour is the entrance to the lab painted?",
    "the number of monitors": "How many screens do we have?",
    "the supplier of the cables": "Who sells us our wiring?",
    "the name of the principal": "Who is the head of the school?",
    "the Wi-Fi channel": "Which wireless frequency slot do we use?",
    "the name of the robot kit": "What robotics set do the students build with?",
    "the weight limit of the shelf in kg": "How heavy a load can the shelf carry?",
    "the lab's phone extension": "What number do I dial to call the lab?",
}
PERSONAS = ["You are a careful planner.", "You are a skeptical engineer.", "You are a practical teacher."]


def statement(subject: str, value: str) -> str:
    return f"Note for the team: {subject} is {value}."


def question(subject: str) -> str:
    return f"What is {subject}? Answer with the value only."


def recalled(answer: str, value: str) -> bool:
    return value.lower() in answer.lower()


def new_tokens(expert: LlamaExpert, messages: list[dict[str, str]], growth: int) -> int:
    """The tokens new in a turn: how much the prompt grew since the expert's last prompt and answer, or, when it
    shrank (a fold), the newest message's (with its chat markup)."""
    return growth if growth > 0 else expert._tokens(messages[-1]["content"]) + 8


class Swarm:
    """One policy's three experts and their dialogue."""

    def __init__(self, policy: str, model: Any, args: argparse.Namespace):
        n_ctx_max = args.n_ctx_max if policy != "drop-oldest" else args.n_ctx
        mem = ExpertMemory(policy=policy, n_ctx_max=n_ctx_max, budget_mb=args.budget_mb,
                           summary_tokens=args.summary_tokens, facts_tokens=args.facts_tokens,
                           remind_facts=args.remind_facts)
        names = ["alice", "bob", "carol"]
        self.spec = parse_spec({"task": TASK, "strategy": "debate", "rounds": min(args.rounds, 100),
                                "experts": [{"name": n, "model": "m", "persona": p} for n, p in zip(names, PERSONAS, strict=True)]},
                               "bench")
        self.experts = {n: LlamaExpert(n, model, n_ctx=args.n_ctx, threads=1, temperature=args.temperature,
                                       seed=i + 1, max_tokens=args.max_tokens, memory=mem)
                        for i, n in enumerate(names)}
        self.dialogue = Dialogue(self.spec)
        self.policy = policy
        self.last: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        self.prev_prompt = {n: 0 for n in names}
        self.probes: dict[int, dict[str, Any]] = {}

    def round(self, rnd: int) -> None:
        d = self.dialogue
        turns = ([d.opening(n, "Answer in two or three sentences.") for n in d.names] if rnd == 1 else
                 [d.after_round(n, list(self.last.values()), "Consider their points and give your improved answer "
                                "in two or three sentences.") for n in d.names])
        replies, row = {}, {"round": rnd, "turns": []}
        for i, turn in enumerate(turns):
            e = self.experts[turn.expert]
            t0 = time.perf_counter()
            g = e.answer(turn.messages)
            wall = time.perf_counter() - t0
            content = g.content
            k = (rnd - 1) * 3 + i
            if rnd <= 3:   # 9 turns in rounds 1-3 state the 10 facts: the first turn two of them
                content = "\n".join([content, *(statement(*f) for f in FACTS[k::9])]).strip()
            mem = g.memory or {}
            row["turns"].append({
                "expert": turn.expert, "wall_s": wall, "prompt_tokens": g.prompt_tokens,
                "prompt_eval_tokens": g.prompt_eval_tokens, "error": g.error, "dropped": g.dropped_messages,
                "memory_s": mem.get("seconds", 0.0), "prompt_s": g.prompt_seconds, "n_ctx": e.n_ctx, "fold": "fold" in mem,
                "resizes": len(mem.get("resizes", [])),
                "new_tokens": new_tokens(e, turn.messages, g.prompt_tokens - self.prev_prompt[turn.expert])})
            self.prev_prompt[turn.expert] = g.prompt_tokens + g.completion_tokens
            replies[turn.expert] = make_reply(turn.expert, f"r{rnd}.{turn.expert}", content, d.names,
                                              "ok" if content else "empty")
        d.record(replies)
        self.last = replies
        row["rss_mb"] = rss_mb()
        self.rounds.append(row)

    def probe(self, rnd: int) -> float:
        hits = 0
        per_fact = {value: 0 for _, value in FACTS}
        for name, e in self.experts.items():
            saved = copy.deepcopy(e.compressor.state) if e.compressor else None
            for subject, value in FACTS:
                chat = [*self.dialogue.history[name], {"role": "user", "content": question(subject)}]
                g = e.answer(chat, max_tokens=24)
                hits += recalled(g.content, value)
                per_fact[value] += recalled(g.content, value)
            if e.compressor and saved is not None:   # a fold for the probes' sake is not the conversation's
                e.compressor.state = saved
        # which facts each expert still has in its prompt (its history, or its summary and key facts)
        held = {name: [v for _, v in FACTS if any(v in m["content"] for m in
                       (e.compressor.view(self.dialogue.history[name]) if e.compressor else e.fit(self.dialogue.history[name], 64)[0]))]
                for name, e in self.experts.items()}
        self.probes[rnd] = {"per_fact": per_fact, "in_prompt": held}
        return hits / (len(FACTS) * len(self.experts))

    def report(self, recall: dict[int, float]) -> dict[str, Any]:
        turns = [t for r in self.rounds for t in r["turns"]]
        ratios = [t["prompt_eval_tokens"] / t["new_tokens"] for t in turns[3:]]
        first, last = min(recall), max(recall)
        return {
            "policy": self.policy, "recall": recall,
            "recall_ratio": recall[last] / recall[first] if recall[first] else None,
            "overflows": sum(1 for t in turns if t["error"] or t["dropped"]),
            "eval_over_new": {"median": statistics.median(ratios), "p90": sorted(ratios)[int(0.9 * len(ratios))],
                              "total": sum(t["prompt_eval_tokens"] for t in turns[3:]) / sum(t["new_tokens"] for t in turns[3:])},
            "memory_share": sum(t["memory_s"] for t in turns) / sum(t["wall_s"] for t in turns),
            # with the cost a fold leaves to the next answer: evaluating again what was in the cache before (the
            # changed task message and the kept turns), at that turn's own prompt speed
            "memory_share_with_refill": (sum(t["memory_s"] for t in turns) + sum(refill(t) for t in turns if t["fold"]))
            / sum(t["wall_s"] for t in turns),
            "folds": sum(t["fold"] for t in turns), "resizes": sum(t["resizes"] for t in turns),
            "max_n_ctx": max(t["n_ctx"] for t in turns), "max_rss_mb": max(r["rss_mb"] for r in self.rounds),
            "probes": self.probes,
            "rounds": self.rounds,
        }


def refill(turn: dict[str, Any]) -> float:
    """Seconds a turn spent evaluating prompt tokens that were not new (after a fold: the prefix it changed)."""
    evaluated = turn["prompt_eval_tokens"]
    return turn.get("prompt_s", 0.0) * max(0, evaluated - turn["new_tokens"]) / evaluated if evaluated else 0.0


def needle(args: argparse.Namespace) -> dict[str, Any]:
    model = resolve_model(args.model, Path("."))
    swarms = [Swarm(p, model, args) for p in args.policies.split(",")]
    recall: dict[str, dict[int, float]] = {s.policy: {} for s in swarms}
    for rnd in range(1, args.rounds + 1):
        for s in swarms:
            s.round(rnd)
            if rnd in (4, args.rounds):
                recall[s.policy][rnd] = s.probe(rnd)
        print(f"round {rnd}: " + ", ".join(f"{s.policy} n_ctx {max(e.n_ctx for e in s.experts.values())}"
                                           for s in swarms), flush=True)
    return {"mode": "needle", "args": vars(args), "policies": [s.report(recall[s.policy]) for s in swarms]}


def teach(args: argparse.Namespace) -> dict[str, Any]:
    model = resolve_model(args.model, Path("."))
    recalling = (Recall("bench/memory.py teach", "--retriever", say=print) if args.retriever == "embedding"
                 else contextlib.nullcontext(LexicalRetriever))
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store") as store, recalling as recall:
        for subject, value in TEACH:
            store.add(f"{subject[0].upper()}{subject[1:]} is {value}.")
        e = LlamaExpert("student", model, n_ctx=args.n_ctx, threads=1, temperature=0.0, seed=1, max_tokens=24)
        rows = []
        retriever = recall(store)
        for subject, value in TEACH:
            asked = f"{PARAPHRASES[subject]} Answer with the value only." if args.paraphrase else question(subject)
            facts = retriever.search(asked, args.recall)
            system = "You are a helpful assistant.\n\nWhat you know from earlier work:\n" + "\n".join(f"- {f.text}" for f in facts)
            g = e.answer([{"role": "system", "content": system}, {"role": "user", "content": asked}])
            rows.append({"subject": subject, "question": asked, "value": value, "answer": g.content,
                         "retrieved": any(value in f.text for f in facts), "correct": recalled(g.content, value)})
    return {"mode": "teach", "args": vars(args), "retriever": retriever.name,
            "correct": sum(r["correct"] for r in rows) / len(rows),
            "retrieved": sum(r["retrieved"] for r in rows) / len(rows), "rows": rows}


def teach_jobs(args: argparse.Namespace) -> dict[str, Any]:
    """`teach` through the real interfaces: the 20 facts taught with `swarm-hpc memory add` (one process each),
    then asked in a new job, `swarm-hpc eval` on mpiexec ranks with a spec whose [memory] names the store: rank 0
    recalls for each question as a run does for its task, the expert answers, the eval grades."""
    cli = [sys.executable, "-m", "swarm_hpc"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for subject, value in TEACH:
            subprocess.run([*cli, "memory", "add", str(folder / "store"), f"{subject[0].upper()}{subject[1:]} is {value}."],
                           check=True, capture_output=True)
        (folder / "spec.toml").write_text(
            'task = "(each question)"\nstrategy = "vote"\nrounds = 1\nround_timeout = 900\n'
            'instruction = "Answer with the value only."\n\n'
            f'[memory]\nstore = "store"\nrecall = {args.recall}\nretriever = "{args.retriever}"\nlearn = false\n\n'
            f'[[experts]]\nname = "student"\nmodel = "{args.model}"\nn_ctx = {args.n_ctx}\nthreads = 1\n'
            'max_tokens = 24\npersona = "You are a helpful assistant."\n')
        asked = [(f"{PARAPHRASES[s]} Answer with the value only." if args.paraphrase else question(s), v) for s, v in TEACH]
        (folder / "q.jsonl").write_text("".join(json.dumps({"question": q, "answer": v}) + "\n" for q, v in asked))
        t0 = time.perf_counter()
        subprocess.run([*cli, "eval", str(folder / "spec.toml"), "--questions", str(folder / "q.jsonl"), "--arms",
                        "single", "--out", str(folder / "ev")], check=True)
        result = json.loads((folder / "ev" / "results.json").read_text())
        arm = result["arms"]["single:student"]
        rows = [{"question": q["question"], "answer": q["arms"]["single:student"]["answer"],
                 "correct": q["arms"]["single:student"]["correct"]} for q in result["questions"]]
    return {"mode": "teach-jobs", "args": vars(args), "correct": arm["accuracy"], "ci": arm["ci"],
            "seconds": round(time.perf_counter() - t0, 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=["needle", "teach", "teach-jobs"], default="needle")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--policies", default="drop-oldest,compress")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--n-ctx-max", type=int, default=4096)
    ap.add_argument("--budget-mb", type=float, default=128.0)
    ap.add_argument("--summary-tokens", type=int, default=96)
    ap.add_argument("--facts-tokens", type=int, default=256)
    ap.add_argument("--remind-facts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.3)
    ap.add_argument("--recall", type=int, default=3)
    ap.add_argument("--retriever", choices=["embedding", "bm25"], default="embedding",
                    help="teach: recall by meaning (minilm; BM25 where it is not installed) or by words")
    ap.add_argument("--paraphrase", action="store_true", help="teach: ask every question in other words")
    args = ap.parse_args()
    out = {"needle": needle, "teach": teach, "teach-jobs": teach_jobs}[args.mode](args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"memory-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(path, out)
    brief = {k: v for k, v in out.items() if k not in ("rows",)}
    if "policies" in brief:
        brief["policies"] = [{k: v for k, v in p.items() if k != "rounds"} for p in brief["policies"]]
    print(json.dumps(brief, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
