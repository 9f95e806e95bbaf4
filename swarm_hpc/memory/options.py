"""What an expert needs to know of the spec's `[memory]` table (core/spec.py: MemorySpec), as a plain value."""

from __future__ import annotations

from dataclasses import dataclass

DROP_OLDEST, COMPRESS, BLACKBOARD = "drop-oldest", "compress", "blackboard"


@dataclass(frozen=True)
class ExpertMemory:
    policy: str = DROP_OLDEST
    summary_tokens: int = 96
    facts_tokens: int = 160
    remind_facts: int = 2               # key facts restated beside the newest message (compress.py)
    n_ctx_max: int | None = None        # None: the context keeps its spec's n_ctx
    budget_mb: float | None = None      # the KV cache's budget; None: this rank's share of the job's memory

    @property
    def compresses(self) -> bool:
        return self.policy in (COMPRESS, BLACKBOARD)
