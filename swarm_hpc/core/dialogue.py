"""What each expert sees: system prompts, peers' answers, directed messages, and the data that flows
between the strategies and the MPI layer.

A strategy yields `Step`s (turns that run at the same time, one per expert) and gets back a `Reply` per
expert. `Dialogue` keeps every expert's own chat history and its inbox of directed messages, and writes the
prompts; strategies decide only who speaks when and what they are asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from swarm_hpc.core.answers import states_answer
from swarm_hpc.core.passages import Passage
from swarm_hpc.core.repetition import ECHO, REPETITIVE
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.turns import Generation, Sampling
from swarm_hpc.memory.blackboard import Blackboard, posts

OK, EMPTY, LATE, ERROR = "ok", "empty", "late", "error"  # a reply's status
FLAGGED = (ECHO, REPETITIVE)  # a reply that came but only repeated (swarm_hpc/core/repetition.py): not an answer

# a line "@name: text" addresses a peer; the text goes privately to that peer in the next round
DIRECT_RE = re.compile(r"^[ \t>*-]*@([A-Za-z][A-Za-z0-9_-]*)[ \t]*[:,][ \t]*(.+?)[ \t]*(?:\n|$)", re.MULTILINE)


@dataclass(frozen=True)
class Turn:
    """One expert's part of a step: the full chat it answers and the ids of the messages shown in it."""

    expert: str
    messages: list[dict[str, str]]
    saw: list[str] = field(default_factory=list)
    # what the reply must not merely repeat, by message id: the answers shown in this prompt and the expert's own
    # previous answer (the task is always checked). Stays on rank 0; the recorder judges the reply against it.
    refs: dict[str, str] = field(default_factory=dict)
    sampling: Sampling | None = None   # None: the expert's own temperature and seed
    passages: tuple[Passage, ...] = ()  # retrieved for this expert; it keeps those that fit (core/passages.py)


@dataclass(frozen=True)
class Step:
    """Turns that run at the same time. `round` counts the conversation's rounds; the final step is rounds+1."""

    round: int
    label: str
    turns: list[Turn]
    user: str | None = None    # a message from a person that opened this step (chat), kept in the transcript


@dataclass(frozen=True)
class Reply:
    """An expert's answer to a turn, as the strategy sees it."""

    expert: str
    id: str
    content: str                       # the whole reply as generated
    public: str                        # what peers see: the reply without its directed lines
    directs: list[tuple[str, str]]     # (peer, text) for each "@peer: text" line
    status: str = OK                   # ok | empty (said nothing) | late | error | echo | repetitive

    @property
    def answered(self) -> bool:
        return self.status == OK and bool(self.public or self.directs)

    @property
    def votes(self) -> bool:
        """It counts in a vote: an answer, or an echo that states one. Repeating a peer's answer is taking its side,
        and repeating one's own is standing by it (swarm-hpc eval showed debates losing right answers when such
        replies were left out of the final vote); an echo of the task states no answer of its own."""
        return bool(self.public) and (self.answered or (self.status == ECHO and states_answer(self.public)))

    @property
    def flagged(self) -> bool:
        """It came, but only repeated the task, an answer or itself: peers are not shown it, no vote or
        fallback picks it (its author's previous answer stands instead, where a strategy keeps one)."""
        return self.status in FLAGGED


@dataclass(frozen=True)
class Final:
    content: str
    by: str            # the expert who wrote it, or "vote"
    method: str        # how it was chosen


def generation_status(g: Generation) -> str:
    """A turn's status from what the expert produced: error, ok, or empty (it said nothing)."""
    return ERROR if g.finish_reason == "error" else (OK if g.content else EMPTY)


def split_directs(content: str, names: list[str], sender: str) -> tuple[str, list[tuple[str, str]]]:
    """Separate "@peer: text" lines (to known peers other than the sender) from the public text."""
    directs: list[tuple[str, str]] = []

    def take(m: re.Match[str]) -> str:
        to = m.group(1)
        if to in names and to != sender:
            directs.append((to, m.group(2)))
            return ""
        return m.group(0)

    public = DIRECT_RE.sub(take, content).strip()
    return public, directs


def make_reply(expert: str, reply_id: str, content: str, names: list[str], status: str = OK) -> Reply:
    public, directs = split_directs(content, names, expert) if status in (OK, ECHO) else ("", [])
    return Reply(expert, reply_id, content, public, directs if status == OK else [], status)


def known_block(facts: list[str]) -> str:
    """Facts recalled from the memory store as they end an expert's system prompt ("" without any)."""
    return ("\n\nWhat you know from earlier work:\n" + "\n".join(f"- {f}" for f in facts)) if facts else ""


class Dialogue:
    """Per-expert chat histories and inboxes; the single place where prompts are written."""

    def __init__(self, spec: SwarmSpec, echo_of_answers: bool = True):
        self.spec = spec
        self.names = spec.expert_names
        self.recalled: list[str] = []   # facts from the memory store, in every system prompt (remember())
        # the shared blackboard (spec [memory] policy = "blackboard"): shown in every turn, "@board: text" posts
        self.board = Blackboard(spec.memory.blackboard_tokens) if spec.memory.policy == "blackboard" else None
        self.history: dict[str, list[dict[str, str]]] = {n: [self._system(n)] for n in self.names}
        self.inbox: dict[str, list[tuple[str, str, str]]] = {n: [] for n in self.names}  # (id, sender, text)
        # whether repeating an answer it was shown, or its own previous one, makes a reply an echo (Turn.refs).
        # Vote turns it off: there a short answer agreeing with a peer, or standing by one's own, is the point.
        self.echo_of_answers = echo_of_answers
        self.own_last: dict[str, tuple[str, str]] = {}  # expert -> (id, public text) of its newest answer

    def _system(self, name: str) -> dict[str, str]:
        e = self.spec.expert(name)
        peers = [n for n in self.names if n != name]
        rules = f"You are {name}."
        if peers:
            rules += (f" You work with {len(peers)} other expert(s): {', '.join(peers)}. To send one of them a"
                      f" private note, write a line like '@{peers[0]}: your note'.")
        if self.board is not None:
            rules += (" To put a fact or a decision the team agreed on onto the shared blackboard, which everyone"
                      " sees in every round, write a line like '@board: the fact'.")
        return {"role": "system", "content": f"{e.persona}\n\n{rules}{known_block(self.recalled)}"}

    def remember(self, facts: list[str]) -> None:
        """Put facts recalled from the memory store into every expert's system prompt (before the first turn:
        the system prompt is the start of the cached prefix and never changes afterwards)."""
        self.recalled = list(facts)
        for n in self.names:
            if len(self.history[n]) == 1:
                self.history[n][0] = self._system(n)

    # --- building turns ---------------------------------------------------------------------------------------

    def opening(self, name: str, instruction: str, peers: Sequence[Reply] = ()) -> Turn:
        """The first turn of an expert's own conversation: the task, anything peers already said, an instruction."""
        parts, saw, refs = self._news(name, list(peers))
        return self.continue_with(name, "\n\n".join([f"Task: {self.spec.task}", *parts, instruction]), saw, refs)

    def after_round(self, name: str, peers: list[Reply], instruction: str) -> Turn:
        """A follow-up turn showing what the peers said and the notes addressed to this expert."""
        parts, saw, refs = self._news(name, peers)
        return self.continue_with(name, "\n\n".join([*parts, instruction]), saw, refs)

    def _news(self, name: str, peers: list[Reply]) -> tuple[list[str], list[str], dict[str, str]]:
        """Prompt parts for the peers' answers, the missing and the left-out peers and this expert's inbox, with
        message ids; and the answers a reply to them must not merely repeat (Turn.refs)."""
        parts, saw = [], []
        others = [r for r in peers if r.expert != name]
        said, ids = self.listing(others)
        if said:
            parts.append("The other experts said:\n" + said)
            saw += ids
        missing = [r.expert for r in others if r.status != OK and not r.flagged]
        if missing:
            parts.append("No answer came from: " + ", ".join(missing) + ".")
        repeated = [r.expert for r in others if r.flagged]
        if repeated:
            parts.append("Left out because they only repeated earlier text: " + ", ".join(repeated) + ".")
        if self.board is not None and self.board.entries:
            parts.append(self.board.render())
            saw += [e.id for e in self.board.entries]
        notes = self.take_inbox(name)
        if notes:
            parts.append("Private notes to you:\n" + "\n".join(f"[{sender} to you] {text}" for _, sender, text in notes))
            saw += [mid for mid, _, _ in notes]
        refs: dict[str, str] = {}
        if self.echo_of_answers:
            refs = {r.id: r.public for r in others if r.answered and r.public}
            if name in self.own_last:
                own_id, own_text = self.own_last[name]
                refs[own_id] = own_text
        return parts, saw, refs

    def continue_with(self, name: str, user_text: str, saw: list[str], refs: dict[str, str] | None = None) -> Turn:
        self.history[name].append({"role": "user", "content": user_text})
        return Turn(name, list(self.history[name]), saw, dict(refs or {}))

    def fresh(self, name: str, user_text: str, saw: list[str], sampling: Sampling | None = None) -> Turn:
        """A one-off turn outside the expert's own history (synthesis, aggregation, independent draws). Its reply
        is judged against the task only: combining the answers it is shown may rightly copy the best of them."""
        return Turn(name, [self._system(name), {"role": "user", "content": user_text}], saw, sampling=sampling)

    # --- taking replies -------------------------------------------------------------------------------------

    def record(self, replies: dict[str, Reply], in_history: bool = True) -> None:
        """Add each reply to its author's history and deliver its directed lines to the addressees.

        A flagged reply's whole turn (the prompt and the reply) is left out of its author's history, as if it
        had not been asked: fed back, an echo or a loop is what a small model carries on with, and an empty
        turn in its place (what a late reply gets) taught SmolLM2 to say nothing in every round after."""
        for r in replies.values():
            if in_history and r.expert in self.history and self.history[r.expert][-1]["role"] == "user":
                if r.flagged:
                    self.history[r.expert].pop()
                else:
                    self.history[r.expert].append({"role": "assistant", "content": r.content if r.status == OK else ""})
            if r.answered and r.public:
                self.own_last[r.expert] = (r.id, r.public)
            if self.board is not None and r.status == OK:
                self.board.post(r.id, r.expert, posts(r.content))
            for to, text in r.directs:
                self.inbox[to].append((f"{r.id}>{to}", r.expert, text))

    def take_inbox(self, name: str) -> list[tuple[str, str, str]]:
        notes, self.inbox[name] = self.inbox[name], []
        return notes

    @staticmethod
    def listing(replies: list[Reply]) -> tuple[str, list[str]]:
        shown = [r for r in replies if r.answered and r.public]
        return "\n".join(f"[{r.expert}] {r.public}" for r in shown), [r.id for r in shown]
