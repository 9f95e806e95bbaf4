"""Rank 0 with `engine = "autogen"`: the spec's experts as AutoGen AgentChat agents in a ParallelConversation.

Each expert becomes an `AssistantAgent` whose model client (MPIExpertClient) sends its calls to the expert's
MPI rank; the team runs `rounds` rounds (fewer when an expert says the spec's `[autogen] stop_text`), every
agent answering each round at the same time and seeing the others' answers of the round before. Then the
synthesizer writes the final answer, as in the native debate.

The run directory is the native engine's, written by the same Recorder, so `swarm-hpc show`, `status` and
`--resume` work alike: a round is written (and fsync'd) when its last answer arrives; a resumed run puts the
finished rounds back into the agents' model contexts and runs the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm_hpc.autogen.client import CallRecord, MPIExpertClient, Requester
from swarm_hpc.core import report
from swarm_hpc.core.dialogue import ERROR, LATE, OK, Final, Step, Turn, known_block
from swarm_hpc.core.jobmemory import JobMemory
from swarm_hpc.core.passages import Passage, Reader, by_expert, retrieve_once, retrieved_line
from swarm_hpc.core.recorder import MessageRecord, Recorder, StepEnd
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.experts.models import expert_model
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor

SYNTHESIS = "Write the swarm's final answer: combine the best points in two or three sentences."


def system_message(spec: SwarmSpec, name: str, known: list[str] | None = None) -> str:
    """An agent's system message: its persona, who its peers are, and what it recalled from the memory store."""
    e = spec.expert(name)
    peers = [n for n in spec.expert_names if n != name]
    rules = f"You are {name}."
    if peers:
        rules += (f" You work with {len(peers)} other expert(s): {', '.join(peers)}. Their messages are marked with"
                  f" their name in brackets, like [{peers[0]}].")
    return f"{e.persona}\n\n{rules}{known_block(known or [])}"


class AutogenRun:
    """One run of the AutoGen engine on rank 0."""

    def __init__(self, spec: SwarmSpec, full_spec: SwarmSpec, spec_dir: Path, recorder: Recorder,
                 exchange: Requester, model: str | None = None, say: Callable[[str], None] = report.say,
                 reader: Reader | None = None, recall: RetrieverFor = LexicalRetriever):
        self.spec = spec                  # the experts that take part (routing may narrow the spec)
        self.full_spec = full_spec
        self.spec_dir = Path(spec_dir)
        self.recorder = recorder
        self.exchange = exchange
        self.model = model                # the routed model, None: each expert's own
        self.say = say
        self.names = self.spec.expert_names
        self.reader = reader              # retrieves each expert's passages ([knowledge]), None: nobody reads
        self.retrieved: dict[str, list[dict[str, Any]]] = {}   # expert -> [{id, source, score, text}]
        self.passages: dict[str, tuple[Passage, ...]] = {}
        self.memory = JobMemory(spec, recorder.run_dir, recall, say)   # [memory] store: recall and learn
        self.clients = {n: self._client(n, self.spec.autogen.instruction) for n in self.names}
        self.last: dict[str, dict[str, Any]] = {}   # the newest round's record per expert
        self.stop_reason: str | None = None

    def _client(self, name: str, instruction: str | None) -> MPIExpertClient:
        e = self.spec.expert(name)
        try:
            tokenizer = expert_model(self.full_spec.expert(name), self.spec_dir, self.model)
        except Exception:  # count_tokens is then unavailable; calls still work
            tokenizer = None
        return MPIExpertClient(self.exchange, name, timeout=self.spec.round_timeout, model=self.model,
                               tokenizer=tokenizer, n_ctx=e.n_ctx, instruction=instruction, on_failure="empty",
                               passages=self.passages.get(name, ()))

    # --- the run ----------------------------------------------------------------------------------------------

    def execute(self, resume: bool = False) -> Final:
        try:
            return asyncio.run(self._execute(self.recorder.open(resume)))
        finally:
            self.recorder.close()

    async def _execute(self, done: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> Final:
        rounds = [(recs, end) for recs, end in done if end.get("label", "").startswith("round")]
        synth_done = [(recs, end) for recs, end in done if end.get("label") == "final"]
        task = next((r for r in done[0][0] if r.get("role") == "task"), {}) if done else None
        self.memory.recall_once(task)
        self.retrieved = retrieve_once(task, self.reader, self.spec.task, self.spec.experts)
        self.passages = by_expert(self.retrieved)
        for name, client in self.clients.items():   # every call of an agent carries its expert's passages
            client.passages = self.passages.get(name, ())
        if self.retrieved:
            self.say(retrieved_line(self.retrieved))
        for recs, end in rounds:
            self.say(report.replayed_line(end["step"], Step(end["round"], end["label"], [])))
            self.last = {r["expert"]: r for r in recs if r.get("role") == "expert"}
        k = len(rounds)
        if k < self.spec.rounds and not any(end.get("stopped") for _, end in rounds):
            k = await self._rounds(k, [recs for recs, _ in rounds])
        if synth_done:
            final = self._final_from(next(r for r in synth_done[0][0] if r.get("role") == "expert"))
        else:
            final = await self._synthesis(k + 1)
        self.recorder.labels.update(stop_reason=self.stop_reason, exchange_requests=self.exchange.requests)
        self.recorder.finish(k + 2, final)
        self.memory.learn(final.content)
        self.say(report.final_block(final, self.recorder.run_dir))
        return final

    def _agents(self, replayed: list[list[dict[str, Any]]]) -> list[Any]:
        from autogen_agentchat.agents import AssistantAgent
        from autogen_core.model_context import UnboundedChatCompletionContext
        from autogen_core.models import AssistantMessage, UserMessage

        agents = []
        for n in self.names:
            context = None
            if replayed:  # the finished rounds, as this agent saw them
                msgs: list[Any] = [UserMessage(content=self.spec.task, source="user")]
                for recs in replayed:
                    mine = [r for r in recs if r.get("role") == "expert" and r["expert"] == n]
                    msgs.append(AssistantMessage(content=mine[0]["content"] if mine else "", source=n))
                    msgs += [UserMessage(content=r["content"], source=r["expert"]) for r in recs
                             if r.get("role") == "expert" and r["expert"] != n and r.get("status") == OK]
                context = UnboundedChatCompletionContext(initial_messages=msgs)
            agents.append(AssistantAgent(n, model_client=self.clients[n], system_message=system_message(self.spec, n, self.memory.facts),
                                         description=self.spec.expert(n).persona,
                                         model_client_stream=self.spec.autogen.stream, model_context=context))
        return agents

    async def _rounds(self, k0: int, replayed: list[list[dict[str, Any]]]) -> int:
        from autogen_agentchat.base import TaskResult
        from autogen_agentchat.conditions import TextMentionTermination
        from autogen_agentchat.messages import BaseChatMessage

        from swarm_hpc.autogen.team import ParallelConversation

        stop = self.spec.autogen.stop_text
        team = ParallelConversation(self._agents(replayed), max_rounds=self.spec.rounds - k0,
                                    termination_condition=TextMentionTermination(stop) if stop else None)
        count = {n: 0 for n in self.names}
        arrived: dict[int, dict[str, CallRecord | None]] = {}
        started = time.perf_counter()
        k = k0
        async for item in team.run_stream(task=self.spec.task if k0 == 0 else None):
            if isinstance(item, TaskResult):
                self.stop_reason = item.stop_reason
                break
            if not isinstance(item, BaseChatMessage) or item.source not in count:
                continue
            count[item.source] += 1
            rnd = k0 + count[item.source]
            got = arrived.setdefault(rnd, {})
            if not got:
                self.say(report.step_header(Step(rnd, f"round {rnd}", [Turn(n, []) for n in self.names])))
            call = self.clients[item.source].last_call
            got[item.source] = call
            self._say_reply(rnd, item.source, call)
            if len(got) == len(self.names):
                self._write_round(rnd, got, time.perf_counter() - started)
                started = time.perf_counter()
                k = rnd
        return k

    def _say_reply(self, rnd: int, name: str, call: CallRecord | None) -> None:
        step = Step(rnd, f"round {rnd}", [])
        if call is None or call.result is None:
            self.say(report.late_line(step, name, self.spec.round_timeout))
        else:
            self.say(report.reply_block(step, call.result, call.result.generation.model or self.recorder.model_of(name)))

    def _saw(self, rnd: int, call: CallRecord | None) -> list[str]:
        """Ids of the previous round's answers that were in this call's prompt."""
        if call is None or rnd == 1:
            return []
        text = call.prompt.messages[-1]["content"]
        return [r["id"] for n, r in self.last.items()
                if r.get("status") == OK and r["content"] and f"[{n}] {r['content']}" in text]

    def _reply_record(self, step: Step, name: str, call: CallRecord | None, saw: list[str],
                      refs: dict[str, str] | None = None) -> MessageRecord:
        if call is None or call.result is None:
            why = call.error if call is not None and call.status != LATE else None
            return self.recorder.reply(step, name, None, saw, status=None if why is None else ERROR, error=why)
        return self.recorder.reply(step, name, call.result, saw, status=ERROR if call.status in (ERROR, "cancelled") else None,
                                   refs=refs, engine="autogen", stream_chunks=call.chunks, call_seconds=round(call.seconds, 4),
                                   speakers=sorted(set(call.prompt.sources)))

    def _write_round(self, rnd: int, got: dict[str, CallRecord | None], wall: float) -> None:
        step = Step(rnd, f"round {rnd}", [Turn(n, c.prompt.messages if c else []) for n, c in got.items()])
        records = [self.recorder.task(step)] if rnd == 1 else []
        if records:
            self.memory.mark(records[0].extra)
        if records and self.retrieved:
            records[0].extra["retrieved"] = self.retrieved
        # a reply that only repeats the round before's answers (every agent was shown them, its own included) is
        # an echo, as in the native debate; the team has shown it to the others already, but no fallback picks it
        refs = {r["id"]: r["content"] for r in self.last.values() if r.get("status") == OK and r.get("content")}
        recs = {n: self._reply_record(step, n, got[n], self._saw(rnd, got[n]), refs) for n in self.names}
        records += recs.values()
        answered = [c.result for c in got.values() if c is not None and c.result is not None]
        busy = [c.seconds for c in got.values() if c is not None and c.result is not None]
        stop = self.spec.autogen.stop_text
        self.recorder.write_step(records, StepEnd(
            rnd, rnd, step.label, wall_s=round(wall, 4),
            slowest_expert_s=round(max((r.generation.seconds for r in answered), default=0.0), 4),
            answered=len(answered), turns=len(self.names),
            completion_tokens=sum(r.generation.completion_tokens for r in answered),
            extra={"engine": "autogen", "expert_seconds": round(sum(busy), 4),
                   "parallelism": round(sum(busy) / wall, 2) if wall > 0 else 0.0,
                   "stopped": bool(stop) and any(stop in r.content for r in recs.values() if stop)}))
        self.last = {n: r.as_json() for n, r in recs.items()}

    # --- the final answer -------------------------------------------------------------------------------------

    def _final_from(self, rec: dict[str, Any]) -> Final:
        if rec.get("status") == OK and rec.get("content"):
            return Final(rec["content"], rec["expert"], f"synthesis by {rec['expert']} (AutoGen engine)")
        best = max((r for r in self.last.values() if r.get("status") == OK and r.get("content")),
                   key=lambda r: len(r["content"]), default=None)
        if best is None:
            return Final("", "none", "no expert answered")
        return Final(best["content"], best["expert"],
                     f"synthesizer {rec['expert']} gave no answer ({rec.get('status')}); longest last answer")

    async def _synthesis(self, step_no: int) -> Final:
        from autogen_core.models import SystemMessage, UserMessage

        who = self.spec.synthesizer_name
        answers = [r for r in self.last.values() if r.get("status") == OK and r["content"]]
        listing = "\n".join(f"[{r['expert']}] {r['content']}" for r in answers)
        rounds = len(self.recorder.steps) or max((r.get("round", 0) for r in self.last.values()), default=0)
        prompt = (f"Task: {self.spec.task}\n\nThe experts' answers after {rounds} round(s) of conversation:\n"
                  f"{listing or '(no answers arrived)'}\n\n{SYNTHESIS}")
        step = Step(self.spec.rounds + 1, "final", [Turn(who, [])])
        self.say(report.step_header(step))
        client = self._client(who, None)
        await client.create([SystemMessage(content=system_message(self.spec, who, self.memory.facts)), UserMessage(content=prompt, source="user")])
        call = client.last_call
        self._say_reply(step.round, who, call)
        rec = self._reply_record(step, who, call, [r["id"] for r in answers])
        t = call.seconds if call else 0.0
        self.recorder.write_step([rec], StepEnd(
            step_no, step.round, "final", wall_s=round(t, 4), slowest_expert_s=round(t, 4),
            answered=int(bool(call and call.result)), turns=1,
            completion_tokens=call.result.generation.completion_tokens if call and call.result else 0,
            extra={"engine": "autogen"}))
        final = self._final_from(rec.as_json())
        if final.by == who and self.stop_reason:
            final = dataclasses.replace(final, method=f"{final.method}; the conversation ended: {self.stop_reason}")
        return final
