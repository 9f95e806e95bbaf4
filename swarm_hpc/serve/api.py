"""The OpenAI chat-completions wire format, as far as the swarm speaks it: the request (validated, bounded), its
mapping onto a spec, and the response bodies (whole, or as server-sent-event chunks).

A request's messages become the swarm's task: the last message (a user's) is the question, earlier turns and
system messages go before it as context. `max_tokens` lowers every expert's own limit (never raises it: the
spec's limits were checked against each expert's context size before launch), `temperature` replaces the
experts' temperature, `stop` cuts the final answer at the first stop string (the experts' own replies are kept
whole in the transcript).
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from swarm_hpc.core.spec import SwarmSpec

ALONE_STRATEGY = "round-robin"   # an expert called alone: one turn, its answer is the final one


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields the swarm uses; `n` other than 1 and `tools` are refused (one answer, no tool calls), any other
    OpenAI field (top_p, seed, user, ...) is accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)          # one answer: the swarm's
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[Any] | None) -> list[Any] | None:
        if v:
            raise ValueError("the swarm answers in text and calls no tools: send the request without `tools`")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty strings")
        return stops

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if v[-1].role != "user" or not v[-1].text.strip():
            raise ValueError("the last message must be a user's, with text: it is what the swarm answers")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def task_of(messages: list[ChatMessage]) -> str:
    """The swarm's task: the last user message, after the conversation before it (and system messages)."""
    *before, last = messages
    system = [m.text for m in before if m.role in ("system", "developer") and m.text.strip()]
    turns = [f"{m.role.capitalize()}: {m.text}" for m in before if m.role in ("user", "assistant") and m.text.strip()]
    parts = []
    if system:
        parts.append("Instructions: " + "\n".join(system))
    if turns:
        parts.append("The conversation so far:\n" + "\n".join(turns))
    if not parts:
        return last.text
    return "\n\n".join([*parts, f"Now answer: {last.text}"])


def request_spec(spec: SwarmSpec, req: ChatRequest, expert: str | None, max_tokens: int) -> SwarmSpec:
    """The spec one request runs: the swarm's (or one expert's alone), with the request's task and sampling."""
    limit = min(req.token_limit or max_tokens, max_tokens)
    experts = [e.model_copy(update={"max_tokens": min(e.max_tokens, limit),
                                    **({"temperature": req.temperature} if req.temperature is not None else {})})
               for e in spec.experts if expert is None or e.name == expert]
    update: dict[str, Any] = {"task": task_of(req.messages), "experts": experts, "engine": "native"}
    if expert is not None:
        update |= {"strategy": ALONE_STRATEGY, "rounds": 1, "synthesizer": None, "routes": []}
    return spec.model_copy(update=update)


def cut_at_stop(text: str, stops: list[str]) -> str:
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    return text[:min(cuts)] if cuts else text


def pieces(text: str) -> list[str]:
    """The final answer in stream chunks (a word and the space after it); joined, they are the text."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


# --- responses ----------------------------------------------------------------------------------------------------

def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(cid: str, model: str, content: str, prompt: int, done: int, swarm: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": usage(prompt, done), "swarm": swarm}


def chunk(cid: str, model: str, delta: dict[str, Any] | None, finish: str | None = None,
          **more: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices, **more}


def error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
