"""Start-up, on every rank at once: rank 0 reads the spec and broadcasts it with the placement (expert -> rank),
every rank loads its expert at the same time, rank 0 gathers a RankInfo from each. When any of it fails, every
rank raises StartupError with the same one-line reason, so that all of them stop together."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_hpc.core.routing import Route, task_route
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.experts.factory import build_expert, build_group
from swarm_hpc.experts.group import ExpertGroup
from swarm_hpc.experts.interface import Expert
from swarm_hpc.mpi.channel import MpiChannel
from swarm_hpc.mpi.protocol import RankInfo, node_name


class StartupError(Exception):
    """Start-up failed (bad spec snapshot, too few ranks, an expert that cannot load); raised on every rank."""


@dataclass(frozen=True)
class Startup:
    spec: SwarmSpec
    spec_dir: Path
    where: dict[str, int]         # expert -> rank
    expert: Expert | None         # this rank's expert
    infos: list[RankInfo]         # every rank's RankInfo on rank 0; this rank's own elsewhere
    channel: MpiChannel
    group: ExpertGroup | None = None   # this rank's experts when it hosts several (decoded as one batch)
    route: Route | None = None    # the task's route (rank 0 chose it: keyword rules, or the learned router)


def placement(spec: SwarmSpec, size: int) -> dict[str, int]:
    """Expert -> rank: rank 0 hosts the first expert when the spec says so, the others get ranks 1, 2, ...; the
    experts of a group (SwarmSpec.rank_groups: one model, decoded as one batch) share theirs."""
    groups = spec.rank_groups()
    first = 0 if spec.rank0_hosts_expert else 1
    if len(groups) + first > size:
        raise ValueError(f"{len(spec.experts)} experts need {len(groups) + first} ranks, got {size}")
    return {name: first + i for i, group in enumerate(groups) for name in group}


def _load(spec: SwarmSpec, spec_dir: Path, names: list[str], rank: int,
          wakeup: str, route: Route) -> tuple[Expert | ExpertGroup | None, RankInfo]:
    base: dict[str, Any] = {"rank": rank, "node": node_name(), "pid": os.getpid(),
                            "expert": names[0] if names else None, "wakeup": wakeup,
                            "batch": tuple(names) if len(names) > 1 else ()}
    if not names:
        return None, RankInfo(**base, model_path=None, load_seconds=0.0)
    first = route.model if route.model and names[0] in route.experts else None  # the model the task is routed to
    hosted: Expert | ExpertGroup
    try:
        hosted = build_group(spec, names, spec_dir) if len(names) > 1 else build_expert(spec, names[0], spec_dir, first)
    except Exception as e:  # reported to rank 0, which stops the run with one clear line
        return None, RankInfo(**base, model_path=None, load_seconds=0.0, error=f"{type(e).__name__}: {e}")
    return hosted, RankInfo(**base, model_path=str(hosted.model_path), load_seconds=hosted.load_seconds)


def start_ranks(comm: Any, load: Callable[[], tuple[SwarmSpec, Path]]) -> Startup:
    """Run on every rank (`load` is called on rank 0 only: it reads the spec)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    setup: tuple[Any, ...] | None = None
    if rank == 0:
        try:
            spec, spec_dir = load()
            setup = ("ok", spec, spec_dir, placement(spec, size), choose_route(spec, spec_dir))
        except Exception as e:
            setup = ("error", str(e))
    setup = comm.bcast(setup, root=0)
    if setup[0] == "error":
        raise StartupError(setup[1])
    _, spec, spec_dir, where, route = setup
    channel = MpiChannel(comm)
    hosted, info = _load(spec, spec_dir, [n for n, r in where.items() if r == rank], rank, channel.wakeup, route)
    infos = comm.gather(info, root=0)
    failed = None
    if rank == 0:
        bad = [i for i in infos if i.error]
        if bad:
            failed = f"expert {bad[0].expert} on rank {bad[0].rank} ({bad[0].node}) could not load: {bad[0].error}"
    failed = comm.bcast(failed, root=0)
    if failed:
        channel.close()
        raise StartupError(failed)
    expert, group = (None, hosted) if isinstance(hosted, ExpertGroup) else (hosted, None)
    return Startup(spec, spec_dir, where, expert, infos if rank == 0 else [info], channel, group, route)


def choose_route(spec: SwarmSpec, spec_dir: Path) -> Route:
    """The task's route, once, on rank 0: with the learned router when the spec has one (its embedding model is
    loaded for this and let go)."""
    if spec.router is None:
        return task_route(spec)
    from swarm_hpc.fed.router import LearnedRouter

    learned = LearnedRouter(spec.router.model, spec_dir)
    try:
        return task_route(spec, learned)
    finally:
        learned.close()
