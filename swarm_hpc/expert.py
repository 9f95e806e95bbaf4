"""One llama.cpp expert: a GGUF model behind llama-cpp-python's high-level `Llama` API.

The expert answers a list of chat messages with the model's own chat template, within a token budget and a
deadline, and reports llama.cpp's own token counts and timings. Weights are memory-mapped (`use_mmap`), so
ranks on one node that load the same file share its pages.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .models import ResolvedModel

# chat-template overhead per message (role markers, newlines) when estimating a prompt's length
_PER_MESSAGE_TOKENS = 8


# Base models without a chat template (bundled gemma3) answer best as a plain transcript they complete.
PLAIN = "plain"
PLAIN_STOP = ["\nQuestion:", "\nAnswer:"]  # and a blank line once the answer has begun (see _paragraph_done)


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """System text, then "Question: ..." / "Answer: ..." turns, ending with "Answer:" for the model to complete.

    (Tried on Gemma 3 270M base: a User:/Assistant: transcript made it ask questions back; Q/A makes it answer.)
    """
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"])
        else:
            parts.append(f"{'Question' if m['role'] == 'user' else 'Answer'}: {m['content']}")
    return "\n\n".join(parts) + "\n\nAnswer:"


@dataclass(frozen=True)
class Generation:
    """What one turn produced, with llama.cpp's own counts and timers."""

    content: str
    finish_reason: str            # stop | length | deadline | error
    prompt_tokens: int = 0        # tokens in the prompt
    completion_tokens: int = 0    # tokens generated
    prompt_eval_tokens: int = 0   # prompt tokens llama.cpp evaluated (the rest came from the KV cache)
    prompt_seconds: float = 0.0   # llama.cpp's prompt-processing time
    gen_seconds: float = 0.0      # llama.cpp's generation time
    seconds: float = 0.0          # wall time of the whole turn
    dropped_messages: int = 0     # old messages left out to fit n_ctx
    error: str | None = None

    @property
    def tok_s(self) -> float:
        return self.completion_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp prints model-loading chatter on fd 2 even with verbose=False; keep rank logs readable."""
    if os.environ.get("SWARM_HPC_LLAMA_LOG"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_llama(model: ResolvedModel, n_ctx: int, threads: int, seed: int, **kw: Any):
    """A `llama_cpp.Llama` with explicit thread counts (llama.cpp otherwise grabs all cores for prompts)."""
    from llama_cpp import Llama

    with _quiet_stderr():
        chat_format = None if model.chat_format == PLAIN else model.chat_format
        return Llama(model_path=str(model.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                     seed=seed, chat_format=chat_format, use_mmap=True, verbose=False, **kw)


class LlamaExpert:
    """An expert that answers chat messages; built once per rank, reused every round."""

    def __init__(self, name: str, model: ResolvedModel, *, n_ctx: int, threads: int, temperature: float,
                 seed: int, max_tokens: int):
        self.name = name
        self.model = model
        self.n_ctx = n_ctx
        self.temperature = temperature
        self.seed = seed
        self.max_tokens = max_tokens
        t0 = time.perf_counter()
        self.llm = load_llama(model, n_ctx, threads, seed)
        self.load_seconds = time.perf_counter() - t0
        self._eos = self.llm.token_eos()

    # --- context fitting ------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _estimate(self, messages: list[dict[str, str]]) -> int:
        return sum(self.count_tokens(m["content"]) + _PER_MESSAGE_TOKENS for m in messages) + 1

    def fit(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[dict[str, str]], int]:
        """Drop the oldest turns (never the system prompt, the first user turn or the last one) to fit n_ctx."""
        budget = self.n_ctx - max_tokens
        msgs = list(messages)
        dropped = 0
        while self._estimate(msgs) > budget and len(msgs) > 3:
            del msgs[2]
            dropped += 1
        if self._estimate(msgs) > budget:  # the last turn alone is too long: keep its end
            last = msgs[-1]
            room = budget - self._estimate(msgs[:-1]) - _PER_MESSAGE_TOKENS
            if room <= 0:
                raise ValueError(f"the system prompt and task need more than n_ctx={self.n_ctx} - max_tokens={max_tokens}")
            toks = self.llm.tokenize(last["content"].encode("utf-8"), add_bos=False)
            tail = self.llm.detokenize(toks[-room:]).decode("utf-8", errors="ignore")
            msgs[-1] = {**last, "content": tail}
        return msgs, dropped

    def _paragraph_done(self, prompt: str):
        """Stop a plain completion at the first blank line after some text (a base model's answer is one paragraph)."""
        start = len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

        def done(input_ids: np.ndarray, logits: np.ndarray) -> bool:
            text = self.llm.detokenize(list(input_ids[start:])).decode("utf-8", errors="ignore")
            return "\n\n" in text.strip(" \n") or text.rstrip(" ").endswith("\n\n") and bool(text.strip())

        return done

    # --- one turn -------------------------------------------------------------------------------------------

    def generate(self, messages: list[dict[str, str]], max_tokens: int | None = None,
                 deadline: float | None = None) -> Generation:
        """Answer `messages`; stop at EOS, `max_tokens` or the `deadline` (a time.monotonic() value)."""
        from llama_cpp import StoppingCriteriaList
        from llama_cpp import llama_cpp as C

        max_tokens = max_tokens or self.max_tokens
        t0 = time.perf_counter()
        hit_deadline = False

        def deadline_processor(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            nonlocal hit_deadline
            if deadline is not None and time.monotonic() >= deadline:
                hit_deadline = True
                scores[:] = -np.inf
                scores[self._eos] = 0.0   # end the turn now, keeping what was said so far
            return scores

        try:
            msgs, dropped = self.fit(messages, max_tokens)
            C.llama_perf_context_reset(self.llm.ctx)
            args = dict(max_tokens=max_tokens, temperature=self.temperature, seed=self.seed,
                        logits_processor=[deadline_processor])
            if self.model.chat_format == PLAIN:
                prompt = plain_prompt(msgs)
                out = self.llm.create_completion(prompt, stop=PLAIN_STOP, stopping_criteria=StoppingCriteriaList([self._paragraph_done(prompt)]),
                                                 **args)
                text = out["choices"][0]["text"].strip().split("\n\n")[0]
            else:
                out = self.llm.create_chat_completion(messages=msgs, **args)
                text = out["choices"][0]["message"]["content"]
        except Exception as e:  # a turn that fails is reported, never fatal for the swarm
            return Generation("", "error", seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
        perf = C.llama_perf_context(self.llm.ctx)
        choice = out["choices"][0]
        usage = out["usage"]
        return Generation(
            content=(text or "").strip(),
            finish_reason="deadline" if hit_deadline else (choice.get("finish_reason") or "stop"),
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            prompt_eval_tokens=perf.n_p_eval,
            prompt_seconds=perf.t_p_eval_ms / 1000.0,
            gen_seconds=perf.t_eval_ms / 1000.0,
            seconds=time.perf_counter() - t0,
            dropped_messages=dropped,
        )
