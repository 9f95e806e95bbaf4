"""Key facts: the sentences of a text that carry numbers or names, kept verbatim when older turns are compressed.

A summary written by a small model paraphrases, and paraphrase is where "4711" becomes "a number". So beside
the summary the expert keeps, word for word, every sentence that has a digit, a capitalised word that does
not open the sentence (a name: "Zanzibar", "Alice", "SLURM"), or that marks itself as a note or a decision
("Note for the team: the password hint is walrus.", "We agreed to buy the switch.": a fact with neither a
number nor a name is otherwise lost). A line that a prompt labels with its speaker ("[alice] ...") keeps the
label ("alice: ..."), so a fact stays attributed.
"""

from __future__ import annotations

import re

SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")
SPEAKER_LABEL = r"\[([A-Za-z][A-Za-z0-9_-]*)(?: to you)?\]"   # how a prompt marks who said a line: "[bob]"
LABELS = re.compile(SPEAKER_LABEL)
LABEL = re.compile(rf"^\s*{SPEAKER_LABEL}\s*")
DIGIT = re.compile(r"\d")
NAME = re.compile(r"\b(?!I\b)[A-Z][A-Za-z0-9'-]+")
MARKED = re.compile(r"^(?:(?:please\s+)?(?:note|remember|decision|decided|agreed|important|fyi)\b"
                    r"|(?:we|the team)\s+(?:have\s+)?(?:decided|agreed|chose|will use)\b)", re.IGNORECASE)
MIN_CHARS, MAX_CHARS = 8, 300


def key_facts(text: str) -> list[str]:
    """The sentences of `text` with a number or a name, or marked as a note or decision, in order, each once."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        label = LABEL.match(line)
        who = f"{label.group(1)}: " if label else ""
        body = line[label.end():] if label else line
        for m in SENTENCE.finditer(body):
            s = m.group(0).strip()
            if not MIN_CHARS <= len(s) <= MAX_CHARS:
                continue
            if DIGIT.search(s) or NAME.search(s, 1) or MARKED.match(s):
                fact = who + s
                key = normal(fact)
                if key not in seen:
                    seen.add(key)
                    out.append(fact)
    return out


SPEAKER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*: ")


def normal(fact: str) -> str:
    """What two copies of one fact have in common: lower case, single spaces, no end punctuation, and no
    speaker ("bob: ", "you: "): a fact a peer stated and the expert repeated is kept once, as first heard."""
    return " ".join(SPEAKER.sub("", fact).lower().split()).rstrip(".!?")
