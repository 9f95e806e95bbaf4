"""The AutoGen AgentChat engine: the spec's experts as AgentChat agents.

- client.py: `MPIExpertClient`, an `autogen_core.models.ChatCompletionClient` whose calls a Requester answers
  (on rank 0: swarm_hpc/mpi/exchange.py's Exchange, which sends them to the expert ranks);
- team.py: `ParallelConversation`, an AgentChat team in which every agent answers each round at the same time
  and sees all answers of the round before;
- runner.py: what rank 0 runs for a spec with `engine = "autogen"` (the native engine's run directory).
Expert ranks for your own AutoGen script: swarm_hpc/mpi/session.py, `serve_experts`.

Needs autogen-agentchat and autogen-core (pinned in pyproject.toml); imported only when used.
"""
