"""AutoGen's LLM messages -> the chat an expert rank answers, with who said what kept in the text.

Small local models lose track of speakers when several agents' messages arrive as one "user" role, so every
message from another agent is written as "[name] text" (the task from the user stays as it is); consecutive
turns of one role are merged (chat templates want user and assistant to alternate), and the chat always ends
with a user turn, carrying the client's instruction if it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SPEAKER_FORMAT = "[{source}] {content}"
NO_ANSWER = "(no answer)"


@dataclass(frozen=True)
class ChatPrompt:
    messages: list[dict[str, str]]                     # what is sent to the expert rank
    sources: list[str] = field(default_factory=list)   # every speaker whose words are in it, in order


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for item in content or []:
        if isinstance(item, str):
            parts.append(item)
        elif hasattr(item, "name") and hasattr(item, "arguments"):  # a FunctionCall
            parts.append(f"(called {item.name}({item.arguments}))")
        else:
            parts.append("(an image, left out: the model reads text only)")
    return "\n".join(parts)


def to_chat(messages: Sequence[Any], self_name: str | None = None, *, instruction: str | None = None,
            speaker_format: str = SPEAKER_FORMAT, plain_sources: Sequence[str] = ("user",)) -> ChatPrompt:
    """Convert autogen_core LLMMessages (System/User/Assistant/FunctionExecutionResult) into chat dicts."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    sources: list[str] = []

    def add(role: str, text: str) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + text}
        else:
            turns.append({"role": role, "content": text})

    for m in messages:
        kind = getattr(m, "type", type(m).__name__)
        if kind == "SystemMessage":
            system.append(m.content)
        elif kind == "UserMessage":
            text = _text(m.content)
            if m.source not in plain_sources:
                text = speaker_format.format(source=m.source, content=text.strip() or NO_ANSWER)
            add("user", text)
            sources.append(m.source)
        elif kind == "AssistantMessage":
            text = _text(m.content)
            if self_name is None or m.source == self_name:
                add("assistant", text)
            else:
                add("user", speaker_format.format(source=m.source, content=text))
                sources.append(m.source)
        elif kind == "FunctionExecutionResultMessage":
            add("user", "\n".join(f"[result of {r.name}] {r.content}" for r in m.content))
        else:
            raise TypeError(f"unsupported message type {kind!r}")
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": "(the conversation so far)"})
    if not turns or turns[-1]["role"] == "assistant":
        turns.append({"role": "user", "content": instruction or "Continue."})
    elif instruction:
        turns[-1] = {"role": "user", "content": turns[-1]["content"] + "\n\n" + instruction}
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return ChatPrompt(head + turns, sources)
