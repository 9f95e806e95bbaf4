"""Compression of an expert's history: older turns folded into a rolling summary plus key facts kept verbatim.

The chat an expert answers is [system, first user turn (the task), turn, turn, ..., the newest user turn].
When it no longer fits, the oldest turns after the task are folded: the expert writes a short summary of them
(with its earlier summary, so it rolls) in one extra LLM call, and `key_facts` keeps their sentences with
numbers and names word for word. The summary and the facts are appended to the task message, and the turns
after the folded ones follow unchanged:

    [system, task + "Summary of the earlier conversation ... Key facts ...", kept turns ..., newest turn]

Why this shape:
- the prompt's prefix (system, task, summary) stays the same from one fold to the next, so llama.cpp's KV
  cache holds it and a round evaluates only its new tokens; folds are rare because each one folds until the
  kept turns take at most `keep_fraction` of the budget (a tenth: after a fold the changed prefix and the kept
  turns are evaluated again, so the fewer kept, the cheaper the fold and the longer until the next one);
- the summarizer's prompt is the expert's previous prompt with the request added, so llama.cpp finds it in the
  KV cache: `reserve()` is the room the expert keeps for that call (the fold starts while the previous prompt
  plus the request and the summary still fit), and when it still does not fit the summary covers the oldest
  folded turns that do (the rest keep their key facts);
- the folded turns are an even number, so a history that alternated user/assistant still does (templates
  such as Gemma's reject two user turns in a row);
- at most one summary call per turn: one fold takes as many turns as it needs;
- a small model reads the end of a long prompt far better than its start, so the key facts that share the most
  (rare) words with the newest message are restated beside it (`remind`, e.g. the budget's fact next to "what
  is the budget?"). What a message was given is remembered, so each later prompt shows it the same way and its
  prefix stays in the KV cache.

The compressor keeps its state (what it folded, the summary, the facts) between turns; rank 0 sends the whole
history every turn, and a history that no longer starts with the folded turns (a new conversation) starts over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from swarm_hpc.memory.facts import LABELS, SPEAKER, key_facts, normal
from swarm_hpc.memory.retrieval import STOPWORDS, WORD

Messages = list[dict[str, str]]

SUMMARY_HEAD = "Summary of the earlier conversation:"
FACTS_HEAD = "Key facts from it, verbatim:"
REMINDER_HEAD = "From earlier in this conversation:"
SUMMARY_ASK = ("First summarize the conversation so far in at most {words} words: decisions, reasons, numbers, names.")


def digest(messages: Messages) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()


def listed(head: str, items: list[str]) -> str:
    """A heading and its items, one "- item" a line."""
    return head + "\n" + "\n".join(f"- {item}" for item in items)


def words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)} - STOPWORDS


def relevant(facts: list[str], text: str, k: int) -> list[str]:
    """The `k` facts that share the most words with `text`, each shared word weighted by how rare it is among
    the facts (a name or a number counts more than "lab"), in their order; none that shares no word. Who said
    what ("bob: ", "[bob]") is not a shared word."""
    if k <= 0 or not facts:
        return []
    bags = [words(SPEAKER.sub("", f)) for f in facts]
    df: dict[str, int] = {}
    for bag in bags:
        for w in bag:
            df[w] = df.get(w, 0) + 1
    query = words(LABELS.sub(" ", text))
    scores = [sum(math.log(1 + len(facts) / df[w]) for w in bag & query) for bag in bags]
    best = sorted((i for i, sc in enumerate(scores) if sc > 0), key=lambda i: -scores[i])[:k]
    return [facts[i] for i in sorted(best)]


@dataclass
class Folded:
    """What has been folded so far: history[2:2 + count], its summary and its key facts."""

    count: int = 0
    digest: str = ""
    summary: str = ""
    facts: list[str] = field(default_factory=list)
    reminders: dict[str, str] = field(default_factory=dict)   # a user message's digest -> the facts restated beside it

    def block(self) -> str:
        """The text appended to the task message."""
        parts = []
        if self.summary:
            parts.append(f"{SUMMARY_HEAD} {self.summary}")
        if self.facts:
            parts.append(listed(FACTS_HEAD, self.facts))
        return "\n".join(parts)


@dataclass(frozen=True)
class Fold:
    """What one fold did, for the transcript."""

    folded: int            # messages folded in this turn
    total: int             # messages folded since the start
    summary_tokens: int
    facts: int

    def as_record(self) -> dict[str, int]:
        return {"folded": self.folded, "folded_total": self.total, "summary_tokens": self.summary_tokens,
                "facts": self.facts}


class Compressor:
    """One expert's rolling summary and key facts.

    `count(messages)` is the prompt's size in tokens, `tokens(text)` a text's; `summary_tokens` bounds the summary
    (the summarizer gets it as max_tokens) and `facts_tokens` the facts (the oldest are kept: they are the ones
    nothing else remembers)."""

    def __init__(self, count: Callable[[Messages], int], tokens: Callable[[str], int], *, summary_tokens: int = 96,
                 facts_tokens: int = 160, keep_fraction: float = 0.1, remind: int = 2):
        self.count = count
        self.tokens = tokens
        self.summary_tokens = summary_tokens
        self.facts_tokens = facts_tokens
        self.keep_fraction = keep_fraction
        self.remind = remind
        self.state = Folded()

    # --- the view -------------------------------------------------------------------------------------------

    def view(self, messages: Messages) -> Messages:
        """`messages` with the folded turns replaced by the summary block, and the newest message's reminder (the
        state is dropped when the history does not start with what was folded)."""
        s = self.state
        if s.count and (len(messages) < 2 + s.count or digest(messages[2:2 + s.count]) != s.digest):
            self.state = s = Folded()
        return self._reminded(self._with(messages, s, s.count))

    def _reminded(self, view: Messages) -> Messages:
        """The view with each later user message's reminder: the one it was given when it was the newest (the
        newest, the message to be answered, gets its own now)."""
        s = self.state
        if not (self.remind and s.facts):
            return view
        out = list(view)
        users = [i for i in range(2, len(out)) if out[i]["role"] == "user"]
        for i in users:
            key = digest([out[i]])
            if key not in s.reminders and i == len(out) - 1:   # only the message to be answered: never one read before
                facts = relevant(s.facts, out[i]["content"], self.remind)
                s.reminders[key] = listed(REMINDER_HEAD, facts) if facts else ""
            if s.reminders.get(key):
                out[i] = {**out[i], "content": out[i]["content"] + "\n\n" + s.reminders[key]}
        return out

    @staticmethod
    def _with(messages: Messages, state: Folded, count: int) -> Messages:
        if len(messages) < 2:
            return list(messages)
        if not (state.summary or state.facts):
            return [*messages[:2], *messages[2 + count:]]
        task = messages[1]
        return [messages[0], {**task, "content": task["content"] + "\n\n" + state.block()}, *messages[2 + count:]]

    def reserve(self, max_tokens: int) -> int:
        """The room a prompt leaves in the context: the answer's, or the summarizer's when that is more."""
        return max(max_tokens, self.summary_tokens + self.ask_tokens + 8)   # 8: a turn's markup

    def ask(self) -> str:
        return SUMMARY_ASK.format(words=max(16, int(self.summary_tokens * 0.7)))

    @functools.cached_property
    def ask_tokens(self) -> int:
        """The request's tokens (counted once: it is the same every turn)."""
        return self.tokens("\n\n" + self.ask())

    # --- folding --------------------------------------------------------------------------------------------

    def fold(self, messages: Messages, budget: int, summarise: Callable[[Messages, int], str],
             context: int | None = None) -> tuple[Messages, Fold | None]:
        """Fold the oldest unfolded turns so that the prompt fits `budget` tokens with room to grow; `summarise(chat,
        max_tokens)` is the one LLM call, its prompt and summary within `context` tokens (the context's size).
        Returns the new view and what was folded (None: nothing could be)."""
        view = self.view(messages)
        if self.count(view) <= budget:
            return view, None
        s = self.state
        start = 2 + s.count
        foldable = len(messages) - 1 - start            # never the newest turn
        # the summary block takes at most `room`; of what is left beside the system prompt and the task, the kept
        # turns may fill `keep_fraction`, so that several rounds fit before the next fold
        room = self.summary_tokens + self.facts_tokens + 24
        fixed = self.count(messages[:2])
        target = fixed + int(self.keep_fraction * max(0, budget - room - fixed))
        k = 0
        while k + 2 <= foldable:
            k += 2
            if self.count(self._with(messages, Folded(), s.count + k)) <= target:
                break
        if k == 0:
            return view, None
        folded = messages[start:start + k]
        told = k   # the folded turns the summarizer reads: what fits beside its answer (all of them, normally)
        while context is not None and told > 2 and self.count(self.summary_chat(view[:2 + told])) + self.summary_tokens > context:
            told -= 2
        summary = summarise(self.summary_chat(view[:2 + told]), self.summary_tokens).strip()
        facts = self._merge(s.facts, folded)
        kept = {digest([m]) for m in messages[start + k:-1]}   # the newest message's reminder comes from the new facts
        self.state = Folded(s.count + k, digest(messages[2:start + k]), summary, facts,
                            {key: r for key, r in s.reminders.items() if key in kept})
        fold = Fold(k, s.count + k, self.tokens(summary) if summary else 0, len(facts))
        return self.view(messages), fold

    def summary_chat(self, upto: Messages) -> Messages:
        """The summarizer's prompt: the conversation as the expert last saw it (system, task with the earlier
        summary, the turns to fold) with the request added to the last folded turn. It starts as the expert's
        previous prompt did, so llama.cpp finds nearly all of it in the KV cache and evaluates little more than
        the request; the folded turns end with one of theirs (an even number after the task's answer), so the
        roles still alternate."""
        ask = self.ask()
        chat = list(upto)
        if len(chat) > 2 and chat[-1]["role"] == "user":
            chat[-1] = {**chat[-1], "content": chat[-1]["content"] + "\n\n" + ask}
        else:
            chat.append({"role": "user", "content": ask})
        return chat

    def _merge(self, old: list[str], folded: Messages) -> list[str]:
        facts = list(old)
        seen = {normal(f) for f in facts}
        used = sum(self.tokens(f) + 2 for f in facts)
        for m in folded:
            for f in key_facts(m["content"]):
                if m["role"] == "assistant":
                    f = f"you: {f}"
                key, cost = normal(f), self.tokens(f) + 2
                if key in seen or used + cost > self.facts_tokens:
                    continue
                seen.add(key)
                facts.append(f)
                used += cost
        return facts
