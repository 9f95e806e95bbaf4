"""Made-up people with made-up facts, and questions whose answers only these documents hold (issue 12's retrieval
benchmark, bench/rag.py). Seeded and generated at bench time into bench/work/ (not committed).

Every document is one person: a made-up name (syllables no model has seen together), a trade, a town (made-up),
a birth year, a pet with a made-up name and an instrument. Every question asks one of those facts by the person's
name, so no model can know the answer without the document ("What is the name of Tovesk Quellindra's goat?").

`eval_set()` is the hook for the swarm's part of the benchmark ("answers >= 80 % with RAG, ~0 % without"): the
questions, their gold answers and sources, and the path of an index of the corpus (built if missing).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "rag"

SYLLABLES = ["zor", "vath", "quel", "lin", "bri", "mar", "tov", "esk", "ul", "dra", "nim", "fen", "ka", "rho", "sel",
             "vin", "tar", "gos", "pel", "yr", "oth", "ama", "kel", "wen", "dus", "bor", "ith", "cal", "mo", "quor",
             "sab", "ne", "lux", "hai", "pim", "ro", "tas", "eld", "gru", "vo"]
TRADES = ["glassblower", "beekeeper", "cartographer", "clockmaker", "ferryman", "tanner", "lamplighter", "cooper",
          "bookbinder", "stonemason", "weaver", "falconer", "chandler", "locksmith", "shipwright", "herbalist",
          "bellfounder", "potter", "saddler", "miller"]
PETS = ["goat", "parrot", "tortoise", "ferret", "donkey", "owl", "hedgehog", "cat", "hound", "raven"]
INSTRUMENTS = ["lute", "bagpipe", "hurdy-gurdy", "zither", "oboe", "harp", "dulcimer", "fiddle", "tuba", "flute",
               "accordion", "sitar"]
QUESTIONS = {   # fact -> how it is asked
    "town": "Which town does {name} live in?",
    "trade": "What does {name} do for a living?",
    "born": "In which year was {name} born?",
    "pet_name": "What is the name of {name}'s {pet}?",
    "instrument": "Which instrument does {name} play?",
}


@dataclass(frozen=True)
class Person:
    name: str
    trade: str
    town: str
    born: int
    pet: str
    pet_name: str
    instrument: str

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "-")

    def document(self) -> str:
        n = self.name
        return (f"{n} is a {self.trade} who lives in the town of {self.town}. {n} was born in {self.born}. "
                f"{n} keeps a {self.pet} named {self.pet_name}. {n} plays the {self.instrument} on feast days.\n")


@dataclass(frozen=True)
class Question:
    question: str
    answer: str      # the gold answer, as the document says it
    source: str      # the document that holds it (the path as given to `index build`)
    fact: str


@dataclass(frozen=True)
class EvalSet:
    questions: list[Question]
    index: Path      # an index of the corpus (built with the bundled minilm)
    corpus: Path


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def people(n: int, seed: int = 0) -> list[Person]:
    rng = random.Random(seed)
    towns = sorted({_word(rng, 2) + rng.choice(["holm", "by", "stead", "mere", "wick"]) for _ in range(400)})
    seen: set[str] = set()
    out = []
    while len(out) < n:
        name = f"{_word(rng, rng.choice([2, 3]))} {_word(rng, 3)}"
        if name in seen:
            continue
        seen.add(name)
        out.append(Person(name, rng.choice(TRADES), rng.choice(towns), rng.randint(1800, 1999), rng.choice(PETS),
                          _word(rng, 2), rng.choice(INSTRUMENTS)))
    return out


def write_corpus(folder: Path, persons: list[Person]) -> None:
    """One file a person, in a fresh folder (made whole, then renamed into place)."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
    tmp.mkdir(parents=True)
    for p in persons:
        (tmp / f"{p.slug}.txt").write_text(p.document())
    if folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    tmp.rename(folder)


def questions(persons: list[Person], corpus: str, n: int, seed: int = 0) -> list[Question]:
    """`n` questions, each about another person (the first n of a seeded shuffle), facts in turn."""
    rng = random.Random(seed + 1)
    chosen = rng.sample(persons, min(n, len(persons)))
    facts = list(QUESTIONS)
    out = []
    for i, p in enumerate(chosen):
        fact = facts[i % len(facts)]
        out.append(Question(QUESTIONS[fact].format(name=p.name, pet=p.pet), str(getattr(p, fact)),
                            f"{corpus}/{p.slug}.txt", fact))
    return out


def eval_set(work: Path = WORK, docs: int = 2000, n_questions: int = 200, seed: int = 0) -> EvalSet:
    """The hook: questions with gold answers over a corpus of `docs` people, and its index (built once, with one
    rank, under `work`; cached by its parameters)."""
    work.mkdir(parents=True, exist_ok=True)
    tag = f"people-{docs}-s{seed}"
    corpus, index = work / tag, work / f"{tag}.index"
    persons = people(docs, seed)
    if not (index / "manifest.json").exists():
        write_corpus(corpus, persons)
        subprocess.run([sys.executable, "-m", "swarm_hpc", "index", "build", tag, "--out", index.name],
                       cwd=work, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    qs = questions(persons, tag, n_questions, seed)
    (work / f"{tag}-questions.jsonl").write_text("".join(json.dumps(asdict(q)) + "\n" for q in qs))
    return EvalSet(qs, index, corpus)
