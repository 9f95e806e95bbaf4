"""Rank 0's rounds: send the global model, gather the clients' updates until the deadline, check them, aggregate,
evaluate on the held-out test set, record, checkpoint.

Why point-to-point and not Bcast/Gather inside a round: a collective completes only when every rank has joined
it, so one slow or hung client would hold the server (and, in a tree algorithm, other clients) past any deadline,
and a collective cannot be cancelled; non-blocking collectives (Ibcast, Igather, Ibarrier) cannot be cancelled
either, and a client that missed one round would have to join it later, in order, before the next. So the server
posts, per client, a non-blocking `Isend` of the flat float64 model and an `Irecv` of the client's flat reply
(header + parameters) with the round in the tag; it tests them, sleeping in between (no busy-poll), until all
have come or the round's deadline has passed, then `Cancel`s the receives still open: those clients are left
out of the round. A late reply arrives later under an old round's tag; the server drains such messages (from
every client, in the order they were sent) while it waits in later rounds, and discards them. The job-wide
steps where every rank must be there anyway use collectives on numpy buffers (rank.py: Gather of the shard
sizes and parameter counts, Bcast of the starting model).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.doorbell import Backoff, Doorbell, wait_max
from swarm_hpc.fed import model, record, wire
from swarm_hpc.fed.data import Shard
from swarm_hpc.fed.spec import FedSpec
from swarm_hpc.fed.strategy import Strategy, check_update

COMPLETE, STOPPED, CANCELLED, HUNG = "complete", "stopped", "cancelled", "hung"


class RoundGivenUp(Exception):
    """The job was cancelled while a round waited for its updates: the round is not recorded."""


@dataclass
class Server:
    comm: Any
    spec: FedSpec
    run_dir: Path
    shapes: list[tuple[int, ...]]
    test: Shard
    strategy: Strategy
    centralised_accuracy: float
    bell: Doorbell                 # rung by the clients when they send (it polls where it cannot be rung)
    say: Callable[[str], None] = print
    outbox: list[tuple[np.ndarray, list[Any]]] = field(default_factory=list)
    stale: int = 0
    # what signals asked (rank.py's handlers append): CANCELLED (SIGTERM, scancel) gives up the round in flight,
    # STOPPED (SIGUSR1, the time limit is near) ends the job after it; either way the checkpoint is the last round
    asked: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    @property
    def clients(self) -> list[int]:
        return list(range(1, self.comm.Get_size()))

    def run(self, params: np.ndarray, done: int) -> tuple[np.ndarray, str]:
        """Rounds done+1 .. spec.rounds, unless a signal asks to end sooner; the final model and the run's status:
        COMPLETE, STOPPED or CANCELLED, or HUNG when a client never said goodbye (the caller then aborts)."""
        for r in range(done + 1, self.spec.rounds + 1):
            if self.asked:
                break
            try:
                params, rec = self.play_round(r, params)
            except RoundGivenUp:
                break
            record.append_round(self.run_dir, rec)
            record.save_checkpoint(self.run_dir, r, params, self.strategy.state())
            self.write_summary("running")
            self.say(self.line(rec))
        status = self.asked[0] if self.asked else COMPLETE
        if CANCELLED in self.asked:  # the clients are being killed too: no goodbyes to wait for
            return params, status
        return params, status if self.stop_clients() else HUNG

    # --- one round -----------------------------------------------------------------------------------------

    def play_round(self, r: int, params: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        from mpi4py import MPI

        t0 = time.monotonic()
        out = params.copy()  # kept until every Isend of it has completed
        self.outbox.append((out, [self.comm.Isend([out, MPI.DOUBLE], dest=k, tag=wire.model_tag(r))
                                  for k in self.clients]))
        self.ring_all()
        bufs = {k: wire.reply(self.n_params) for k in self.clients}
        pending = {k: self.comm.Irecv([bufs[k], MPI.DOUBLE], source=k, tag=wire.model_tag(r)) for k in self.clients}
        arrived: dict[int, float] = {}
        deadline = t0 + self.spec.round_timeout
        backoff = self.backoff()
        while pending and time.monotonic() < deadline and CANCELLED not in self.asked:
            came = [k for k, req in pending.items() if req.Test()]
            for k in came:
                arrived[k] = time.monotonic() - t0
                del pending[k]
            self.drain(functools.partial(_older_than, r))
            self.reap_outbox()
            if came:
                backoff.reset()
            elif pending:
                self.sleep(backoff, deadline)
        if CANCELLED in self.asked:
            for req in pending.values():
                req.Cancel()
                req.Wait()
            raise RoundGivenUp(r)
        left_out: dict[str, str] = {}
        for k, req in pending.items():
            req.Cancel()
            st = MPI.Status()
            req.Wait(st)
            if st.Is_cancelled():
                left_out[str(k)] = f"missed the deadline ({self.spec.round_timeout:g} s)"
            else:  # it came just as the deadline passed
                arrived[k] = time.monotonic() - t0
        gathered_s = time.monotonic() - t0
        updates: list[tuple[np.ndarray, int]] = []
        rejected: dict[str, str] = {}
        per_client: dict[str, dict[str, Any]] = {}
        took_part: list[int] = []
        compute = 0.0
        for k in sorted(arrived):
            head, vec = bufs[k][:wire.HEADER], bufs[k][wire.HEADER:]
            status = int(head[wire.STATUS])
            if status != wire.OK:
                text = self.error_text(k, r)
                if status == wire.BAD_SHAPE:
                    rejected[str(k)] = text
                else:
                    left_out[str(k)] = f"raised {text}"
                continue
            why = check_update(vec, self.n_params, float(head[wire.NUM_EXAMPLES]))
            compute = max(compute, float(head[wire.FIT_SECONDS]))
            per_client[str(k)] = {"accuracy": head[wire.EVAL_ACC], "loss": head[wire.EVAL_LOSS],
                                  "examples": int(head[wire.EVAL_N]), "train_loss": head[wire.FIT_LOSS],
                                  "train_accuracy": head[wire.FIT_ACC], "fit_s": round(float(head[wire.FIT_SECONDS]), 4),
                                  "arrived_s": round(arrived[k], 4)}
            if why:
                rejected[str(k)] = why
                continue
            updates.append((vec.copy(), int(head[wire.NUM_EXAMPLES])))
            took_part.append(k)
        new = self.strategy.aggregate(params, updates)
        loss, acc = model.loss_and_accuracy(model.unflatten(new, self.shapes), self.test.x, self.test.y)
        sent = self.n_params * 8 * len(self.clients)
        received = (wire.HEADER + self.n_params) * 8 * len(arrived)
        for rec in per_client.values():  # JSON has no NaN: a client that reports none gets null
            for key, v in rec.items():
                rec[key] = None if isinstance(v, float) and not np.isfinite(v) else v
        return new, {
            "round": r, "accuracy": acc, "loss": loss, "clients": took_part,
            "examples": sum(n for _, n in updates), "left_out": left_out, "rejected": rejected,
            "per_client": per_client, "bytes": sent + received, "bytes_sent": sent, "bytes_received": received,
            "seconds": round(time.monotonic() - t0, 4),
            # the wait for the updates less the slowest client's own evaluate+fit: an estimate of the time
            # spent moving parameters (on one node: through shared memory)
            "comm_ms": round(max(0.0, gathered_s - compute) * 1000, 3) if not pending else None,
            "stale_dropped": self.stale,
        }

    def error_text(self, k: int, r: int) -> str:
        """The error a client sent before its failed reply (it is there already: sent first, same pair)."""
        from mpi4py import MPI

        st = MPI.Status()
        deadline = time.monotonic() + 5
        while not self.comm.Iprobe(source=k, tag=wire.error_tag(r), status=st):
            if time.monotonic() > deadline:
                return "(no error text)"
            time.sleep(0.001)
        buf = np.empty(st.Get_count(MPI.BYTE), np.uint8)
        self.comm.Recv([buf, MPI.BYTE], source=k, tag=wire.error_tag(r))
        return buf.tobytes().decode("utf-8", "replace")

    def drain(self, is_stale: Callable[[int], bool]) -> None:
        """Receive and discard each client's stale messages (late replies of earlier rounds, and their error
        texts), so that a late client's send completes and nothing old is ever taken for new."""
        from mpi4py import MPI

        st = MPI.Status()
        for k in self.clients:
            while self.comm.Iprobe(source=k, tag=MPI.ANY_TAG, status=st) and is_stale(st.Get_tag()):
                buf = np.empty(st.Get_count(MPI.BYTE), np.uint8)
                self.comm.Recv([buf, MPI.BYTE], source=k, tag=st.Get_tag())
                self.stale += 1

    # --- waiting without spinning (swarm_hpc/doorbell.py) -----------------------------------------------------------

    def ring_all(self) -> None:
        for k in self.clients:
            self.bell.ring(k)

    def backoff(self) -> Backoff:
        return Backoff(self.bell.cap)

    def sleep(self, backoff: Backoff, deadline: float) -> None:
        """One back-off step, cut short by a client's ring; never long while a send of the model is in flight
        (Open MPI moves a large message only while its sender calls into MPI)."""
        seconds = backoff.next(deadline)
        if self.outbox:
            seconds = min(seconds, wait_max())
        if self.bell.wait(seconds):
            backoff.reset()

    def reap_outbox(self) -> None:
        from mpi4py import MPI

        self.outbox = [(buf, reqs) for buf, reqs in self.outbox if not MPI.Request.Testall(reqs)]

    # --- the end -----------------------------------------------------------------------------------------------

    def stop_clients(self) -> bool:
        """STOP to every client, then their BYE; a client still busy (a slow fit) has the round timeout and 2 s
        to say it. False when one never did (hung): the caller then ends the job with MPI_Abort."""
        from mpi4py import MPI

        one = np.zeros(1, np.float64)
        self.outbox.append((one, [self.comm.Isend([one, MPI.DOUBLE], dest=k, tag=wire.STOP) for k in self.clients]))
        self.ring_all()
        byes = {k: np.zeros(1, np.float64) for k in self.clients}
        pending = {k: self.comm.Irecv([byes[k], MPI.DOUBLE], source=k, tag=wire.BYE) for k in self.clients}
        deadline = time.monotonic() + self.spec.round_timeout + 2
        backoff = self.backoff()
        while pending and time.monotonic() < deadline:
            for k in [k for k, req in pending.items() if req.Test()]:
                del pending[k]
            self.drain(lambda tag: tag >= wire.model_tag(1))
            self.reap_outbox()
            if pending:
                self.sleep(backoff, deadline)
        for req in pending.values():
            req.Cancel()
            req.Wait()
        if pending:
            self.say(f"note: client rank(s) {', '.join(map(str, sorted(pending)))} did not stop in time; ending the job")
        return not pending

    # --- output ------------------------------------------------------------------------------------------------

    def write_summary(self, status: str) -> None:
        record.write_summary(self.run_dir, summarize(self.spec, record.read_rounds(self.run_dir),
                                                     self.centralised_accuracy, status))

    def line(self, rec: dict[str, Any]) -> str:
        out = (f"round {rec['round']}/{self.spec.rounds}  accuracy {rec['accuracy']:.4f}  loss {rec['loss']:.4f}  "
               f"clients {len(rec['clients'])}/{len(self.clients)}  {rec['bytes'] / 1000:.1f} kB  {rec['seconds']:.3f} s")
        for k, why in {**rec["left_out"], **rec["rejected"]}.items():
            out += f"\n  client {k} left out: {why}"
        return out


def _older_than(r: int, tag: int) -> bool:
    return tag >= wire.model_tag(1) and wire.round_of(tag) < r


def summarize(spec: FedSpec, rounds: list[dict[str, Any]], central: float, status: str) -> dict[str, Any]:
    """summary.json: what a run came to (also read by `swarm-hpc fed show`)."""
    reach = next((r["round"] for r in rounds if r["accuracy"] >= central - 0.01), None)
    comm = [r["comm_ms"] for r in rounds if r.get("comm_ms") is not None]
    return {
        "status": status, "name": spec.name, "strategy": spec.strategy, "model": spec.model,
        "clients": spec.clients, "dirichlet_alpha": spec.dirichlet_alpha, "rounds": spec.rounds,
        "rounds_done": len(rounds),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "centralised_accuracy": central,
        "rounds_to_centralised_within_1pt": reach,
        "bytes_per_round": round(float(np.mean([r["bytes"] for r in rounds])), 1) if rounds else None,
        "comm_ms_per_round": round(float(np.mean(comm)), 3) if comm else None,
        "left_out": sum(len(r["left_out"]) for r in rounds),
        "rejected": sum(len(r["rejected"]) for r in rounds),
    }
