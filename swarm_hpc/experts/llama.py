"""One llama.cpp expert: a GGUF model behind llama-cpp-python's high-level `Llama` API.

The expert answers a list of chat messages with the model's own chat template, within a token budget and a
deadline, and reports llama.cpp's own token counts and timings. Every turn streams through the library's own
`create_completion(stream=True)` (which also holds back text that may still become a stop string); the
deadline and cancellation are `StoppingCriteria`, checked after every token. Weights are memory-mapped
(`use_mmap`) and used in place (no repacked copy, see `load_llama`), so ranks on one node that load the same file
share its pages.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.core.passages import Given, Passage, fit_passages, passage_budget, with_passages
from swarm_hpc.core.turns import Generation, Sampling, failed
from swarm_hpc.experts.ggufmeta import kv_cache_bytes, read_metadata
from swarm_hpc.experts.interface import Messages
from swarm_hpc.experts.memory import rss_mb
from swarm_hpc.experts.models import ResolvedModel
from swarm_hpc.memory.compress import Compressor
from swarm_hpc.memory.context import MB, default_budget_mb, target_size
from swarm_hpc.memory.options import ExpertMemory

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


def plain_prompt(messages: Messages) -> str:
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


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
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


_params_lock = threading.Lock()


@contextlib.contextmanager
def model_defaults(**fields: Any) -> Iterator[None]:
    """While held, llama-cpp-python's `llama_model_default_params()` returns llama.cpp's defaults with `fields` set:
    `Llama.__init__` builds its model parameters from that struct and has no argument for most of its fields.
    One load at a time (a lock); the function is put back afterwards, also when the load fails."""
    from llama_cpp import llama_cpp as C

    known = {f[0] for f in C.llama_model_params._fields_}
    unknown = set(fields) - known
    if unknown:   # a ctypes Structure would take them as plain attributes, silently
        raise TypeError(f"llama_model_params has no field {', '.join(sorted(unknown))} in this llama-cpp-python")
    with _params_lock:
        original = C.llama_model_default_params

        def patched() -> Any:
            params = original()
            for name, value in fields.items():
                setattr(params, name, value)
            return params

        C.llama_model_default_params = patched
        try:
            yield
        finally:
            C.llama_model_default_params = original


def load_llama(model: ResolvedModel, n_ctx: int, threads: int, seed: int, *, repack: bool = False, **kw: Any) -> Any:
    """A `llama_cpp.Llama` with explicit thread counts (llama.cpp otherwise grabs all cores for prompts), its
    weights used in place from the memory-mapped file.

    llama.cpp's CPU backend by default copies the weights of some quantisations (Q4_0, Q4_K, IQ4_NL on x86 with
    AVX2 and on ARM) into a repacked layout in private memory: ~730 MB per process for Qwen2.5-Coder-1.5B, and
    loads 3x slower. Without it (`use_extra_bufts = False`, llama.cpp's `--no-repack`) ranks on one node share the
    file's pages in the page cache, and generate as fast (bench/weights.py, bench/results/weights.json). `repack`
    turns llama.cpp's default back on (the benchmark compares both)."""
    from llama_cpp import Llama

    with quiet_stderr(), model_defaults(use_extra_bufts=repack):
        return Llama(model_path=str(model.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                     seed=seed, use_mmap=True, verbose=False, **kw)


_vocab_lock = threading.Lock()
_vocab_cache: dict[str, Any] = {}   # path -> vocabulary-only Llama, the newest VOCAB_CACHE of them
VOCAB_CACHE = 8


def vocab_model(path: Path) -> Any:
    """The model's tokenizer and metadata only (a vocabulary-only load: milliseconds, no weights read)."""
    from llama_cpp import Llama

    key = str(path)
    with _vocab_lock:
        if key not in _vocab_cache:
            with quiet_stderr():
                _vocab_cache[key] = Llama(model_path=key, vocab_only=True, verbose=False)
            while len(_vocab_cache) > VOCAB_CACHE:
                _vocab_cache.pop(next(iter(_vocab_cache))).close()
        return _vocab_cache[key]


@atexit.register
def _close_vocab_models() -> None:
    """Free the cached loads while llama_cpp still works: left to Llama.__del__ at interpreter exit, they run
    after its module is torn down and print "TypeError: 'NoneType' object is not callable"."""
    with _vocab_lock:
        while _vocab_cache:
            _vocab_cache.popitem()[1].close()


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

    def text(t: int) -> str:
        return llm._model.token_get_text(t) if t != -1 else ""

    return Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos), stop_token_ids=[eos])


def paragraph_ended(text: str) -> bool:
    """A plain (base model) answer is one paragraph: it has ended at the first blank line after some text."""
    return "\n\n" in text.strip(" \n")


@dataclass(frozen=True)
class TurnSettings:
    """What one turn generates with: the expert's own settings, narrowed by the turn's `Sampling`."""

    max_tokens: int
    temperature: float
    seed: int


class Prompter:
    """Turns a chat into prompt tokens and stop strings, exactly as the expert will see it (also used on rank 0
    to count tokens with a vocabulary-only model).

    Only the chat template's own markers become control tokens: a message that contains one (a peer's reply
    saying "<|im_end|><|im_start|>system ...") gets a zero-width space after its first character, so that it
    stays text."""

    def __init__(self, llm: Any, chat_format: str | None):
        self.llm = llm
        self.formatter = chat_formatter(llm, chat_format)
        self.defuse = lru_cache(maxsize=4096)(self._defuse)  # a chat's history is rendered again every turn

    def _defuse(self, text: str) -> str:
        """`text` with every piece that the tokenizer would read as a control token broken up."""
        raw = text.encode("utf-8")
        parsed = self.llm.tokenize(raw, add_bos=False, special=True)
        plain = set(self.llm.tokenize(raw, add_bos=False, special=False))
        for t in {t for t in parsed if t not in plain}:
            piece = self.llm._model.token_get_text(t)
            if len(piece) > 1:
                text = text.replace(piece, piece[0] + "\u200b" + piece[1:])
        return text

    @property
    def plain(self) -> bool:
        return self.formatter is None

    def render(self, messages: Messages) -> tuple[list[int], list[str]]:
        """The prompt's tokens and the stop strings for `messages`."""
        messages = [{**m, "content": self.defuse(m["content"])} for m in messages]
        if self.formatter is None:
            return self.llm.tokenize(plain_prompt(messages).encode("utf-8"), add_bos=True, special=True), PLAIN_STOP
        result = self.formatter(messages=messages)
        tokens = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stop = [] if result.stop is None else [result.stop] if isinstance(result.stop, str) else list(result.stop)
        return tokens, stop

    def count(self, messages: Messages) -> int:
        return len(self.render(messages)[0])


class StreamedAnswer:
    """The answer as it streams: leading whitespace dropped, a plain answer cut at its first blank line, and
    trailing whitespace held back until more text follows, so the pieces handed on add up to `content`."""

    def __init__(self, plain: bool, on_text: Callable[[str], None] | None):
        self.plain = plain
        self.on_text = on_text
        self.raw = ""
        self.sent = ""

    @property
    def content(self) -> str:
        text = self.raw.lstrip()
        return (text.split("\n\n")[0] if self.plain else text).rstrip()

    def add(self, text: str) -> None:
        self.raw += text
        self._emit()

    def _emit(self) -> None:
        safe = self.content
        if self.on_text is not None and len(safe) > len(self.sent) and safe.startswith(self.sent):
            self.on_text(safe[len(self.sent):])
            self.sent = safe


def resize_context(llm: Any, n_ctx: int) -> int:
    """Give `llm` a new llama.cpp context of `n_ctx` tokens on the same model (no weights are read again) and
    carry the cached tokens over (the KV cells of sequence 0, copied with llama.cpp's state API) when they fit.
    Returns how many cached tokens were kept. The old context is freed first, so the peak is one context."""
    from llama_cpp import llama_cpp as C
    from llama_cpp._internals import LlamaContext

    old = llm._ctx
    keep = llm.n_tokens if llm.n_tokens <= n_ctx else 0
    saved, size = None, 0
    if keep:
        size = C.llama_state_seq_get_size(old.ctx, 0)
        saved = (ctypes.c_uint8 * size)()
        size = C.llama_state_seq_get_data(old.ctx, saved, size, 0)
    tokens = llm.input_ids[:keep].copy()
    old.close()
    llm.context_params.n_ctx = n_ctx
    with quiet_stderr():
        llm._ctx = LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    llm._n_ctx = llm.n_ctx()
    llm.input_ids = np.ndarray((n_ctx,), dtype=np.intc)
    if llm._logits_all:
        llm.scores = np.ndarray((n_ctx, llm._n_vocab), dtype=np.single)
    kept = 0
    if saved is not None and size and C.llama_state_seq_set_data(llm._ctx.ctx, saved, size, 0) == size:
        llm.input_ids[:keep] = tokens
        kept = keep
    llm.n_tokens = kept
    llm._requires_eval = True
    return kept


class LlamaExpert:
    """An expert that answers chat messages with one llama.cpp model; built once per rank, reused every round.

    Its memory (`memory`, the spec's [memory] table): with a `n_ctx_max` above n_ctx its context grows in steps of
    256 tokens (and shrinks after a fold) within a KV-cache budget; with policy "compress" the oldest turns that
    still do not fit are folded into a summary and key facts (swarm_hpc/memory/compress.py) instead of dropped."""

    def __init__(self, name: str, model: ResolvedModel, *, n_ctx: int, threads: int, temperature: float,
                 seed: int, max_tokens: int, memory: ExpertMemory | None = None, llm: Any = None):
        self.name = name
        self.model = model
        self.n_ctx = n_ctx
        self.n_ctx_min = n_ctx
        self.temperature = temperature
        self.seed = seed
        self.max_tokens = max_tokens
        self.memory = memory or ExpertMemory()
        self.n_ctx_max = max(n_ctx, self.memory.n_ctx_max or n_ctx)
        t0 = time.perf_counter()
        self.llm = llm if llm is not None else load_llama(model, n_ctx, threads, seed)  # `llm`: a group's shared one
        self.load_seconds = time.perf_counter() - t0
        self.prompter = Prompter(self.llm, model.chat_format)
        self.kv_bytes_per_token = 0.0
        self.budget_mb: float | None = None
        self.budget_source = "fixed"
        if self.n_ctx_max > n_ctx:
            try:
                self.kv_bytes_per_token = kv_cache_bytes(read_metadata(model.path), 1) * 1.0
            except (OSError, ValueError):
                self.kv_bytes_per_token = 0.0
            if self.memory.budget_mb is not None:
                self.budget_mb, self.budget_source = self.memory.budget_mb, "spec"
            else:
                self.budget_mb, self.budget_source = default_budget_mb(rss_mb())
        self.compressor = (Compressor(self.prompter.count, self._tokens, summary_tokens=self.memory.summary_tokens,
                                      facts_tokens=self.memory.facts_tokens, remind=self.memory.remind_facts)
                           if self.memory.compresses else None)
        self.resizes = 0   # since the start, for the transcript

    def _tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False))

    @property
    def model_path(self) -> Path:
        return self.model.path

    # --- prompts --------------------------------------------------------------------------------------------

    def fit(self, messages: Messages, max_tokens: int) -> tuple[Messages, int]:
        """Drop the oldest turns (never the system prompt, the first user turn or the last one) to fit n_ctx."""
        budget = self.n_ctx - max_tokens

        def without(k: int) -> Messages:   # the chat with its k oldest turns after the task left out
            return [*messages[:2], *messages[2 + k:]]

        # the fewest turns to drop, by bisection: a long history's chat is rendered a few times, not once a turn
        # (dropping one at a time rendered a 200-turn debate ~190 times a turn: 15 s of a 16 s turn)
        low, high = 0, max(0, len(messages) - 3)
        if self.prompter.count(messages) <= budget:
            high = 0
        while low < high:
            mid = (low + high) // 2
            if self.prompter.count(without(mid)) <= budget:
                high = mid
            else:
                low = mid + 1
        dropped = low
        msgs = without(dropped)
        over = self.prompter.count(msgs) - budget
        if over > 0:  # the last turn alone is too long: keep its end
            toks = self.llm.tokenize(msgs[-1]["content"].encode("utf-8"), add_bos=False)
            if over >= len(toks):
                raise ValueError(f"the system prompt and task need more than n_ctx={self.n_ctx} - max_tokens={max_tokens}")
            tail = self.llm.detokenize(toks[over + 8:]).decode("utf-8", errors="ignore")
            msgs[-1] = {**msgs[-1], "content": tail}
        return msgs, dropped

    def read(self, messages: Messages, passages: Sequence[Passage], max_tokens: int) -> tuple[Messages, Given | None]:
        """The chat with the retrieved passages that fit in its system prompt, and which did (None without
        passages). They take at most SHARE of the spec's n_ctx and never the room the system prompt, the
        task, the newest turn and the answer need; counted with this model's tokenizer."""
        if not passages:
            return messages, None
        essentials = [messages[0], *messages[1:2], *messages[2:][-1:]]
        budget = passage_budget(self.n_ctx_min, max_tokens, self.prompter.count(essentials))
        given = fit_passages(passages, self._tokens, budget)
        return with_passages(messages, given.given), given

    # --- memory: dynamic context and compression -----------------------------------------------------------

    def resize(self, n_ctx: int) -> dict[str, Any]:
        """A new context of `n_ctx` tokens on the same weights; what it cost, for the transcript."""
        t0, rss0, was = time.perf_counter(), rss_mb(), self.n_ctx
        kept = resize_context(self.llm, n_ctx)
        self.n_ctx = n_ctx
        self.resizes += 1
        return {"from": was, "to": n_ctx, "seconds": round(time.perf_counter() - t0, 4), "kept_tokens": kept,
                "kv_mb": round(self.kv_bytes_per_token * n_ctx / MB, 2), "rss_mb": round(rss_mb(), 1),
                "rss_delta_mb": round(rss_mb() - rss0, 1)}

    def _sized(self, needed: int, resizes: list[dict[str, Any]], shrink: bool = False) -> None:
        """Grow the context to the size that holds `needed` tokens, within n_ctx_max and the budget; with `shrink`
        (after a fold) also make it smaller, keeping 256 tokens of room (a shorter one-off chat never shrinks it:
        the conversation's cache would be lost)."""
        if self.n_ctx_max == self.n_ctx_min:
            return
        want = target_size(needed + (256 if shrink else 0), self.n_ctx, self.n_ctx_min, self.n_ctx_max,
                           self.kv_bytes_per_token, self.budget_mb)
        if want > self.n_ctx or (shrink and want < self.n_ctx):
            resizes.append(self.resize(want))

    def _summariser(self, deadline: float | None, calls: list[dict[str, Any]]) -> Callable[[Messages, int], str]:
        """The one extra LLM call of a fold: the expert summarises the turns it folds, greedy, within the deadline."""
        from llama_cpp import StoppingCriteriaList
        from llama_cpp import llama_cpp as C

        def summarise(chat: Messages, max_tokens: int) -> str:
            t0 = time.perf_counter()
            tokens, stop = self.prompter.render(chat)
            budget = self.n_ctx - max_tokens
            if len(tokens) > budget:   # an earlier summary and the folded turns are too long: keep their end
                tokens = tokens[:1] + tokens[len(tokens) - budget + 1:]
            late = StoppingCriteriaList([lambda ids, logits: deadline is not None and time.monotonic() >= deadline])
            C.llama_perf_context_reset(self.llm.ctx)
            out = self.llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, stop=stop,
                                             stopping_criteria=late)
            text = out["choices"][0]["text"].strip()
            if self.prompter.plain:
                text = text.split("\n\n")[0]
            calls.append({"prompt_tokens": len(tokens), "prompt_eval_tokens": C.llama_perf_context(self.llm.ctx).n_p_eval,
                          "completion_tokens": out["usage"]["completion_tokens"],
                          "seconds": round(time.perf_counter() - t0, 4)})
            return text

        return summarise

    def prepare(self, messages: Messages, max_tokens: int,
                deadline: float | None = None) -> tuple[Messages, int, dict[str, Any] | None]:
        """The chat to answer, fitted to the context: grown into, compressed, or (drop-oldest) cut. Returns it, the
        messages dropped, and what memory management did this turn (None when it did nothing to report)."""
        t0 = time.perf_counter()
        resizes: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        fold = None
        view = self.compressor.view(messages) if self.compressor else list(messages)
        room = self.compressor.reserve(max_tokens) if self.compressor else max_tokens
        self._sized(self.prompter.count(view) + room, resizes)
        if self.compressor and self.prompter.count(view) > self.n_ctx - room:
            view, fold = self.compressor.fold(messages, self.n_ctx - room, self._summariser(deadline, calls), self.n_ctx)
            if fold is not None:
                self._sized(self.prompter.count(view) + room, resizes, shrink=True)
        msgs, dropped = self.fit(view, max_tokens)
        if self.memory.policy == "drop-oldest" and not resizes and self.n_ctx_max == self.n_ctx_min:
            return msgs, dropped, None
        record: dict[str, Any] = {"policy": self.memory.policy, "n_ctx": self.n_ctx}
        if resizes:
            record["resizes"] = resizes
        if self.compressor is not None:
            state = self.compressor.state
            record.update(folded_total=state.count, facts=len(state.facts))
        if fold is not None:
            record["fold"] = {**fold.as_record(), **({"summary_call": calls[0]} if calls else {})}
        record["seconds"] = round(time.perf_counter() - t0, 4)
        return msgs, dropped, record

    def _paragraph_done(self, start: int) -> Callable[[np.ndarray, np.ndarray], bool]:
        """Stop a plain completion at the first blank line after some text (a base model's answer is one paragraph)."""

        def done(input_ids: np.ndarray, logits: np.ndarray) -> bool:
            return paragraph_ended(self.llm.detokenize(list(input_ids[start:])).decode("utf-8", errors="ignore"))

        return done

    # --- one turn -------------------------------------------------------------------------------------------

    def settle(self, model: str | None, sampling: Sampling | None, max_tokens: int | None = None
               ) -> TurnSettings | Generation:
        """A turn's settings; a failed Generation when it asks for a model this expert does not serve."""
        if model is not None and model != self.model.ref:
            return failed(f"expert {self.name} serves only model {self.model.ref!r}, not {model!r} "
                          "(list it in the expert's `models`)", model=self.model.ref)
        cap = min(max_tokens or self.max_tokens, (sampling and sampling.max_tokens) or self.max_tokens)
        if sampling:
            return TurnSettings(cap, sampling.temperature, sampling.seed)
        return TurnSettings(cap, self.temperature, self.seed)

    def answer(self, messages: Messages, *, deadline: float | None = None, model: str | None = None,
               on_text: Callable[[str], None] | None = None, cancelled: Callable[[], bool] | None = None,
               sampling: Sampling | None = None, passages: Sequence[Passage] = (),
               max_tokens: int | None = None) -> Generation:
        """See `Expert.answer` (swarm_hpc/experts/interface.py)."""
        from llama_cpp import StoppingCriteriaList
        from llama_cpp import llama_cpp as C

        t0 = time.perf_counter()
        turn = self.settle(model, sampling, max_tokens)
        if isinstance(turn, Generation):
            return turn
        why: str | None = None  # set when a stopping criterion ended the turn

        def past_deadline(input_ids: np.ndarray, logits: np.ndarray) -> bool:
            nonlocal why
            if deadline is not None and time.monotonic() >= deadline:
                why = "deadline"
            return why is not None

        def was_cancelled(input_ids: np.ndarray, logits: np.ndarray) -> bool:
            nonlocal why
            if cancelled is not None and cancelled():
                why = "cancelled"
            return why is not None

        answer = StreamedAnswer(self.prompter.plain, on_text)
        finish = "stop"
        try:
            messages, read = self.read(messages, passages, turn.max_tokens)
            msgs, dropped, memory = self.prepare(messages, turn.max_tokens, deadline)
            tokens, stop = self.prompter.render(msgs)
            criteria: list[Callable[[np.ndarray, np.ndarray], bool]] = [past_deadline, was_cancelled]
            if self.prompter.plain:
                criteria.append(self._paragraph_done(len(tokens)))
            C.llama_perf_context_reset(self.llm.ctx)
            for chunk in self.llm.create_completion(tokens, max_tokens=turn.max_tokens, temperature=turn.temperature,
                                                    seed=turn.seed, stop=stop, stream=True,
                                                    stopping_criteria=StoppingCriteriaList(criteria)):
                choice = chunk["choices"][0]
                answer.add(choice["text"])
                finish = choice.get("finish_reason") or finish
        except Exception as e:  # a turn that fails is reported, never fatal for the swarm
            return failed(f"{type(e).__name__}: {e}", time.perf_counter() - t0, self.model.ref)
        perf = C.llama_perf_context(self.llm.ctx)
        # tokens evaluated after the prompt; the last one sampled is evaluated only when generation goes on,
        # so a turn cut at max_tokens has one more
        generated = self.llm.n_tokens - len(tokens) + (1 if finish == "length" else 0)
        return Generation(
            content=answer.content,
            finish_reason=why or finish,
            prompt_tokens=len(tokens),
            completion_tokens=max(generated, 0),
            prompt_eval_tokens=perf.n_p_eval,
            prompt_seconds=perf.t_p_eval_ms / 1000.0,
            gen_seconds=perf.t_eval_ms / 1000.0,
            seconds=time.perf_counter() - t0,
            dropped_messages=dropped,
            model=self.model.ref,
            memory=memory,
            passages=read,
        )
