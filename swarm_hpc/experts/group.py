"""An expert group: several experts that use the same model, on one rank, generating as one batch.

The model is loaded once; each member is a LlamaExpert on that shared model (its own persona, sampling,
context size, memory policy and history come with its turns) and owns one sequence of a BatchDecoder
(swarm_hpc/experts/batch.py). A turn is begun (`begin`: fitted to the member's context, rendered with the
model's chat template) and then advances with every `step()`, together with the other members' turns; each
member's reply, token counts and timings are its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_hpc.core.passages import Given, Passage
from swarm_hpc.core.turns import Generation, Sampling, failed
from swarm_hpc.experts.batch import BatchDecoder, SeqJob, SeqResult
from swarm_hpc.experts.interface import Messages
from swarm_hpc.experts.llama import LlamaExpert, StreamedAnswer, load_llama, paragraph_ended
from swarm_hpc.experts.models import ResolvedModel
from swarm_hpc.memory.options import ExpertMemory


@dataclass(frozen=True)
class Member:
    """One expert of a group: what the spec says of it."""

    name: str
    n_ctx: int
    temperature: float
    seed: int
    max_tokens: int


@dataclass
class _Turn:
    t0: float
    answer: StreamedAnswer
    dropped: int
    memory: dict[str, Any] | None
    passages: Given | None = None


def usable_threads(wanted: int) -> int:
    """`wanted`, but no more than the CPUs this process may run on (its affinity: SLURM's cpus-per-task, or
    mpiexec's binding): more llama.cpp threads than cores wait for each other at every layer."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or wanted
    return max(1, min(wanted, cores))


class ExpertGroup:
    """Members that share `model` and decode together; `threads`: the group's (its members' together), within
    the CPUs the rank has."""

    def __init__(self, model: ResolvedModel, members: list[Member], threads: int, memory: ExpertMemory | None = None):
        if not members:
            raise ValueError("an expert group needs at least one member")
        threads = usable_threads(threads)
        self.threads = threads
        t0 = time.perf_counter()
        n_ctx = max(m.n_ctx for m in members)
        self.model = model
        # the model's own context is for tokenizing, templating and a fold's summary call (memory "compress");
        # without folds it is kept small: the members' turns run in the batch's context
        own_ctx = n_ctx if memory is not None and memory.compresses else 256
        self.llm = load_llama(model, own_ctx, threads, members[0].seed)
        self.members = {m.name: LlamaExpert(m.name, model, n_ctx=m.n_ctx, threads=threads, temperature=m.temperature,
                                            seed=m.seed, max_tokens=m.max_tokens, memory=memory, llm=self.llm)
                        for m in members}
        self.seq = {m.name: i for i, m in enumerate(members)}
        self.member_at = [m.name for m in members]   # sequence id -> member name
        self.decoder = BatchDecoder(self.llm, len(members), n_ctx, threads)
        self.turns: dict[str, _Turn] = {}
        self.load_seconds = time.perf_counter() - t0

    @property
    def names(self) -> list[str]:
        return list(self.members)

    @property
    def model_path(self) -> Path:
        return self.model.path

    @property
    def busy(self) -> bool:
        return bool(self.turns)

    def close(self) -> None:
        self.decoder.close()

    def begin(self, name: str, messages: Messages, *, deadline: float | None = None, model: str | None = None,
              on_text: Callable[[str], None] | None = None, cancelled: Callable[[], bool] | None = None,
              sampling: Sampling | None = None, passages: Sequence[Passage] = ()) -> Generation | None:
        """Start member `name`'s turn (one it had in flight is dropped). None: it runs in the coming steps; a
        Generation: it ended before its first step (a model the group does not serve, a prompt that does not fit)."""
        t0 = time.perf_counter()
        self.cancel(name)
        member = self.members.get(name)
        if member is None:
            return failed(f"this rank's group has no expert {name!r} (it has {', '.join(self.members)})")
        turn = member.settle(model, sampling)
        if isinstance(turn, Generation):
            return turn
        answer = StreamedAnswer(member.prompter.plain, on_text)
        try:
            messages, read = member.read(messages, passages, turn.max_tokens)
            msgs, dropped, memory = member.prepare(messages, turn.max_tokens, deadline)
            tokens, stop = member.prompter.render(msgs)
            done = paragraph_ended if member.prompter.plain else None
            self.decoder.start(self.seq[name], SeqJob(tokens, turn.max_tokens, turn.temperature, turn.seed, stop,
                                                      deadline, cancelled, answer.add, done))
        except Exception as e:  # a turn that fails is reported, never fatal for the group
            return failed(f"{type(e).__name__}: {e}", time.perf_counter() - t0, self.model.ref)
        self.turns[name] = _Turn(t0, answer, dropped, memory, read)
        return None

    def cancel(self, name: str) -> None:
        """Drop member `name`'s turn in flight, if any (nothing is reported for it)."""
        if self.turns.pop(name, None) is not None:
            self.decoder.cancel(self.seq[name])

    def step(self) -> dict[str, Generation]:
        """One batched decode for every turn in flight; {member: Generation} of the turns that ended."""
        return {self.member_at[seq]: self._generation(self.member_at[seq], r) for seq, r in self.decoder.step().items()}

    def _generation(self, name: str, r: SeqResult) -> Generation:
        turn = self.turns.pop(name)
        if r.finish_reason == "error":
            return failed(r.error or "the batch failed", time.perf_counter() - turn.t0, self.model.ref)
        return Generation(content=turn.answer.content, finish_reason=r.finish_reason, prompt_tokens=r.prompt_tokens,
                          completion_tokens=r.completion_tokens, prompt_eval_tokens=r.prompt_eval_tokens,
                          prompt_seconds=r.prompt_seconds, gen_seconds=r.gen_seconds,
                          seconds=time.perf_counter() - turn.t0, dropped_messages=turn.dropped, model=self.model.ref,
                          memory=turn.memory, passages=turn.passages)

    def answer(self, name: str, messages: Messages, **kw: Any) -> Generation:
        """One member's turn alone, start to end (what a rank that hosts one expert would do)."""
        early = self.begin(name, messages, **kw)
        if early is not None:
            return early
        while True:
            done = self.step()
            if name in done:
                return done[name]
