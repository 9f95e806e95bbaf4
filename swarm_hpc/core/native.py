"""The native engine on rank 0: drive the strategy step by step, each step's turns at once, and record it.

On `--resume` the finished steps of the transcript are replayed into the strategy (no model runs for them)
and the run carries on live from the first unfinished step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.core import report
from swarm_hpc.core.dialogue import LATE, OK, Final, Reply, Step, Turn, make_reply
from swarm_hpc.core.jobmemory import JobMemory
from swarm_hpc.core.passages import Passage, Reader, by_expert, retrieve_once, retrieved_line
from swarm_hpc.core.recorder import MessageRecord, Recorder, StepEnd
from swarm_hpc.core.strategies import Strategy
from swarm_hpc.core.turns import TurnResult
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor


class StepRunner(Protocol):
    """What runs a step's turns at once (swarm_hpc/mpi/exchange.py: Exchange)."""

    def run_step(self, turns: list[Turn], timeout: float, on_result: Callable[[TurnResult], None],
                 model: str | None = None) -> dict[str, TurnResult]: ...


BLACKBOARD = "blackboard.json"


def reply_id(step: Step, expert: str) -> str:
    return f"r{step.round}.{expert}"


class NativeRun:
    """One run of a strategy."""

    def __init__(self, strategy: Strategy, recorder: Recorder, runner: StepRunner, model: str | None = None,
                 say: Callable[[str], None] = report.say, reader: Reader | None = None, query: str | None = None,
                 recall: RetrieverFor = LexicalRetriever):
        self.strategy = strategy
        self.spec = strategy.spec
        self.recorder = recorder
        self.runner = runner
        self.model = model        # the model every turn asks for (routing), None: each expert's own
        self.say = say
        self.memory = JobMemory(self.spec, recorder.run_dir, recall, say)   # [memory] store: recall and learn
        self.reader = reader      # retrieves each expert's passages ([knowledge]), None: nobody reads
        self.query = query        # what the passages are retrieved for (None: the task)
        self.retrieved: dict[str, list[dict[str, Any]]] = {}   # expert -> [{id, source, score, text}]
        self.passages: dict[str, tuple[Passage, ...]] = {}

    def execute(self, resume: bool = False) -> Final:
        done = [recs for recs, _ in self.recorder.open(resume)]
        try:
            task = next((r for r in done[0] if r.get("role") == "task"), {}) if done else None   # None: a new run
            self.memory.recall_once(task)
            self.strategy.dialogue.remember(self.memory.facts)
            self.retrieved = self._retrieve(task)
            run = self.strategy.run()
            step = next(run)
            k = 0
            while True:
                k += 1
                if k <= len(done):
                    replies = self._replay(step, done[k - 1])
                    self.say(report.replayed_line(k, step))
                else:
                    replies = self._live(k, step)
                try:
                    step = run.send(replies)
                except StopIteration as stop:
                    final: Final = stop.value
                    break
            self.recorder.finish(k + 1, final)
            self._learn(final)
            self.say(report.final_block(final, self.recorder.run_dir))
            return final
        finally:
            self.recorder.close()

    def _live(self, k: int, step: Step) -> dict[str, Reply]:
        self.say(report.step_header(step))
        timeout = self.spec.round_timeout
        t0 = time.perf_counter()
        turns = [dataclasses.replace(t, passages=self.passages.get(t.expert, ())) for t in step.turns]
        results = self.runner.run_step(turns, timeout, model=self.model, on_result=lambda res: self.say(
            report.reply_block(step, res, res.generation.model or self.recorder.model_of(res.expert))))
        wall = time.perf_counter() - t0
        replies: dict[str, Reply] = {}
        records: list[MessageRecord] = []
        if k == 1:
            records.append(self.recorder.task(step))
            self.memory.mark(records[-1].extra)
            if self.retrieved:
                records[-1].extra["retrieved"] = self.retrieved
                if self.query and self.query != self.spec.task:   # serve: the request's question
                    records[-1].extra["retrieved_for"] = self.query
        if step.user is not None:
            records.append(self.recorder.message(step, "user", "user", step.user))
        for turn in step.turns:
            res = results.get(turn.expert)
            rec = self.recorder.reply(step, turn.expert, res, turn.saw, refs=turn.refs)
            reply = make_reply(turn.expert, rec.id, rec.content, self.spec.expert_names, rec.status)
            replies[turn.expert] = reply
            records.append(rec)
            for to, text in reply.directs:
                records.append(self.recorder.message(step, turn.expert, "direct", text, to=to, id_=f"{rec.id}>{to}",
                                                     rank=rec.rank, node=rec.node))
            if res is None:
                self.say(report.late_line(step, turn.expert, timeout))
            elif reply.flagged:
                self.say(report.flagged_line(turn.expert, rec.status, rec.extra["repetition"]["reason"]))
        self._write_board()
        self.recorder.write_step(records, StepEnd(
            k, step.round, step.label, wall_s=round(wall, 4),
            slowest_expert_s=round(max((r.generation.seconds for r in results.values()), default=0.0), 4),
            answered=len(results), turns=len(step.turns),
            completion_tokens=sum(r.generation.completion_tokens for r in results.values())))
        return replies

    # --- retrieval ([knowledge]) ------------------------------------------------------------------------------

    def _retrieve(self, task: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
        """Each expert's passages for the task, sent with its every turn. A resumed run takes the ones its task
        record lists, so its prompts are the ones its first rounds had."""
        retrieved = retrieve_once(task, self.reader, self.query or self.spec.task, self.spec.experts)
        self.passages = by_expert(retrieved)
        if retrieved:
            self.say(retrieved_line(retrieved))
        return retrieved

    def _learn(self, final: Final) -> None:
        """The blackboard to the run directory; the final answer and the board's entries to the store (`learn`)."""
        self._write_board()
        board = self.strategy.dialogue.board
        self.memory.learn(final.content, [e.text for e in board.entries] if board is not None else [])

    def _write_board(self) -> None:
        """blackboard.json in the run directory, whole or not at all, after every step (policy "blackboard")."""
        board = self.strategy.dialogue.board
        if board is not None:
            atomic_write_json(self.recorder.run_dir / BLACKBOARD, board.as_json())

    def _replay(self, step: Step, records: list[dict[str, Any]]) -> dict[str, Reply]:
        by_expert = {r["expert"]: r for r in records if r.get("role") == "expert"}
        replies = {}
        for turn in step.turns:
            r = by_expert.get(turn.expert)
            if r is None:
                replies[turn.expert] = make_reply(turn.expert, reply_id(step, turn.expert), "", self.spec.expert_names, LATE)
            else:
                replies[turn.expert] = make_reply(turn.expert, r["id"], r["content"], self.spec.expert_names,
                                                  r.get("status", OK))
        return replies
