"""Is a reply degenerate? Token loops ("the the the ...") and echoes (a reply that only repeats the task, a
peer's answer or its own previous answer). Pure functions of the texts, no state and no MPI: rank 0 judges
each reply as it records it, so the same reply always gets the same verdict (also when a run is resumed).

Small models degrade this way over long debates: they loop on a phrase until max_tokens or the deadline cuts
them, or hand back text they were shown. Such a reply carries nothing new, so it is recorded with a status of
its own (`repetitive`, `echo`) and the strategies leave it out (swarm_hpc/core/dialogue.py: `Reply.answered`).

A wrong flag hides a real answer, which is worse than letting a degenerate one through, so every threshold
below errs towards "ok": a short reply is never flagged, an answer must be almost wholly copied to be an
echo, and at least half of a text must repeat itself to be a loop. Both measures work on lower-case words
(punctuation and markup ignored), plus zlib on the raw text for loops that have no words ("!!!!...").
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

ECHO, REPETITIVE = "echo", "repetitive"   # the statuses a verdict gives a reply

WORD_RE = re.compile(r"\w+")
TAG_RE = re.compile(r"</?[A-Za-z][^<>]{0,40}>")   # HTML tags a model wraps an answer in (<strong>, <em>): not words

LOOP_NGRAM = 4
"""Word n-grams compared for loops: 4 words rarely recur by chance in a few sentences of prose, while any
loop of a phrase of 1 to 4+ words repeats them on every turn."""

LOOP_MIN_WORDS = 12
"""Fewer words are never a loop: "Paris. Paris. Paris." may be emphasis, and too few n-grams to judge."""

LOOP_SHARE = 0.6
"""A text is a loop when at least this share of its 4-grams already occurred earlier in it. Prose stays
below 0.1 (a list's repeated "the cost of ..." openings included); a sentence said 3 times reaches 0.6, a
phrase looped until max_tokens approaches 1."""

LOOP_MIN_CHARS = 200
"""zlib's own overhead makes shorter texts compress badly whatever they say, so the compression test
starts here."""

LOOP_COMPRESSION = 0.2
"""zlib-compressed size / raw size below which a text is a loop. English prose of a few hundred
characters compresses to 0.5-0.8; a character or a short phrase repeated to fill the reply, to under 0.1.
This catches loops without words ("!!!!", "....", emoji) that the n-gram test cannot see."""

ECHO_RUN = 4
"""Only runs of at least this many words in a row that also occur in a source count as copied: shorter
common runs ("a swarm of", "the capital of") are what any answer on the same topic shares."""

ECHO_MIN_WORDS = 6
"""An echo of the task copies at least this many words: a question handed back is never an answer, but an
answer as short as "The capital of France." may be all a small model has to say."""

ANSWER_ECHO_MIN_WORDS = 12
"""An echo of an answer (a peer's, or the expert's own previous one) copies at least this many words. A short
answer said again ("I prefer the swarm.", which Gemma 3 said in 27 of 30 rounds of a debate) is a position
kept or shared, not an echo; the echoes SmolLM2 produced in long debates copied 40 to 70 words."""

ECHO_SHARE = 0.85
"""A reply is an echo when at least this share of its words is copied (in runs of ECHO_RUN or more) from
the sources it was shown. An answer that quotes the question and then answers it stays well below (its
answer is new words); a copy with a word or two changed or added stays above."""

MAX_WORDS = 4000
"""Only a reply's first words are compared, so a runaway reply costs rank 0 a bounded time."""


@dataclass(frozen=True)
class Verdict:
    """Why a reply is degenerate: its status, the measure that crossed its threshold, and what it echoes."""

    status: str              # ECHO or REPETITIVE
    score: float             # the share of copied words (echo), of repeated n-grams, or the compression ratio
    reason: str              # one line for the transcript
    of: str | None = None    # echo: the id of the source it copies most from ("task", "r1.bob")

    def as_record(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.status, "score": round(self.score, 3), "reason": self.reason}
        if self.of is not None:
            out["of"] = self.of
        return out


def words(text: str) -> list[str]:
    """Lower-case words, punctuation and markup dropped."""
    return WORD_RE.findall(TAG_RE.sub(" ", text).lower())


def ngrams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def repeated_ngram_share(ws: list[str], n: int = LOOP_NGRAM) -> float:
    """The share of the word n-grams that already occurred earlier in the same text (0 when there are none)."""
    grams = ngrams(ws, n)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        if g in seen:
            repeats += 1
        seen.add(g)
    return repeats / len(grams)


def compression_ratio(text: str) -> float:
    """zlib-compressed size / UTF-8 size (1.0 for an empty text)."""
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0


def loop_verdict(text: str) -> Verdict | None:
    """REPETITIVE when the text mostly repeats itself, else None."""
    ws = words(text)[:MAX_WORDS]
    if len(ws) >= LOOP_MIN_WORDS:
        share = repeated_ngram_share(ws)
        if share >= LOOP_SHARE:
            return Verdict(REPETITIVE, share, f"loops: {share:.0%} of its {LOOP_NGRAM}-word sequences repeat earlier ones")
    stripped = text.strip()
    if len(stripped) >= LOOP_MIN_CHARS:
        ratio = compression_ratio(stripped[:MAX_WORDS * 8])
        if ratio <= LOOP_COMPRESSION:
            return Verdict(REPETITIVE, ratio, f"loops: compresses to {ratio:.0%} of its size")
    return None


def copied(reply: list[str], source: list[str], run: int = ECHO_RUN) -> list[bool]:
    """Which of the reply's words lie in a run of `run` or more words that also occurs in `source` (shingles:
    a set lookup per word, so a long reply against long sources stays linear)."""
    have = set(ngrams(source, run))
    covered = [False] * len(reply)
    for i, g in enumerate(ngrams(reply, run)):
        if g in have:
            covered[i:i + run] = [True] * run
    return covered


def echo_verdict(text: str, task: str, answers: Mapping[str, str] | None = None) -> Verdict | None:
    """ECHO when the text is (almost) wholly copied from the task or from `answers` ({id: text}: the answers it
    was shown, its own previous answer), else None. Copies from several sources add up: a reply pasted together
    from two peers' answers is an echo too; `of` names the source it copies most from ("task" for the task)."""
    ws = words(text)[:MAX_WORDS]
    if len(ws) < ECHO_MIN_WORDS:
        return None
    covered = [False] * len(ws)
    per_source: dict[str, int] = {}
    for sid, src in {"task": task, **(answers or {})}.items():
        mine = copied(ws, words(src)[:MAX_WORDS])
        if any(mine):
            per_source[sid] = sum(mine)
            covered = [a or b for a, b in zip(covered, mine, strict=True)]
    total = sum(covered)
    share = total / len(ws)
    if share < ECHO_SHARE:
        return None
    of = max(per_source, key=lambda s: per_source[s])
    if total < (ECHO_MIN_WORDS if of == "task" else ANSWER_ECHO_MIN_WORDS):
        return None
    return Verdict(ECHO, share, f"echo: {share:.0%} of its words are copied from {of}", of)


def judge(text: str, task: str, answers: Mapping[str, str] | None = None) -> Verdict | None:
    """A reply's verdict: REPETITIVE (a loop, whatever it repeats), else ECHO of the task or of `answers`, else
    None (ok)."""
    return loop_verdict(text) or echo_verdict(text, task, answers)
