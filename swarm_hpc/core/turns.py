"""What one turn produced: an expert's `Generation`, and the `TurnResult` that carries it back to rank 0.

These are the values that cross every layer: an expert makes a Generation, the MPI layer carries it home as
a TurnResult, the recorder writes it to the transcript with `Generation.metrics()` (the one place the
per-reply metrics are built), and the strategies see it as a `Reply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swarm_hpc.core.passages import Given

FINISH_REASONS = ("stop", "length", "deadline", "cancelled", "error")


@dataclass(frozen=True)
class Sampling:
    """A turn's own sampling, instead of its expert's (self-consistency draws several answers from one expert;
    a request to `swarm-hpc serve` brings its own temperature and max_tokens)."""

    temperature: float
    seed: int
    max_tokens: int | None = None   # at most this many tokens (never more than the expert's own max_tokens)


@dataclass(frozen=True)
class Generation:
    """What one turn produced, with llama.cpp's own counts and timers."""

    content: str
    finish_reason: str            # one of FINISH_REASONS
    prompt_tokens: int = 0        # tokens in the prompt
    completion_tokens: int = 0    # tokens of the answer (a stop string's own tokens are not counted)
    prompt_eval_tokens: int = 0   # prompt tokens llama.cpp evaluated (the rest came from the KV cache)
    prompt_seconds: float = 0.0   # llama.cpp's prompt-processing time
    gen_seconds: float = 0.0      # llama.cpp's generation time
    seconds: float = 0.0          # wall time of the whole turn
    dropped_messages: int = 0     # old messages left out to fit n_ctx
    error: str | None = None
    model: str = ""               # the model that answered (its ref in the spec)
    switch: dict[str, Any] | None = None   # what serving this model cost an expert with several (switching.py)
    memory: dict[str, Any] | None = None   # what memory management did this turn: resizes, a fold (llama.py)
    passages: Given | None = None          # the retrieved passages in the prompt, and those cut (core/passages.py)

    @property
    def tok_s(self) -> float:
        return self.completion_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    def metrics(self) -> dict[str, Any]:
        """The transcript's per-reply numbers."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "prompt_eval_tokens": self.prompt_eval_tokens, "seconds": round(self.seconds, 4),
                "prompt_seconds": round(self.prompt_seconds, 4), "gen_seconds": round(self.gen_seconds, 4),
                "tok_s": round(self.tok_s, 2), "finish_reason": self.finish_reason,
                "dropped_messages": self.dropped_messages}


def failed(error: str, seconds: float = 0.0, model: str = "") -> Generation:
    """A turn that produced nothing, and why."""
    return Generation("", "error", seconds=seconds, error=error, model=model)


class ExpertTimeout(TimeoutError):
    """No reply from an expert within the turn's timeout plus the grace period."""


@dataclass(frozen=True)
class TurnResult:
    """A Generation back on rank 0: which turn (`id`), which expert, and where it ran."""

    id: int
    expert: str
    rank: int
    node: str
    generation: Generation
