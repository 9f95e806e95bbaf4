"""The native engine on rank 0: drive the strategy step by step, each step's turns at once, and record it.

On `--resume` the finished steps of the transcript are replayed into the strategy (no model runs for them)
and the run carries on live from the first unfinished step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from swarm_hpc.core import report
from swarm_hpc.core.dialogue import LATE, OK, Final, Reply, Step, Turn, make_reply
from swarm_hpc.core.recorder import MessageRecord, Recorder, StepEnd
from swarm_hpc.core.strategies import Strategy
from swarm_hpc.core.turns import TurnResult


class StepRunner(Protocol):
    """What runs a step's turns at once (swarm_hpc/mpi/exchange.py: Exchange)."""

    def run_step(self, turns: list[Turn], timeout: float, on_result: Callable[[TurnResult], None],
                 model: str | None = None) -> dict[str, TurnResult]: ...


def reply_id(step: Step, expert: str) -> str:
    return f"r{step.round}.{expert}"


class NativeRun:
    """One run of a strategy."""

    def __init__(self, strategy: Strategy, recorder: Recorder, runner: StepRunner, model: str | None = None,
                 say: Callable[[str], None] = report.say):
        self.strategy = strategy
        self.spec = strategy.spec
        self.recorder = recorder
        self.runner = runner
        self.model = model        # the model every turn asks for (routing), None: each expert's own
        self.say = say

    def execute(self, resume: bool = False) -> Final:
        done = [recs for recs, _ in self.recorder.open(resume)]
        try:
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
            self.say(report.final_block(final, self.recorder.run_dir))
            return final
        finally:
            self.recorder.close()

    def _live(self, k: int, step: Step) -> dict[str, Reply]:
        self.say(report.step_header(step))
        timeout = self.spec.round_timeout
        t0 = time.perf_counter()
        results = self.runner.run_step(step.turns, timeout, model=self.model, on_result=lambda res: self.say(
            report.reply_block(step, res, res.generation.model or self.recorder.model_of(res.expert))))
        wall = time.perf_counter() - t0
        replies: dict[str, Reply] = {}
        records: list[MessageRecord] = []
        if k == 1:
            records.append(self.recorder.task(step))
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
        self.recorder.write_step(records, StepEnd(
            k, step.round, step.label, wall_s=round(wall, 4),
            slowest_expert_s=round(max((r.generation.seconds for r in results.values()), default=0.0), 4),
            answered=len(results), turns=len(step.turns),
            completion_tokens=sum(r.generation.completion_tokens for r in results.values())))
        return replies

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
