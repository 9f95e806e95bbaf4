"""Expert ranks for your own AutoGen script: every rank calls `serve_experts(spec)`; ranks >= 1 load their
expert and answer requests until rank 0 closes the session (then they get None and should exit); rank 0 gets
an `ExpertSession` that makes model clients and agents for the spec's experts.

    # mpiexec -n 3 python my_team.py
    session = serve_experts("jobs/examples/autogen.toml")
    if session is None:          # an expert rank: it has served and is done
        sys.exit(0)
    with session:
        team = ParallelConversation([session.agent(n) for n in session.names], max_rounds=2)
        result = asyncio.run(team.run(task="..."))
"""

from __future__ import annotations

import atexit
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_hpc.autogen.client import MPIExpertClient
from swarm_hpc.autogen.runner import system_message
from swarm_hpc.core.spec import SwarmSpec, load_spec
from swarm_hpc.experts.models import expert_model
from swarm_hpc.mpi.exchange import Exchange
from swarm_hpc.mpi.expert_loop import serve, serve_batch
from swarm_hpc.mpi.protocol import RankInfo
from swarm_hpc.mpi.startup import StartupError, start_ranks


@dataclass
class ExpertSession:
    """Rank 0's handle on the expert ranks of a spec."""

    spec: SwarmSpec
    spec_dir: Path
    comm: Any
    where: dict[str, int]
    exchange: Exchange
    infos: list[RankInfo]
    _abort_registered: bool = False

    @property
    def names(self) -> list[str]:
        return self.spec.expert_names

    def client(self, name: str, **kw: Any) -> MPIExpertClient:
        """A model client for expert `name` (timeout, tokenizer and n_ctx from the spec unless given)."""
        e = self.spec.expert(name)
        if "tokenizer" not in kw:
            kw["tokenizer"] = expert_model(e, self.spec_dir, kw.get("model"))
        kw.setdefault("timeout", self.spec.round_timeout)
        kw.setdefault("n_ctx", e.n_ctx)
        return MPIExpertClient(self.exchange, name, **kw)

    def agent(self, name: str, *, stream: bool = False, **client_kw: Any) -> Any:
        """An AgentChat AssistantAgent for expert `name`: its persona as system message, its rank as model."""
        from autogen_agentchat.agents import AssistantAgent

        return AssistantAgent(name, model_client=self.client(name, **client_kw),
                              system_message=system_message(self.spec, name),
                              description=self.spec.expert(name).persona, model_client_stream=stream)

    def close(self) -> bool:
        """Tell the expert ranks to stop; True when every rank got the message. When one did not (a hung rank:
        Exchange.stop()), MPI_Finalize at exit would wait for it forever, so the job is aborted at exit instead,
        once the rest of this script has run."""
        if self.exchange.stop():
            return True
        if not self._abort_registered:
            self._abort_registered = True
            atexit.register(_abort_at_exit, self.comm, self.exchange.unresponsive())
        return False

    def __enter__(self) -> ExpertSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _abort_at_exit(comm: Any, ranks: list[int]) -> None:
    """atexit (runs before mpi4py's MPI_Finalize): end a job whose hung ranks would make Finalize wait forever."""
    print(f"swarm-hpc: warning: rank(s) {', '.join(map(str, ranks)) or '?'} did not stop; aborting the job",
          file=sys.stderr, flush=True)
    comm.Abort(0)


def serve_experts(spec: str | Path | SwarmSpec, spec_dir: str | Path | None = None, comm: Any = None) -> ExpertSession | None:
    """Call on every rank. Rank 0: the session. Ranks >= 1: serve until rank 0 closes it, then None."""
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD
    rank = comm.Get_rank()

    def load() -> tuple[SwarmSpec, Path]:
        if isinstance(spec, SwarmSpec):
            return spec, Path(spec_dir or ".")
        return load_spec(spec), Path(spec_dir or Path(spec).parent)

    try:
        s = start_ranks(comm, load)
    except StartupError as e:
        if rank == 0:
            raise RuntimeError(str(e)) from None
        return None
    if rank != 0:
        if s.group is not None:
            serve_batch(s.channel, s.group)
        else:
            serve(s.channel, s.expert)
        return None
    return ExpertSession(s.spec, s.spec_dir, comm, s.where, Exchange(s.channel, s.where, s.expert), s.infos)
