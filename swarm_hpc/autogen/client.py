"""`MPIExpertClient`: an AutoGen `ChatCompletionClient` whose calls are answered by a llama.cpp expert on an
MPI rank (swarm_hpc/mpi/exchange.py carries them).

- `create()` awaits the expert's reply without blocking the event loop, so the agents of a team generate at
  the same time on their ranks; `create_stream()` yields the text as the rank streams it back over MPI
  (`TurnChunk`s), then the `CreateResult`;
- a call has a timeout (the expert stops generating at it; no reply a grace period later is `ExpertTimeout`,
  or, with on_failure="empty", an empty answer); a cancelled CancellationToken stops the expert's turn;
- messages of other agents carry their names ("[bob] ...", see prompts.py);
- usage is llama.cpp's own token counts; `count_tokens` uses the model's own tokenizer and template;
- `extra_create_args={"model": "gemma3"}` asks an expert that serves several models for one of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from autogen_core import CancellationToken
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from swarm_hpc.autogen.prompts import SPEAKER_FORMAT, ChatPrompt, to_chat
from swarm_hpc.core.passages import Passage
from swarm_hpc.core.turns import ExpertTimeout, TurnResult
from swarm_hpc.experts.models import ResolvedModel

OK, EMPTY, LATE, ERROR, CANCELLED = "ok", "empty", "late", "error", "cancelled"
FINISH = {"stop": "stop", "length": "length", "deadline": "length"}
EXTRA_ARGS = ("model", "timeout")


class ExpertError(RuntimeError):
    """The expert rank answered with an error (a failed turn, an unknown model, ...)."""


@dataclass(frozen=True)
class CallRecord:
    """One call of a client, for transcripts: what was sent, what came back, how it went."""

    expert: str
    model: str | None            # the model asked for (None: the expert's own)
    status: str                  # ok | empty | late | error | cancelled
    prompt: ChatPrompt
    result: TurnResult | None
    started: float               # time.time() when the call began
    seconds: float               # wall time of the call on rank 0
    chunks: int = 0              # streamed chunks received
    error: str | None = None


def _usage(result: TurnResult | None) -> RequestUsage:
    if result is None:
        return RequestUsage(prompt_tokens=0, completion_tokens=0)
    g = result.generation
    return RequestUsage(prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens)


class Requester(Protocol):
    """Where a client's calls go: swarm_hpc/mpi/exchange.py's Exchange on rank 0."""

    where: dict[str, int]   # expert -> rank
    requests: int           # requests made so far

    async def request(self, expert: str, messages: list[dict[str, str]], *, timeout: float, model: str | None = None,
                      on_chunk: Callable[[str], None] | None = None, passages: Sequence[Passage] = ()) -> TurnResult: ...


class MPIExpertClient(ChatCompletionClient):
    """A chat model client for one expert rank. Several clients share one Requester."""

    def __init__(self, exchange: Requester, expert: str, *, timeout: float = 300.0, model: str | None = None,
                 tokenizer: ResolvedModel | None = None, n_ctx: int = 2048, instruction: str | None = None,
                 on_failure: Literal["raise", "empty"] = "raise", speaker_format: str = SPEAKER_FORMAT,
                 plain_sources: Sequence[str] = ("user",), passages: Sequence[Passage] = ()):
        if expert not in exchange.where:
            raise ValueError(f"no expert named {expert!r} on the MPI ranks (known: {', '.join(exchange.where)})")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.exchange = exchange
        self.expert = expert
        self.timeout = timeout
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.instruction = instruction
        self.on_failure = on_failure
        self.speaker_format = speaker_format
        self.plain_sources = tuple(plain_sources)
        self.passages = tuple(passages)   # retrieved for this expert: sent with every call, it reads what fits
        self.calls: list[CallRecord] = []
        self._counter: Any = None
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._actual = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._closed = False

    # --- what the model is ------------------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(vision=False, function_calling=False, json_output=False, family=ModelFamily.UNKNOWN,
                         structured_output=False, multiple_system_messages=False)

    @property
    def capabilities(self) -> ModelCapabilities:  # deprecated in autogen-core
        return ModelCapabilities(vision=False, function_calling=False, json_output=False)

    @property
    def last_call(self) -> CallRecord | None:
        return self.calls[-1] if self.calls else None

    # --- prompts and tokens -----------------------------------------------------------------------------------

    def prompt(self, messages: Sequence[LLMMessage]) -> ChatPrompt:
        return to_chat(messages, self.expert, instruction=self.instruction, speaker_format=self.speaker_format,
                       plain_sources=self.plain_sources)

    def _count(self, chat: list[dict[str, str]]) -> int:
        if self.tokenizer is None:
            raise NotImplementedError("this client was made without `tokenizer` (the expert's model file), so it "
                                      "cannot count tokens")
        if self._counter is None:
            from swarm_hpc.experts.llama import Prompter, vocab_model

            self._counter = Prompter(vocab_model(self.tokenizer.path), self.tokenizer.chat_format)
        return self._counter.count(chat)

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        self._check_tools(tools)
        return self._count(self.prompt(messages).messages)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self.n_ctx - self.count_tokens(messages, tools=tools)

    def actual_usage(self) -> RequestUsage:
        return self._actual

    def total_usage(self) -> RequestUsage:
        return self._total

    async def close(self) -> None:
        self._closed = True

    # --- calls ------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_tools(tools: Sequence[Any]) -> None:
        if tools:
            raise ValueError("llama.cpp experts over MPI do not call tools (model_info function_calling is False)")

    def _options(self, tools: Sequence[Any], json_output: Any, extra: Mapping[str, Any]) -> tuple[str | None, float]:
        if self._closed:
            raise RuntimeError("the client is closed")
        self._check_tools(tools)
        if json_output:
            raise ValueError("JSON or structured output is not supported by this client (json_output must be None)")
        unknown = set(extra) - set(EXTRA_ARGS)
        if unknown:
            raise ValueError(f"unknown extra_create_args {sorted(unknown)}; this client takes {', '.join(EXTRA_ARGS)}")
        return extra.get("model", self.model), float(extra.get("timeout", self.timeout))

    async def _call(self, prompt: ChatPrompt, model: str | None, timeout: float, on_chunk: Any = None) -> CreateResult:
        started, t0 = time.time(), time.perf_counter()
        chunks = 0

        def count_chunk(text: str) -> None:
            nonlocal chunks
            chunks += 1
            on_chunk(text)

        def record(status: str, result: TurnResult | None, error: str | None = None) -> None:
            self.calls.append(CallRecord(self.expert, model, status, prompt, result, started,
                                         time.perf_counter() - t0, chunks, error))

        try:
            result = await self.exchange.request(self.expert, prompt.messages, timeout=timeout, model=model,
                                                 on_chunk=count_chunk if on_chunk else None, passages=self.passages)
        except ExpertTimeout as e:
            record(LATE, None, str(e))
            if self.on_failure == "raise":
                raise
            return CreateResult(finish_reason="unknown", content="", usage=_usage(None), cached=False)
        except asyncio.CancelledError:
            record(CANCELLED, None, "cancelled")
            raise
        g = result.generation
        usage = _usage(result)
        self._total = RequestUsage(self._total.prompt_tokens + usage.prompt_tokens,
                                   self._total.completion_tokens + usage.completion_tokens)
        self._actual = RequestUsage(self._actual.prompt_tokens + usage.prompt_tokens,
                                    self._actual.completion_tokens + usage.completion_tokens)
        if g.finish_reason in ("error", CANCELLED):
            record(ERROR, result, g.error or g.finish_reason)
            if self.on_failure == "raise":
                raise ExpertError(f"expert {self.expert} (rank {result.rank}): {g.error or g.finish_reason}")
            return CreateResult(finish_reason="unknown", content="", usage=usage, cached=False)
        record(OK if g.content else EMPTY, result)
        return CreateResult(finish_reason=FINISH.get(g.finish_reason, "unknown"), content=g.content, usage=usage,  # type: ignore[arg-type]
                            cached=False)

    async def create(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],
                     tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                     json_output: bool | type[BaseModel] | None = None, extra_create_args: Mapping[str, Any] = {},
                     cancellation_token: CancellationToken | None = None) -> CreateResult:
        model, timeout = self._options(tools, json_output, extra_create_args)
        task = asyncio.ensure_future(self._call(self.prompt(messages), model, timeout))
        if cancellation_token is not None:
            cancellation_token.link_future(task)
        return await task

    async def create_stream(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = [],
                            tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
                            json_output: bool | type[BaseModel] | None = None,
                            extra_create_args: Mapping[str, Any] = {},
                            cancellation_token: CancellationToken | None = None,
                            ) -> AsyncGenerator[str | CreateResult, None]:
        model, timeout = self._options(tools, json_output, extra_create_args)
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.ensure_future(self._call(self.prompt(messages), model, timeout, on_chunk=queue.put_nowait))
        if cancellation_token is not None:
            cancellation_token.link_future(task)
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                break
            while not queue.empty():
                yield queue.get_nowait()
            yield task.result()
        finally:
            if not task.done():  # the consumer stopped early: stop the expert's turn too
                task.cancel()
