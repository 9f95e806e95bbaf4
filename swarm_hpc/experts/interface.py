"""The expert interface: what every kind of expert (plain llama.cpp, model-switching, and the batched and
memory-holding experts to come) offers the MPI layer. One method answers one turn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from swarm_hpc.core.passages import Passage
from swarm_hpc.core.turns import Generation, Sampling

Messages = list[dict[str, str]]


class Expert(Protocol):
    name: str
    load_seconds: float      # how long the expert took to load, for the start-up report

    @property
    def model_path(self) -> Path:
        """The model file the expert loaded first."""
        ...

    def answer(self, messages: Messages, *, deadline: float | None = None, model: str | None = None,
               on_text: Callable[[str], None] | None = None,
               cancelled: Callable[[], bool] | None = None, sampling: Sampling | None = None,
               passages: Sequence[Passage] = ()) -> Generation:
        """Answer a chat. Stop at the end of the answer, the token budget, `deadline` (time.monotonic()) or as
        soon as `cancelled()` says so (finish_reason "deadline" / "cancelled"). `model`: which of the
        expert's models answers (None: its first). `sampling`: this turn's temperature and seed (None: the
        expert's own). `on_text` gets the answer as it is generated: the pieces
        add up to the final `content`. `passages`: retrieved for this expert, best first; it reads those that fit
        its context (swarm_hpc/core/passages.py) and says which in `Generation.passages`. A failed turn is a Generation with finish_reason "error", never an
        exception."""
        ...
