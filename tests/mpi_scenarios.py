"""Scenarios that run on real MPI ranks: `mpiexec -n N python tests/mpi_scenarios.py NAME SPEC OUT.json`.

Every rank calls swarm_hpc.mpi.session.serve_experts(SPEC); ranks >= 1 serve their expert, rank 0 runs the named
scenario (an async function below) against them and writes what it measured to OUT.json. The tests
(test_autogen.py, test_model_switching.py) start mpiexec and check OUT.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from autogen_core import CancellationToken
from autogen_core.models import SystemMessage, UserMessage

from swarm_hpc.mpi.session import ExpertSession, serve_experts


def _msgs(text: str, system: str = "You are helpful.") -> list[Any]:
    return [SystemMessage(content=system), UserMessage(content=text, source="user")]


async def client_basics(s: ExpertSession) -> dict[str, Any]:
    """create, usage, count_tokens, speaker names, streaming, an unknown model."""
    from swarm_hpc.autogen.client import ExpertError

    out: dict[str, Any] = {}
    alice = s.client("alice")
    msgs = [SystemMessage(content="You are alice."), UserMessage(content="What is the capital of France?", source="user"),
            UserMessage(content="Rome, surely.", source="bob")]
    counted = alice.count_tokens(msgs)
    res = await alice.create(msgs)
    await alice.create(msgs)
    out["create"] = {"content": res.content, "finish_reason": res.finish_reason, "usage": vars(res.usage),
                     "counted": counted, "remaining": alice.remaining_tokens(msgs), "n_ctx": alice.n_ctx,
                     "total": vars(alice.total_usage()), "actual": vars(alice.actual_usage()),
                     "sent": alice.last_call.prompt.messages, "sources": alice.last_call.prompt.sources,
                     "rank": alice.last_call.result.rank}
    # streaming from a model that never stops by itself: chunks must arrive while it generates
    dave = s.client("dave", timeout=1.5)
    t0 = time.perf_counter()
    chunks: list[tuple[float, str]] = []
    final = None
    async for item in dave.create_stream(_msgs("Sing.")):
        if isinstance(item, str):
            chunks.append((time.perf_counter() - t0, item))
        else:
            final = item
    out["stream"] = {"chunks": len(chunks), "first_s": chunks[0][0] if chunks else None,
                     "last_chunk_s": chunks[-1][0] if chunks else None, "result_s": time.perf_counter() - t0,
                     "joined": "".join(c for _, c in chunks), "content": final.content,
                     "finish_reason": final.finish_reason, "completion_tokens": final.usage.completion_tokens}
    try:
        await s.client("carol").create(_msgs("hi"), extra_create_args={"model": "gemma3"})
        out["unknown_model"] = "no error"
    except ExpertError as e:
        out["unknown_model"] = str(e)
    return out


async def team_rounds(s: ExpertSession) -> dict[str, Any]:
    """ParallelConversation: termination over a whole round, max_rounds, what each agent saw."""
    from autogen_agentchat.conditions import TextMentionTermination

    from swarm_hpc.autogen.team import ParallelConversation

    out: dict[str, Any] = {}
    agents = [s.agent(n) for n in ("alice", "bob", "carol")]
    team = ParallelConversation(agents, termination_condition=TextMentionTermination("DONE"), max_rounds=4)
    result = await team.run(task="What is the capital of France?")
    out["terminated"] = {"messages": [(m.source, m.content) for m in result.messages],
                         "stop_reason": result.stop_reason}
    clients = {a.name: a._model_client for a in agents}
    team2 = ParallelConversation([s.agent(n, stream=True) for n in ("alice", "bob", "carol")], max_rounds=2)
    result2 = await team2.run(task="What is the capital of France?")
    alice2 = team2._participants[0]._model_client
    out["two_rounds"] = {"messages": [(m.source, m.content) for m in result2.messages],
                         "stop_reason": result2.stop_reason,
                         "alice_round2_sent": alice2.last_call.prompt.messages,
                         "alice_calls": len(alice2.calls), "bob_chunks": team2._participants[1]._model_client.last_call.chunks}
    out["first_team_calls"] = {n: len(c.calls) for n, c in clients.items()}
    return out


async def cancel_round(s: ExpertSession) -> dict[str, Any]:
    """A CancellationToken stops a running round, and the expert rank stops generating."""
    from swarm_hpc.autogen.team import ParallelConversation

    out: dict[str, Any] = {}
    team = ParallelConversation([s.agent("dave", timeout=30.0), s.agent("alice")], max_rounds=3)
    token = CancellationToken()
    t0 = time.perf_counter()
    run = asyncio.ensure_future(team.run(task="Sing forever.", cancellation_token=token))
    await asyncio.sleep(1.0)
    token.cancel()
    try:
        await run
        out["outcome"] = "finished"
    except asyncio.CancelledError:
        out["outcome"] = "cancelled"
    out["cancel_s"] = time.perf_counter() - t0
    # the rank dropped the cancelled turn: a new 1-second request is answered in about a second, not 30
    t1 = time.perf_counter()
    res = await s.client("dave", timeout=1.0).create(_msgs("Sing again."))
    out["next_request_s"] = time.perf_counter() - t1
    out["next_finish_reason"] = res.finish_reason
    await asyncio.sleep(0.3)
    s.exchange.pump()
    out["stale_replies"] = s.exchange.stale
    return out


async def concurrency(s: ExpertSession) -> dict[str, Any]:
    """Experts stall a known time per turn (SWARM_HPC_TEST_STALL): a round of N takes about one stall."""
    from autogen_agentchat.conditions import MaxMessageTermination

    from swarm_hpc.autogen.client import ExpertTimeout
    from swarm_hpc.autogen.team import ParallelConversation

    out: dict[str, Any] = {}
    names = ["s1", "s2", "s3"]
    team = ParallelConversation([s.agent(n) for n in names], max_rounds=1)
    t0 = time.perf_counter()
    result = await team.run(task="Say something.")
    wall = time.perf_counter() - t0
    calls = [team._participants[i]._model_client.last_call for i in range(3)]
    out["parallel"] = {"wall_s": wall, "call_s": [c.seconds for c in calls], "answers": len(result.messages) - 1,
                       "ranks": [c.result.rank for c in calls]}
    # a hung expert: the raw client gives up after timeout + grace; in a team it is marked late and the round ends
    t0 = time.perf_counter()
    try:
        await s.client("hung", timeout=1.5).create(_msgs("hello"))
        out["hung_client"] = {"outcome": "answered"}
    except ExpertTimeout as e:
        out["hung_client"] = {"outcome": "timeout", "error": str(e), "s": time.perf_counter() - t0}
    team = ParallelConversation([s.agent("s1", timeout=4.0), s.agent("hung", timeout=1.5, on_failure="empty")],
                                termination_condition=MaxMessageTermination(10), max_rounds=1)
    t0 = time.perf_counter()
    result = await team.run(task="Say something.")
    hung = team._participants[1]._model_client.last_call
    out["hung_team"] = {"s": time.perf_counter() - t0, "messages": [(m.source, m.content) for m in result.messages],
                        "hung_status": hung.status, "stop_reason": result.stop_reason}
    await asyncio.sleep(0.5)
    s.exchange.pump()
    out["stale_replies"] = s.exchange.stale
    out["unresponsive"] = s.exchange.unresponsive()
    return out


async def switching(s: ExpertSession) -> dict[str, Any]:
    """Requests alternate between models on one expert rank: who answered, what the switches cost."""
    out: dict[str, Any] = {"pid": [i.pid for i in s.infos if i.expert == "switcher"][0], "turns": []}
    Path(os.environ["SCENARIO_PIDS"]).write_text(json.dumps([i.pid for i in s.infos]))
    client = s.client("switcher", timeout=120.0)
    for model in os.environ["SCENARIO_MODELS"].split(","):
        t0 = time.perf_counter()
        res = await client.create(_msgs("What is 12 times 3?", "You are a careful calculator."),
                                  extra_create_args={"model": model})
        call = client.last_call
        out["turns"].append({"asked": model, "content": res.content, "call_s": time.perf_counter() - t0,
                             "completion_tokens": res.usage.completion_tokens,
                             "info": {"model": call.result.generation.model, "switch": call.result.generation.switch}})
    return out


SCENARIOS = {f.__name__: f for f in (client_basics, team_rounds, cancel_round, concurrency, switching)}


def main() -> int:
    name, spec, out_path = sys.argv[1:4]
    session = serve_experts(spec)
    if session is None:
        return 0
    try:
        result = asyncio.run(SCENARIOS[name](session))
    finally:
        t0 = time.perf_counter()
        delivered = session.close()
    result["close"] = {"delivered": delivered, "s": time.perf_counter() - t0}
    Path(out_path).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
