"""AutoGen AgentChat on top of the MPI layer: experts on MPI ranks as AgentChat agents.

- `MPIExpertClient` (client.py): an `autogen_core.models.ChatCompletionClient` whose calls go to an expert rank;
- `ParallelConversation` (team.py): an AgentChat team in which every agent answers each round at the same
  time and sees all answers of the round before;
- runner.py: what rank 0 runs for a spec with `engine = "autogen"` (same run directory as the native engine);
(Expert ranks for your own AutoGen script under mpiexec or srun: swarm_hpc/mpi/session.py, `serve_experts`.)

Needs autogen-agentchat and autogen-core (pinned in pyproject.toml); imported only when used.
"""

from __future__ import annotations

__all__ = ["MPIExpertClient", "ParallelConversation"]


def __getattr__(name: str):
    if name == "MPIExpertClient":
        from swarm_hpc.autogen.client import MPIExpertClient
        return MPIExpertClient
    if name == "ParallelConversation":
        from swarm_hpc.autogen.team import ParallelConversation
        return ParallelConversation
    raise AttributeError(name)
