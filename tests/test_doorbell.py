"""The doorbell that wakes a waiting rank (swarm_hpc/doorbell.py), in one process: two doorbells of one job
ring each other over UDP; the handshake that finds their addresses (`connect`) runs in every MPI test, whose
summaries say how each rank waited."""

from __future__ import annotations

import asyncio
import time

import pytest

from swarm_hpc.mpi import doorbell
from swarm_hpc.mpi.doorbell import MAX_SLEEP, POLL_SECONDS, Doorbell, local_ipv4


@pytest.fixture
def pair():
    """Rank 0's and rank 1's doorbells, introduced to each other as `connect` would (loopback)."""
    a, b = Doorbell(b"job-key1", 0), Doorbell(b"job-key1", 1)
    a.peers, b.peers = {1: b.addresses[0]}, {0: a.addresses[0]}
    a.rung_by, b.rung_by = {1}, {0}
    yield a, b
    a.close()
    b.close()


def test_addresses_start_with_loopback():
    assert local_ipv4()[0] == "127.0.0.1"
    bell = Doorbell(b"k" * 8, 0)
    assert bell.mode == "doorbell" and bell.addresses[0][0] == "127.0.0.1" and bell.addresses[0][1] > 0
    bell.close()


def test_a_ring_wakes_the_sleeper_and_is_owed_its_message(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(doorbell, "MAX_SLEEP", 30.0)
    assert b.timeout(None, waiting_for=[0]) == 30.0  # nothing owed, rank 0 can ring: sleep long
    a.ring(1)
    t0 = time.monotonic()
    b.sleep(time.monotonic() + 30, waiting_for=[0])
    assert time.monotonic() - t0 < 10  # woken by the ring, not by the 30 s timeout
    # until b takes the message the ring announced, it probes (the ring may have overtaken the message)
    assert b.must_probe(waiting_for=[0])
    b.took(0)
    assert not b.must_probe(waiting_for=[0])


def test_an_owed_ring_is_forgotten_after_a_while(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(doorbell, "OVERTAKE_SECONDS", 0.05)
    a.ring(1)
    b.sleep(time.monotonic() + 1)
    assert b.must_probe()
    time.sleep(0.1)
    assert not b.must_probe()  # its message was taken before the ring was read: no probing forever


def test_when_a_rank_probes_instead_of_sleeping(pair):
    a, _ = pair
    assert a.timeout(None, waiting_for=[1]) == MAX_SLEEP
    assert a.timeout(None, waiting_for=[1, 2]) == POLL_SECONDS        # rank 2 cannot ring rank 0
    assert a.timeout(None, waiting_for=[1], busy=True) == POLL_SECONDS  # its own send is still in flight
    assert a.timeout(time.monotonic() - 1) == 0.0                      # the deadline has passed


def test_rings_of_another_job_or_rank_are_ignored(pair):
    a, b = pair
    stranger = Doorbell(b"otherjob", 0)
    stranger._send(b.addresses[0], 1)  # right rank, wrong job
    a._send(b.addresses[0], 2)         # right job, meant for rank 2
    b.sleep(time.monotonic() + 0.2)
    assert not b._owed
    stranger.close()


def test_wake_self_owes_nothing(pair):
    a, _ = pair
    a.wake_self()
    a.sleep(time.monotonic() + 1)
    assert not a.must_probe(waiting_for=[1])


def test_sleep_async_wakes_on_a_ring(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(doorbell, "MAX_SLEEP", 30.0)

    async def main() -> float:
        asyncio.get_running_loop().call_later(0.05, a.ring, 1)
        t0 = time.monotonic()
        await b.sleep_async(None, waiting_for=[0])
        return time.monotonic() - t0

    assert asyncio.run(main()) < 10
    assert 0 in b._owed


def test_poll_mode_has_no_socket(monkeypatch):
    monkeypatch.setenv("SWARM_HPC_WAKEUP", "poll")
    assert doorbell.wakeup_mode() == "poll"
    bell = Doorbell(b"k" * 8, 0, enabled=doorbell.wakeup_mode() == "doorbell")
    assert bell.mode == "poll" and bell.timeout(None) == POLL_SECONDS and not bell.both_ways([1])
    bell.ring(1)      # nothing to ring: no error
    bell.wake_self()
    bell.sleep(time.monotonic() + 1)
