"""Rank 0's run loop: drive the strategy, run each step over MPI, write the transcript as it goes.

On `--resume` the finished steps of the transcript are replayed into the strategy (no model runs for
them) and the run carries on live from the first unfinished step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from swarm_hpc.core import report
from swarm_hpc.core.dialogue import LATE, OK, Final, Reply, Step, generation_status, make_reply
from swarm_hpc.mpi.exchange import RankInfo, StepExchange, TurnResult
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies import Strategy, get_strategy
from swarm_hpc.core.recorder import (
    FINAL,
    SUMMARY,
    TranscriptWriter,
    atomic_write,
    atomic_write_json,
    finished_steps,
    truncate_to_finished,
)


def reply_id(step: Step, expert: str) -> str:
    return f"r{step.round}.{expert}"


class Run:
    """One swarm run on rank 0."""

    def __init__(self, spec: SwarmSpec, run_dir: Path, exchange: StepExchange, infos: list[RankInfo],
                 say: Callable[[str], None] = report.say, strategy: Strategy | None = None):
        self.spec = spec
        self.strategy = strategy or get_strategy(spec.strategy)(spec)
        self.run_dir = Path(run_dir)
        self.exchange = exchange
        self.infos = {i.expert: i for i in infos if i.expert}
        self.all_infos = infos
        self.say = say
        self.steps: list[dict[str, Any]] = []
        self.started = time.time()

    # --- the loop -------------------------------------------------------------------------------------------

    def execute(self, resume: bool = False) -> Final:
        done: list[list[dict[str, Any]]] = []
        if resume:
            truncate_to_finished(self.run_dir)
            done = finished_steps(self.run_dir)
            done = [recs for recs in done if not any(r.get("role") == "final" for r in recs)]
        writer = TranscriptWriter(self.run_dir)
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
                    replies = self._live(k, step, writer)
                try:
                    step = run.send(replies)
                except StopIteration as stop:
                    final: Final = stop.value
                    break
            self._finish(k + 1, final, writer)
            return final
        finally:
            writer.close()

    def _live(self, k: int, step: Step, writer: TranscriptWriter) -> dict[str, Reply]:
        self.say(report.step_header(step))
        t0 = time.perf_counter()
        results = self.exchange.run(k, step, self.spec.round_timeout,
                                    on_result=lambda res: self.say(report.reply_block(step, res, self._model(res.expert))))
        wall = time.perf_counter() - t0
        replies: dict[str, Reply] = {}
        records: list[dict[str, Any]] = []
        if k == 1:
            records.append(self._record(step, "coordinator", "task", self.spec.task, round_=0))
        if step.user is not None:
            records.append(self._record(step, "user", "user", step.user))
        for turn in step.turns:
            res = results.get(turn.expert)
            reply, recs = self._take(step, turn.expert, turn.saw, res)
            replies[turn.expert] = reply
            records += recs
            if res is None:
                self.say(report.late_line(step, turn.expert, self.spec.round_timeout))
        slowest = max((r.generation.seconds for r in results.values()), default=0.0)
        tokens = sum(r.generation.completion_tokens for r in results.values())
        end = {"step": k, "round": step.round, "label": step.label, "wall_s": round(wall, 4),
               "slowest_expert_s": round(slowest, 4), "answered": len(results), "turns": len(step.turns),
               "completion_tokens": tokens}
        writer.write_step(records, end)
        self.steps.append(end)
        self._write_summary("running", None)
        return replies

    def _take(self, step: Step, expert: str, saw: list[str], res: TurnResult | None) -> tuple[Reply, list[dict[str, Any]]]:
        rid = reply_id(step, expert)
        if res is None:
            reply = make_reply(expert, rid, "", self.spec.expert_names, LATE)
            rec = self._record(step, expert, "expert", "", status=LATE, saw=saw, id_=rid,
                               error=f"no reply within round_timeout={self.spec.round_timeout}s")
            return reply, [rec]
        g = res.generation
        status = generation_status(g)
        metrics = {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                   "prompt_eval_tokens": g.prompt_eval_tokens, "seconds": round(g.seconds, 4),
                   "prompt_seconds": round(g.prompt_seconds, 4), "gen_seconds": round(g.gen_seconds, 4),
                   "tok_s": round(g.tok_s, 2), "finish_reason": g.finish_reason,
                   "dropped_messages": g.dropped_messages}
        reply = make_reply(expert, rid, g.content, self.spec.expert_names, status, metrics)
        recs = [self._record(step, expert, "expert", g.content, status=status, saw=saw, id_=rid, rank=res.rank,
                             node=res.node, error=g.error, **metrics)]
        for to, text in reply.directs:
            recs.append(self._record(step, expert, "direct", text, to=to, id_=f"{rid}>{to}", rank=res.rank, node=res.node))
        return reply, recs

    def _replay(self, step: Step, records: list[dict[str, Any]]) -> dict[str, Reply]:
        replies = {}
        by_expert = {r["expert"]: r for r in records if r.get("role") == "expert"}
        for turn in step.turns:
            r = by_expert.get(turn.expert)
            if r is None:
                replies[turn.expert] = make_reply(turn.expert, reply_id(step, turn.expert), "", self.spec.expert_names, LATE)
                continue
            metrics = {k: r[k] for k in ("prompt_tokens", "completion_tokens", "seconds", "tok_s") if k in r}
            replies[turn.expert] = make_reply(turn.expert, r["id"], r["content"], self.spec.expert_names,
                                              r.get("status", OK), metrics)
        return replies

    def _finish(self, k: int, final: Final, writer: TranscriptWriter) -> None:
        last_round = max([self.spec.rounds] + [s["round"] for s in self.steps])
        rec = self._record(Step(last_round + 1, "final", []), final.by, "final", final.content,
                           id_="final", method=final.method)
        writer.write_step([rec], {"step": k, "round": last_round + 1, "label": "final answer"})
        atomic_write(self.run_dir / FINAL, report.final_markdown(self.spec, final))
        self._write_summary("complete", final)
        self.say(report.final_block(final, self.run_dir))

    # --- records --------------------------------------------------------------------------------------------

    def _model(self, expert: str) -> str:
        return self.spec.expert(expert).model if expert in self.spec.expert_names else ""

    def _record(self, step: Step, expert: str, role: str, content: str, *, round_: int | None = None,
                status: str = OK, saw: list[str] | None = None, id_: str | None = None, to: str | None = None,
                rank: int | None = None, node: str | None = None, **extra: Any) -> dict[str, Any]:
        info = self.infos.get(expert)
        rec: dict[str, Any] = {
            "type": "message", "id": id_ or f"r{step.round}.{expert}.{role}",
            "round": step.round if round_ is None else round_, "step_label": step.label,
            "rank": rank if rank is not None else (info.rank if info else 0),
            "node": node or (info.node if info else self.exchange.node),
            "expert": expert, "model": self._model(expert), "role": role, "content": content, "to": to,
            "status": status, "saw": saw or [], "time": round(time.time(), 3),
        }
        rec.update({k: v for k, v in extra.items() if v is not None})
        return rec

    def _write_summary(self, status: str, final: Final | None) -> None:
        summary = {
            "status": status,
            "run_dir": str(self.run_dir),
            "task": self.spec.task,
            "strategy": self.spec.strategy,
            "rounds": self.spec.rounds,
            "round": min(max((s["round"] for s in self.steps), default=0), self.spec.rounds),
            "final_step_done": any(s["round"] > self.spec.rounds for s in self.steps),
            "started": self.started,
            "updated": time.time(),
            "experts": [{"name": n, "model": self._model(n), **({"rank": i.rank, "node": i.node,
                         "load_seconds": round(i.load_seconds, 3)} if (i := self.infos.get(n)) else {})}
                        for n in self.spec.expert_names],
            "ranks": [asdict(i) for i in self.all_infos],
            "completion_tokens": sum(s["completion_tokens"] for s in self.steps),
            "swarm_tok_s": round(sum(s["completion_tokens"] for s in self.steps)
                                 / max(sum(s["wall_s"] for s in self.steps), 1e-9), 2),
            "steps": self.steps,
            "stale_replies": self.exchange.stale,
            "final": None if final is None else {"content": final.content, "by": final.by, "method": final.method},
        }
        atomic_write_json(self.run_dir / SUMMARY, summary)
