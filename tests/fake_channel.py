"""An in-process stand-in for MPI at the edge of the unit tests: ranks are threads, a channel is a queue per
rank. It has the three methods of swarm_hpc.mpi.protocol.Channel, so the exchange's rules can be tested in
milliseconds; the real mpiexec/srun tests cover MpiChannel itself."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from swarm_hpc.core.turns import Generation


class Hub:
    def __init__(self, size: int):
        self.queues: dict[int, deque[tuple[int, Any]]] = {r: deque() for r in range(size)}
        self.lock = threading.Lock()
        self.sent: list[tuple[int, int, Any]] = []   # (source, dest, message), every message ever sent

    def channel(self, rank: int) -> FakeChannel:
        return FakeChannel(self, rank)


class FakeChannel:
    def __init__(self, hub: Hub, rank: int):
        self.hub = hub
        self.rank = rank
        self.size = len(hub.queues)

    def send(self, obj: Any, dest: int) -> None:
        with self.hub.lock:
            self.hub.queues[dest].append((self.rank, obj))
            self.hub.sent.append((self.rank, dest, obj))

    def receive(self, source: int | None = None, kind: type | None = None) -> Any | None:
        with self.hub.lock:
            q = self.hub.queues[self.rank]
            for i, (src, obj) in enumerate(q):
                if (source is None or src == source) and (kind is None or isinstance(obj, kind)):
                    del q[i]
                    return obj
        return None

    cap = 0.02

    def flush(self, wait: float) -> bool:
        return True

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return False

    def wake(self) -> None:
        pass


class ScriptedExpert:
    """Says `text` after `seconds` (in small steps, so a cancel or the deadline is noticed), streaming it in
    three pieces. `keeps_time=False`: ignores the deadline (a cancel still stops it); `hang`: ignores both (a
    turn that never ends by itself until `release` is set)."""

    def __init__(self, name: str, text: str = "ok", seconds: float = 0.0, hang: bool = False,
                 keeps_time: bool = True):
        self.name = name
        self.keeps_time = keeps_time
        self.text = text
        self.seconds = seconds
        self.hang = hang
        self.release = threading.Event()
        self.load_seconds = 0.0
        self.turns: list[list[dict[str, str]]] = []
        self.finish: list[str] = []

    @property
    def model_path(self) -> str:
        return f"/models/{self.name}.gguf"

    def answer(self, messages: list[dict[str, str]], *, deadline: float | None = None, model: str | None = None,
               on_text: Any = None, cancelled: Any = None, sampling: Any = None, passages: Any = ()) -> Generation:
        self.turns.append(messages)
        end = time.monotonic() + self.seconds
        reason = "stop"
        while time.monotonic() < end or (self.hang and not self.release.is_set()):
            if not self.hang and cancelled is not None and cancelled():
                reason = "cancelled"
                break
            if not self.hang and self.keeps_time and deadline is not None and time.monotonic() >= deadline:
                reason = "deadline"
                break
            time.sleep(0.002)
        if on_text is not None and reason == "stop":
            third = max(1, len(self.text) // 3)
            for i in range(0, len(self.text), third):
                on_text(self.text[i:i + third])
        self.finish.append(reason)
        return Generation(self.text if reason == "stop" else "", reason, completion_tokens=3, model=model or "m")


class ScriptedGroup:
    """An expert group (swarm_hpc/experts/group.py's interface) whose members each say `text` after `steps` steps,
    checking their deadline and cancel at every step as the batch does."""

    def __init__(self, names: list[str], text: str = "ok", steps: int = 3, step_seconds: float = 0.002):
        self.names = names
        self.text = text
        self.steps = steps
        self.step_seconds = step_seconds
        self.turns: dict[str, dict[str, Any]] = {}
        self.begun: list[str] = []
        self.load_seconds = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.turns)

    def begin(self, name: str, messages: list[dict[str, str]], *, deadline: float | None = None,
              model: str | None = None, on_text: Any = None, cancelled: Any = None, sampling: Any = None,
              passages: Any = ()) -> Generation | None:
        self.cancel(name)
        if name not in self.names:
            return Generation("", "error", error=f"no expert {name}")
        self.begun.append(name)
        self.turns[name] = {"left": self.steps, "deadline": deadline, "cancelled": cancelled, "on_text": on_text}
        return None

    def cancel(self, name: str) -> None:
        self.turns.pop(name, None)

    def step(self) -> dict[str, Generation]:
        time.sleep(self.step_seconds)
        done: dict[str, Generation] = {}
        for name, t in list(self.turns.items()):
            t["left"] -= 1
            if t["cancelled"] is not None and t["cancelled"]():
                done[name] = Generation("", "cancelled")
            elif t["deadline"] is not None and time.monotonic() >= t["deadline"]:
                done[name] = Generation("", "deadline")
            elif t["left"] <= 0:
                if t["on_text"] is not None:
                    t["on_text"](self.text)
                done[name] = Generation(f"{self.text} from {name}", "stop", completion_tokens=self.steps)
            if name in done:
                del self.turns[name]
        return done
