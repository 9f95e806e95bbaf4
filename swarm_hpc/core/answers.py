"""What a reply's answer is, for the vote and for the eval's scorer: one set of rules, so a vote counts answers
the way they are graded.

Small models rarely answer in a clean format, so the rules are forgiving and simple:
1. the answer's text is what follows the last "Answer:" (also "Final answer:", "answer =", anywhere in a line) up
   to the end of that line, else the content of the last \\boxed{...}, else the whole reply;
2. a number answer is the last number in that text ("1,234" and "$5" and "-3.50" read as numbers);
3. a short answer is that text lowercased, without punctuation, the articles a/an/the, and extra spaces.
A reply answers a short question correctly when the normalised gold answer is that text, or stands in it as
whole words and the text is at most MAX_SHORT_WORDS words long ("Paris." and "It is Paris" count; a long
paragraph that mentions Paris among other cities does not).
"""

from __future__ import annotations

import math
import re

MAX_SHORT_WORDS = 8  # longer texts are not graded by containment: naming many candidates must not score
ANSWER_LINE = re.compile(r"\banswer[ \t*]*[:=][ \t*]*(.*?)[ \t*]*$", re.IGNORECASE | re.MULTILINE)
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
NUMBER = re.compile(r"(?<![\w.])-?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]*\d)|-?\$?\d+(?:\.\d+)?")
ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def answer_text(reply: str) -> str:
    """The part of a reply that states its answer (rule 1)."""
    lines = [m.group(1) for m in ANSWER_LINE.finditer(reply) if m.group(1).strip()]
    if lines:
        return lines[-1].strip()
    boxed = BOXED.findall(reply)
    if boxed:
        return str(boxed[-1]).strip()
    return reply.strip()


def to_number(text: str) -> float | None:
    """`text` as a number if it is one ("1,234", "$5", "-3.5", "7."), else None."""
    t = text.strip().rstrip(".").replace(",", "").replace("$", "")
    try:
        value = float(t)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def last_number(text: str) -> float | None:
    """The last number written in `text` (rule 2), or None."""
    found = NUMBER.findall(text)
    return to_number(found[-1]) if found else None


def normalize(text: str) -> str:
    """Rule 3: lowercase, no punctuation, no articles, single spaces."""
    t = re.sub(r"[^\w\s-]", " ", text.lower()).replace("_", " ")
    t = ARTICLES.sub(" ", t)
    return " ".join(t.split())


def is_number_answer(gold: str) -> bool:
    return to_number(gold) is not None


def states_answer(reply: str) -> bool:
    """Whether a reply says what its answer is: an "Answer:" line, a \\boxed{}, or a number at all. A reply that
    only discusses ("...to get the combined total.") does not, and a vote should not pick it over one that does."""
    return bool(ANSWER_LINE.search(reply) or BOXED.search(reply) or NUMBER.search(reply))


def answer_key(reply: str) -> str:
    """What the vote counts: replies with the same key give the same answer. A number if the answer text holds
    one (canonical: "12" for "12.0" and "$12"), else the normalised answer text."""
    text = answer_text(reply)
    n = last_number(text)
    if n is not None:
        return format_number(n)
    return normalize(text.splitlines()[0] if text else "")


def format_number(n: float) -> str:
    return str(int(n)) if n == int(n) and abs(n) < 1e15 else repr(n)


def is_correct(reply: str, gold: str) -> bool:
    """Does `reply` give the answer `gold`? Numbers by value (relative tolerance 1e-6), short answers by rule 3."""
    text = answer_text(reply)
    g = to_number(gold)
    if g is not None:
        n = last_number(text)
        return n is not None and math.isclose(n, g, rel_tol=1e-6, abs_tol=1e-9)
    want, have = normalize(gold), normalize(text)
    if not want or not have:
        return False
    if have == want:
        return True
    return len(have.split()) <= MAX_SHORT_WORDS and f" {want} " in f" {have} "
