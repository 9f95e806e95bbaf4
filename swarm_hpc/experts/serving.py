"""An expert that can stream its tokens out and be cancelled mid-turn (for AutoGen clients and model switching).

`ServingExpert` is a `LlamaExpert` whose `serve()` runs the very same `generate()` (same prompt, template, stop
strings, deadline and llama.cpp counts) with two extra stopping criteria for that one turn:
- streaming: after each token, the text generated so far is decoded and the new part handed to `on_text`,
  holding back trailing whitespace and anything that could still turn into a stop string, so that the
  chunks add up to the final (stripped) content;
- cancellation: `cancelled()` is asked after each token; when it says yes the turn ends at once and its
  finish_reason is "cancelled".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from swarm_hpc.experts.llama import Generation, LlamaExpert

CANCELLED = "cancelled"


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` might still become part of a stop string."""
    keep = 0
    for s in stops:
        for i in range(min(len(s), len(text)), 0, -1):
            if text.endswith(s[:i]):
                keep = max(keep, i)
                break
    return keep


class _Streamer:
    """A stopping criterion that never stops: it emits the new text of the turn after every token."""

    def __init__(self, expert: "ServingExpert", start: int, stops: list[str], on_text: Callable[[str], None]):
        self.expert = expert
        self.start = start
        self.stops = stops + (["\n\n"] if expert._formatter is None else [])  # plain answers end at a blank line
        self.on_text = on_text
        self.sent = ""

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        raw = self.expert.llm.detokenize(list(input_ids[self.start:]))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a multi-byte character is still coming
            return False
        text = text.lstrip()
        for s in self.stops:  # generation ends at a stop string; nothing after it is part of the answer
            if s in text:
                text = text[: text.index(s)]
        safe = text[: len(text) - _held_back(text, self.stops)].rstrip()
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self.on_text(safe[len(self.sent):])
            self.sent = safe
        return False

    def finish(self, content: str) -> None:
        """Send what the criterion held back, when the final content continues what was streamed."""
        if content.startswith(self.sent) and len(content) > len(self.sent):
            self.on_text(content[len(self.sent):])
            self.sent = content


class ServingExpert(LlamaExpert):
    """A LlamaExpert with `serve()`: one turn with optional streaming and cancellation."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._turn_hooks: list[Callable[[int, list[str]], Any]] = []

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str], list[Any]]:
        tokens, stop, criteria = super().render(messages)
        return tokens, stop, criteria + [hook(len(tokens), stop) for hook in self._turn_hooks]

    def serve(self, messages: list[dict[str, str]], deadline: float | None = None,
              on_text: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> Generation:
        streamers: list[_Streamer] = []
        was_cancelled = False

        def make_streamer(start: int, stop: list[str]) -> _Streamer:
            s = _Streamer(self, start, stop, on_text)  # type: ignore[arg-type]
            streamers.append(s)
            return s

        def make_canceller(start: int, stop: list[str]):
            def check(input_ids: np.ndarray, logits: np.ndarray) -> bool:
                nonlocal was_cancelled
                was_cancelled = was_cancelled or bool(cancelled())  # type: ignore[misc]
                return was_cancelled
            return check

        hooks = ([make_streamer] if on_text else []) + ([make_canceller] if cancelled else [])
        self._turn_hooks = hooks
        try:
            gen = self.generate(messages, deadline=deadline)
        finally:
            self._turn_hooks = []
        if was_cancelled:
            return dataclasses.replace(gen, finish_reason=CANCELLED)
        if streamers and gen.finish_reason != "error":
            streamers[-1].finish(gen.content)  # the last render() is the one that generated
        return gen
