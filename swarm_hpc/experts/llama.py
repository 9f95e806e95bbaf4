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

from swarm_hpc.experts.models import ResolvedModel

# Base models without a chat template (bundled gemma3) answer best as a plain transcript they complete.
PLAIN = "plain"
PLAIN_STOP = ["\nQuestion:", "\nAnswer:"]  # and a blank line once the answer has begun (see _paragraph_done)
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_FORMATS = (PLAIN, "chatml")  # besides the model's own template (chat_format omitted)


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
        return Llama(model_path=str(model.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                     seed=seed, use_mmap=True, verbose=False, **kw)


class LlamaExpert:
    """An expert that answers chat messages; built once per rank, reused every round.

    The chat is rendered with the model's own template (as llama-cpp-python's chat handler does) and completed
    with `create_completion`, whose stopping criteria end a turn at its deadline for the cost of one clock
    read per token.
    """

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
        self._formatter = chat_formatter(self.llm, model.chat_format)

    # --- prompts --------------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str], list[Any]]:
        """The prompt's tokens, stop strings and stopping criteria for `messages`."""
        if self._formatter is None:
            tokens = self.llm.tokenize(plain_prompt(messages).encode("utf-8"), add_bos=True, special=True)
            return tokens, PLAIN_STOP, [self._paragraph_done(len(tokens))]
        result = self._formatter(messages=messages)
        tokens = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stop = [] if result.stop is None else [result.stop] if isinstance(result.stop, str) else list(result.stop)
        return tokens, stop, list(result.stopping_criteria or [])

    def fit(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[dict[str, str]], int]:
        """Drop the oldest turns (never the system prompt, the first user turn or the last one) to fit n_ctx."""
        budget = self.n_ctx - max_tokens
        msgs = list(messages)
        dropped = 0
        while len(self.render(msgs)[0]) > budget and len(msgs) > 3:
            del msgs[2]
            dropped += 1
        over = len(self.render(msgs)[0]) - budget
        if over > 0:  # the last turn alone is too long: keep its end
            toks = self.llm.tokenize(msgs[-1]["content"].encode("utf-8"), add_bos=False)
            if over >= len(toks):
                raise ValueError(f"the system prompt and task need more than n_ctx={self.n_ctx} - max_tokens={max_tokens}")
            tail = self.llm.detokenize(toks[over + 8:]).decode("utf-8", errors="ignore")
            msgs[-1] = {**msgs[-1], "content": tail}
        return msgs, dropped

    def _paragraph_done(self, start: int):
        """Stop a plain completion at the first blank line after some text (a base model's answer is one paragraph)."""

        def done(input_ids: np.ndarray, logits: np.ndarray) -> bool:
            text = self.llm.detokenize(list(input_ids[start:])).decode("utf-8", errors="ignore")
            return "\n\n" in text.strip(" \n")

        return done

    # --- one turn -------------------------------------------------------------------------------------------

    def generate(self, messages: list[dict[str, str]], max_tokens: int | None = None,
                 deadline: float | None = None) -> Generation:
        """Answer `messages`; stop at the end of the answer, `max_tokens` or the `deadline` (time.monotonic())."""
        from llama_cpp import StoppingCriteriaList
        from llama_cpp import llama_cpp as C

        max_tokens = max_tokens or self.max_tokens
        t0 = time.perf_counter()
        hit_deadline = False

        def past_deadline(input_ids: np.ndarray, logits: np.ndarray) -> bool:
            nonlocal hit_deadline
            hit_deadline = deadline is not None and time.monotonic() >= deadline
            return hit_deadline

        try:
            msgs, dropped = self.fit(messages, max_tokens)
            tokens, stop, criteria = self.render(msgs)
            C.llama_perf_context_reset(self.llm.ctx)
            out = self.llm.create_completion(tokens, max_tokens=max_tokens, temperature=self.temperature,
                                             seed=self.seed, stop=stop,
                                             stopping_criteria=StoppingCriteriaList([past_deadline, *criteria]))
        except Exception as e:  # a turn that fails is reported, never fatal for the swarm
            return Generation("", "error", seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
        perf = C.llama_perf_context(self.llm.ctx)
        choice = out["choices"][0]
        usage = out["usage"]
        text = choice["text"].strip()
        if self._formatter is None:
            text = text.split("\n\n")[0]
        return Generation(
            content=text,
            finish_reason="deadline" if hit_deadline else (choice.get("finish_reason") or "stop"),
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            prompt_eval_tokens=perf.n_p_eval,
            prompt_seconds=perf.t_p_eval_ms / 1000.0,
            gen_seconds=perf.t_eval_ms / 1000.0,
            seconds=time.perf_counter() - t0,
            dropped_messages=dropped,
        )


def chat_formatter(llm: Any, chat_format: str | None) -> Any:
    """llama-cpp-python's Jinja2 chat formatter for the model's own template (or ChatML); None for "plain"."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if chat_format == PLAIN:
        return None
    if chat_format == "chatml":
        template = CHATML
    elif chat_format is None:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the model has no chat template; set chat_format = \"plain\" (base models) or \"chatml\"")
    else:
        raise ValueError(f"unknown chat_format {chat_format!r}; use one of {', '.join(CHAT_FORMATS)}")
    eos, bos = llm.token_eos(), llm.token_bos()
    text = lambda t: llm._model.token_get_text(t) if t != -1 else ""
    return Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos), stop_token_ids=[eos])
