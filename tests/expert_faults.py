"""Test-only fault injection and prompt recording, outside the product. conftest.py installs it on every rank
through the product's extension point, SWARM_HPC_EXPERT_WRAPPER=expert_faults:wrap; environment variables choose
what it does (a name's turns count from 1, a missing @turn means every turn, or from the first for STOP):

- SWARM_HPC_TEST_STALL=name:seconds[,...]: the expert sleeps that long before each turn; a cancel from rank 0
  ends the sleep (a slow expert that behaves);
- SWARM_HPC_TEST_STOP=name[@turn][,...]: the expert's rank stops itself with a real SIGSTOP when that turn
  arrives, and stays stopped (a hung process: it answers no cancel, no message, no signal but SIGKILL/SIGCONT);
- SWARM_HPC_TEST_HANG=name[@turn][,...]: the expert's turn never ends and ignores its cancel and deadline (a
  thread stuck in native code; for the expert rank 0 hosts, which a SIGSTOP would not single out);
- SWARM_HPC_TEST_SILENT=name[@turn][,...]: the expert says nothing in that turn (status "empty");
- SWARM_HPC_TEST_PROMPTS=DIR: every expert appends each prompt llama.cpp really evaluates (its tokens, turned
  back into text with the control tokens) to DIR/<name>.jsonl as {"turn", "prompt"}: what the model saw after
  the product's own trimming and templating, not what the strategy meant to send.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from swarm_hpc.core.turns import Generation


def stall_seconds(name: str) -> float:
    for part in os.environ.get("SWARM_HPC_TEST_STALL", "").split(","):
        expert, _, seconds = part.strip().partition(":")
        if expert == name and seconds:
            return float(seconds)
    return 0.0


def chosen(variable: str, name: str) -> int | None:
    """The turn named for `name` in `variable` (name[@turn],...): 0 for every turn, None when not named."""
    for part in os.environ.get(variable, "").split(","):
        expert, _, turn = part.strip().partition("@")
        if expert == name:
            return int(turn) if turn else 0
    return None


class Faulty:
    """An expert that misbehaves as the environment says, then answers as the wrapped one does."""

    def __init__(self, expert: Any):
        self.expert = expert
        self.name: str = expert.name
        self.turns = 0
        self.stall = stall_seconds(self.name)
        self.stop_at = chosen("SWARM_HPC_TEST_STOP", self.name)
        self.silent_at = chosen("SWARM_HPC_TEST_SILENT", self.name)
        self.hang_at = chosen("SWARM_HPC_TEST_HANG", self.name)
        prompts = os.environ.get("SWARM_HPC_TEST_PROMPTS")
        if prompts and hasattr(expert, "llm"):
            self._record_prompts(Path(prompts) / f"{self.name}.jsonl")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.expert, name)

    def _record_prompts(self, path: Path) -> None:
        llm = self.expert.llm
        complete = llm.create_completion

        def recording(prompt: Any, *args: Any, **kw: Any) -> Any:
            text = llm.detokenize(prompt, special=True).decode("utf-8", "replace") if isinstance(prompt, list) else prompt
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"turn": self.turns, "prompt": text}) + "\n")
            return complete(prompt, *args, **kw)

        llm.create_completion = recording

    def answer(self, messages: list[dict[str, str]], **kw: Any) -> Generation:
        self.turns += 1
        if self.stop_at is not None and self.turns >= self.stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)  # the whole rank, all its threads, until SIGCONT or SIGKILL
        while self.hang_at is not None and self.turns >= self.hang_at:
            time.sleep(3600)
        if self.silent_at is not None and self.silent_at in (0, self.turns):
            return Generation("", "stop")
        end = time.monotonic() + self.stall
        cancelled = kw.get("cancelled")
        while time.monotonic() < end:
            if cancelled is not None and cancelled():
                return Generation("", "cancelled", error="cancelled during the test stall")
            time.sleep(0.01)
        return self.expert.answer(messages, **kw)


def wrap(expert: Any) -> Any:
    names = [v for v in ("SWARM_HPC_TEST_STALL", "SWARM_HPC_TEST_STOP", "SWARM_HPC_TEST_HANG", "SWARM_HPC_TEST_SILENT",
                         "SWARM_HPC_TEST_PROMPTS") if os.environ.get(v)]
    return Faulty(expert) if names else expert
