"""The conversation layer's rules, in milliseconds: rank 0's Exchange and the expert ranks' serve() over an
in-process channel (tests/fake_channel.py), with scripted experts. The same code runs on real MPI ranks in
test_mpi_swarm.py and test_autogen.py."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fake_channel import Hub, ScriptedExpert, ScriptedGroup

from swarm_hpc.core.dialogue import Turn
from swarm_hpc.core.turns import TurnResult
from swarm_hpc.mpi import channel as channel_module
from swarm_hpc.mpi import exchange as exchange_module
from swarm_hpc.mpi.channel import Backoff
from swarm_hpc.mpi.exchange import Exchange, ExpertTimeout
from swarm_hpc.mpi.expert_loop import serve, serve_batch
from swarm_hpc.mpi.protocol import CancelTurn, Stop, TurnRequest, TurnSkipped


@pytest.fixture(autouse=True)
def short_grace(monkeypatch):
    monkeypatch.setattr(exchange_module, "grace_seconds", lambda timeout: 0.1)


class Swarm:
    """Rank 0's Exchange and one serving thread per expert rank; `local`: the expert rank 0 hosts."""

    def __init__(self, experts: list[ScriptedExpert], local: ScriptedExpert | None = None):
        first = 0 if local else 1
        everyone = ([local] if local else []) + experts
        self.hub = Hub(len(experts) + 1)
        self.where = {e.name: first + i for i, e in enumerate(everyone)}
        self.threads = [threading.Thread(target=serve, args=(self.hub.channel(self.where[e.name]), e), daemon=True)
                        for e in experts]
        for t in self.threads:
            t.start()
        self.exchange = Exchange(self.hub.channel(0), self.where, local)

    def close(self) -> None:
        assert self.exchange.stop(wait=2)
        for t in self.threads:
            t.join(2)
            assert not t.is_alive(), "an expert rank did not stop"


def turns(*names: str) -> list[Turn]:
    return [Turn(n, [{"role": "user", "content": f"hi {n}"}]) for n in names]


def test_a_step_runs_every_turn_and_reports_each_result_as_it_arrives():
    s = Swarm([ScriptedExpert("a", "A", 0.05), ScriptedExpert("b", "B", 0.01)], local=ScriptedExpert("z", "Z", 0.03))
    arrived: list[str] = []
    res = s.exchange.run_step(turns("z", "a", "b"), timeout=5, on_result=lambda r: arrived.append(r.expert))
    assert {n: r.generation.content for n, r in res.items()} == {"z": "Z", "a": "A", "b": "B"}
    assert res["z"].rank == 0 and res["a"].rank == 1 and res["b"].rank == 2
    assert arrived == ["b", "z", "a"]  # in the order they came, not the order asked
    assert not s.exchange.calls and s.exchange.stale == 0
    s.close()


def test_a_late_expert_is_given_up_cancelled_on_its_rank_and_its_reply_dropped():
    slow = ScriptedExpert("slow", "late words", 0.5, keeps_time=False)
    s = Swarm([ScriptedExpert("a", "A"), slow])
    t0 = time.monotonic()
    res = s.exchange.run_step(turns("a", "slow"), timeout=0.05)
    assert set(res) == {"a"} and time.monotonic() - t0 < 0.4  # deadline 0.05 s + grace 0.1 s
    assert [(m.id, dest) for _, dest, m in s.hub.sent if isinstance(m, CancelTurn)] == [(2, 2)]
    # the rank drops the turn at once; its reply arrives later and is counted stale, not taken for the next step
    res2 = s.exchange.run_step(turns("a", "slow"), timeout=5)
    assert res2["slow"].generation.content == "late words" and res2["slow"].id == 4
    assert s.exchange.stale == 1 and slow.finish == ["cancelled", "stop"]
    s.close()


def test_a_hung_expert_never_holds_up_rank_0():
    hung = ScriptedExpert("hung", hang=True)
    s = Swarm([ScriptedExpert("a", "A"), hung])
    t0 = time.monotonic()
    for _ in range(3):
        assert set(s.exchange.run_step(turns("a", "hung"), timeout=0.05)) == {"a"}
    assert time.monotonic() - t0 < 1.0
    assert s.exchange.unresponsive() == [2]  # it owes replies: stop() will not wait long for it
    hung.release.set()  # it comes back: its old replies are stale, newer turns were skipped or cancelled
    s.close()
    assert s.exchange.stale <= 3


def test_a_rank_that_answers_its_given_up_turn_is_responsive_again():
    s = Swarm([ScriptedExpert("a", "A"), ScriptedExpert("slow", "late", 0.3, keeps_time=False)])
    assert set(s.exchange.run_step(turns("a", "slow"), timeout=0.05)) == {"a"}
    assert s.exchange.unresponsive() == [2]
    time.sleep(0.1)
    s.exchange.pump()  # the cancelled turn's reply: stale, and the rank is in good standing again
    assert s.exchange.stale == 1 and s.exchange.unresponsive() == []
    s.close()


def test_an_expert_rank_answers_only_the_newest_turn_and_skips_cancelled_ones():
    hub = Hub(2)
    e = ScriptedExpert("e", "E")
    rank0 = hub.channel(0)

    def queue_then_serve(*messages) -> list[str]:
        for m in messages:
            rank0.send(m, 1)
        before = len(e.turns)
        t = threading.Thread(target=serve, args=(hub.channel(1), e))
        t.start()
        time.sleep(0.1)
        rank0.send(Stop(), 1)
        t.join(2)
        assert not t.is_alive()
        return [m[0]["content"] for m in e.turns[before:]]

    def turn(i: int) -> TurnRequest:
        return TurnRequest(i, "e", [{"role": "user", "content": str(i)}], 5)

    # turns 1 and 2 were closed by rank 0 when 3 was sent: only the newest is answered
    assert queue_then_serve(turn(1), turn(2), turn(3)) == ["3"]
    # a turn cancelled before it started is never answered
    assert queue_then_serve(turn(4), CancelTurn(4)) == []
    replies = [m for _, dest, m in hub.sent if dest == 0]
    assert [r.id for r in replies if isinstance(r, TurnResult)] == [3]
    assert [r.id for r in replies if isinstance(r, TurnSkipped)] == [1, 2, 4]  # every turn gets one reply


def test_requests_stream_time_out_and_cancel_from_asyncio():
    hung = ScriptedExpert("hung", hang=True)
    s = Swarm([ScriptedExpert("fast", "Paris is the capital.", 0.02), hung], local=ScriptedExpert("local", "Local text.", 0.02))
    ex = s.exchange

    async def scenario() -> dict:
        chunks: list[str] = []
        r = await ex.request("fast", [{"role": "user", "content": "q"}], timeout=5, on_chunk=chunks.append)
        local_chunks: list[str] = []
        loc = await ex.request("local", [{"role": "user", "content": "q"}], timeout=5, on_chunk=local_chunks.append)
        t0 = time.monotonic()
        with pytest.raises(ExpertTimeout, match="hung"):
            await ex.request("hung", [{"role": "user", "content": "q"}], timeout=0.05)
        timed_out = time.monotonic() - t0
        task = asyncio.ensure_future(ex.request("fast", [{"role": "user", "content": "q"}], timeout=5))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # two requests to one expert run one after another
        both = await asyncio.gather(*(ex.request("fast", [{"role": "user", "content": str(i)}], timeout=5)
                                      for i in range(2)))
        return {"r": r, "chunks": chunks, "loc": loc, "local_chunks": local_chunks, "timed_out": timed_out,
                "both": both}

    out = asyncio.run(scenario())
    assert out["r"].generation.content == "".join(out["chunks"]) == "Paris is the capital." and len(out["chunks"]) > 1
    assert out["loc"].rank == 0 and "".join(out["local_chunks"]) == "Local text."
    assert out["timed_out"] < 0.5
    assert [b.generation.content for b in out["both"]] == ["Paris is the capital."] * 2
    assert out["both"][0].id < out["both"][1].id
    cancelled = [m.id for _, _, m in s.hub.sent if isinstance(m, CancelTurn)]
    assert len(cancelled) == 2  # the timed-out turn and the cancelled one
    hung.release.set()
    s.close()


def test_stop_reaches_every_rank_and_closes_the_exchange():
    s = Swarm([ScriptedExpert("a"), ScriptedExpert("b")])
    s.close()
    assert [dest for _, dest, m in s.hub.sent if isinstance(m, Stop)] == [1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        s.exchange.submit("a", [], timeout=1)


def test_stop_waits_for_a_cancelled_turns_reply_and_reports_a_rank_that_never_sends_it(monkeypatch):
    """A Stop send completes at once (small sends are eager), so delivery alone does not say a rank is alive:
    stop() is True only once every rank that owed a reply has sent it, and False for a hung rank."""
    monkeypatch.setattr(exchange_module, "HUNG_STOP_WAIT", 0.5)
    s = Swarm([ScriptedExpert("a", "A"), ScriptedExpert("slow", "late", 0.3, keeps_time=False)])
    assert set(s.exchange.run_step(turns("a", "slow"), timeout=0.05)) == {"a"}
    assert s.exchange.unresponsive() == [2]
    assert s.exchange.stop(wait=5)  # the reply comes about 0.15 s later: taken, stale, and the rank stops
    assert s.exchange.stale == 1 and s.exchange.unresponsive() == []

    hung = ScriptedExpert("hung", hang=True)
    s = Swarm([ScriptedExpert("a", "A"), hung])
    assert set(s.exchange.run_step(turns("a", "hung"), timeout=0.05)) == {"a"}
    t0 = time.monotonic()
    assert not s.exchange.stop(wait=5)
    assert 0.4 < time.monotonic() - t0 < 1.5  # HUNG_STOP_WAIT, not `wait`
    hung.release.set()


def test_a_rank_that_hosts_a_group_answers_each_member_on_its_own():
    """serve_batch(): the members' turns run together and each comes back by itself; a member's newer turn
    replaces the one it had in flight (TurnSkipped for that one), a cancel ends one member's turn only, and Stop
    reports what was still running: every turn gets exactly one reply."""
    hub = Hub(2)
    group = ScriptedGroup(["b", "c", "d"], steps=5)
    t = threading.Thread(target=serve_batch, args=(hub.channel(1), group), daemon=True)
    t.start()
    ex = Exchange(hub.channel(0), {"b": 1, "c": 1, "d": 1})
    res = ex.run_step(turns("b", "c", "d"), timeout=5)
    assert {n: r.generation.content for n, r in res.items()} == {n: f"ok from {n}" for n in "bcd"}
    assert {r.rank for r in res.values()} == {1}
    # a cancel reaches one member only
    slow = ScriptedGroup(["b", "c"], steps=10_000)
    hub2 = Hub(2)
    t2 = threading.Thread(target=serve_batch, args=(hub2.channel(1), slow), daemon=True)
    t2.start()
    rank0 = hub2.channel(0)
    rank0.send(TurnRequest(1, "b", [], 5), 1)
    rank0.send(TurnRequest(2, "c", [], 5), 1)
    rank0.send(TurnRequest(3, "b", [], 5), 1)   # b's newer turn: turn 1 is dropped unanswered
    time.sleep(0.1)
    rank0.send(CancelTurn(2), 1)
    time.sleep(0.1)
    rank0.send(Stop(), 1)
    t2.join(2)
    assert not t2.is_alive()
    replies = {m.id: m for _, dest, m in hub2.sent if dest == 0}
    assert isinstance(replies[1], TurnSkipped)
    assert isinstance(replies[2], TurnResult) and replies[2].generation.finish_reason == "cancelled"
    assert isinstance(replies[3], TurnSkipped)   # still running at Stop
    assert sorted(replies) == [1, 2, 3]
    assert ex.stop(wait=2)
    t.join(2)
    assert not t.is_alive()


def test_backoff_sleeps_nothing_after_a_message_then_doubles_up_to_its_cap():
    b = Backoff(cap=1.024)
    assert [b.next() for _ in range(4)] == [0.0, 0.001, 0.002, 0.004]
    for _ in range(20):
        b.next()
    assert b.next() == 1.024
    b.reset()
    assert b.next() == 0.0
    assert b.next(until=time.monotonic() - 1) == 0.0  # never past `until`


def test_wait_max_is_one_setting(monkeypatch):
    monkeypatch.setenv("SWARM_HPC_WAIT_MAX", "0.5")
    assert Backoff().cap == 0.5
    monkeypatch.delenv("SWARM_HPC_WAIT_MAX")
    assert Backoff().cap == channel_module.DEFAULT_WAIT_MAX


def test_a_first_ring_that_comes_late_still_counts():
    """Start-up's check that peers can ring this rank: a ring that arrives while it waits is counted."""
    import socket

    from swarm_hpc.doorbell import _RING, Doorbell

    ch = Doorbell.__new__(Doorbell)  # without a communicator
    ch._bell = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ch._bell.bind(("127.0.0.1", 0))
    ch._bell.setblocking(False)
    port = ch._bell.getsockname()[1]

    def ring_late() -> None:
        time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(_RING.pack(1), ("127.0.0.1", port))

    threading.Thread(target=ring_late).start()
    assert ch._heard({1})
    assert not ch._heard({2})  # nobody rings for rank 2: after HELLO_SECONDS, no
    ch.close()
