"""Several sequences decoded as one batch in one llama.cpp context: the weights are read once per step for all.

A `BatchDecoder` owns a llama.cpp context with `n_seq` sequences (each its own KV cache of `n_ctx_seq` tokens)
on a model that is already loaded. `start()` gives a sequence a prompt and its own sampling, stop strings,
token budget, deadline and cancel check; every `step()` is one `llama_decode` over all of them: the prompt
piece of one sequence still to evaluate (at most `n_batch` tokens; one prompt at a time, so that each
sequence computes exactly what the expert alone would) and one new token for each sequence that is generating. A sequence that finishes leaves the batch and the others go on; a new one can join at any step.

Prompt caching is per sequence: a sequence keeps what its KV cache holds, and a new prompt evaluates only what
differs from it (llama.cpp's `seq_rm` cuts the rest; a model whose cache cannot be cut is evaluated whole).

Sampling is llama.cpp's own sampler chain, as llama-cpp-python's `create_completion` builds it: greedy at
temperature 0, else top-k 40, typical 1.0, top-p 0.95, min-p 0.05, temperature, then a seeded draw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05


@dataclass
class SeqJob:
    """What one sequence is asked to do: its prompt and when to stop."""

    tokens: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    deadline: float | None = None                        # time.monotonic()
    cancelled: Callable[[], bool] | None = None
    on_text: Callable[[str], None] | None = None         # the text as it is generated (stop strings held back)
    done: Callable[[str], bool] | None = None            # True: the text so far is a whole answer (finish "stop")


@dataclass
class SeqResult:
    """How a sequence ended, with llama.cpp's counts; the seconds are the wall time of the steps it took part in."""

    text: str
    finish_reason: str          # stop | length | deadline | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_tokens: int
    prompt_seconds: float
    gen_seconds: float
    error: str | None = None


@dataclass
class _Seq:
    job: SeqJob
    sampler: Any
    pending: list[int]                 # prompt tokens still to evaluate
    pos: int                           # the next token's position
    raw: bytes = b""
    sent: int = 0                      # characters of the text already handed to on_text
    generated: int = 0
    evaluated: int = 0                 # prompt tokens evaluated
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    last: int | None = None            # the token sampled last, evaluated in the next step


def _stop_at(text: str, stop: list[str]) -> int | None:
    """Where the first stop string begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: list[str]) -> int:
    """How many trailing characters of `text` could still be the start of a stop string (not shown yet)."""
    keep = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if s.startswith(text[-n:]):
                keep = n
                break
    return keep


class BatchDecoder:
    """One llama.cpp context of `n_seq` sequences on `llm`'s model (a `llama_cpp.Llama`, which also tokenizes)."""

    def __init__(self, llm: Any, n_seq: int, n_ctx_seq: int, threads: int, n_batch: int = 512):
        from llama_cpp import llama_cpp as C
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self.llm = llm
        self.n_seq = n_seq
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        params = type(llm.context_params).from_buffer_copy(llm.context_params)  # as the expert alone: same numerics
        params.n_ctx = n_seq * n_ctx_seq
        # a step holds one prompt piece of up to n_batch tokens and a token of every other sequence
        params.n_batch = params.n_ubatch = n_batch + n_seq
        params.n_seq_max = n_seq
        params.kv_unified = False           # each sequence its own cache of n_ctx_seq cells
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = LlamaBatch(n_tokens=n_batch + n_seq, embd=0, n_seq_max=1, verbose=False)
        self.vocab = C.llama_model_get_vocab(llm._model.model)
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]   # what each sequence's KV cache holds
        self.seqs: dict[int, _Seq] = {}

    def close(self) -> None:
        for seq in list(self.seqs):
            self._end(seq)
        self.batch.close()
        self.ctx.close()

    # --- sequences --------------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.seqs)

    def start(self, seq: int, job: SeqJob) -> None:
        """Give sequence `seq` (0..n_seq-1) a new job; one it was still doing is dropped."""
        from llama_cpp._internals import LlamaSampler

        if not 0 <= seq < self.n_seq:
            raise ValueError(f"sequence {seq} is not in 0..{self.n_seq - 1}")
        if len(job.tokens) + job.max_tokens > self.n_ctx_seq:
            raise ValueError(f"the prompt ({len(job.tokens)} tokens) and max_tokens ({job.max_tokens}) do not fit "
                             f"the sequence's context ({self.n_ctx_seq})")
        if seq in self.seqs:
            self._end(seq)
        keep = self._reuse(seq, job.tokens)
        sampler = LlamaSampler()
        if job.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(TOP_K)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(TOP_P, 1)
            sampler.add_min_p(MIN_P, 1)
            sampler.add_temp(job.temperature)
            sampler.add_dist(job.seed)
        self.seqs[seq] = _Seq(job, sampler, pending=job.tokens[keep:], pos=keep)

    def _reuse(self, seq: int, tokens: list[int]) -> int:
        """Keep the cached prefix that `tokens` shares (at least the last token is evaluated again: its logits are
        needed); returns how many tokens are kept."""
        cached = self.cached[seq]
        keep = 0
        for a, b in zip(cached, tokens[:-1], strict=False):
            if a != b:
                break
            keep += 1
        if keep < len(cached) and not self.ctx.kv_cache_seq_rm(seq, keep, -1):
            self.ctx.kv_cache_seq_rm(seq, -1, -1)   # this model's cache cannot be cut: start the sequence over
            keep = 0
        self.cached[seq] = cached[:keep]
        return keep

    def cancel(self, seq: int) -> None:
        """Drop sequence `seq`'s job now (its result is not reported)."""
        if seq in self.seqs:
            self._end(seq)

    def _end(self, seq: int) -> _Seq:
        s = self.seqs.pop(seq)
        s.sampler.close()
        return s

    # --- one step ---------------------------------------------------------------------------------------------

    def step(self) -> dict[int, SeqResult]:
        """One llama_decode for every sequence with work; the sequences that finished, with their results."""
        finished: dict[int, SeqResult] = {}
        for seq, s in list(self.seqs.items()):   # a stop asked for before the step costs nothing
            why = self._interrupted(s)
            if why:
                finished[seq] = self._finish(seq, why)
        if not self.seqs:
            return finished
        b = self.batch.batch
        b.n_tokens = 0
        outputs: dict[int, int] = {}        # seq -> its row of logits in this batch
        prompting: list[int] = []

        def add(seq: int, token: int, pos: int, logits: bool) -> None:
            i = b.n_tokens
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
            b.n_tokens += 1
            if logits:
                outputs[seq] = i

        for seq, s in self.seqs.items():     # generating sequences first: one token each
            if not s.pending and s.last is not None:
                add(seq, s.last, s.pos, True)
        room = self.n_batch
        # then one sequence's prompt piece: two prompts in one batch came out different in the last bits, enough
        # to change a small model's greedy answer; alone, a prompt gives exactly what the expert alone computes
        for seq, s in self.seqs.items():
            if s.pending and not prompting:
                piece, s.pending = s.pending[:room], s.pending[room:]
                for j, token in enumerate(piece):
                    add(seq, token, s.pos + j, not s.pending and j == len(piece) - 1)
                s.pos += len(piece)
                s.evaluated += len(piece)
                self.cached[seq].extend(piece)
                room -= len(piece)
                prompting.append(seq)
        t0 = time.perf_counter()
        try:
            self.ctx.decode(self.batch)
        except RuntimeError as e:
            for seq in list(self.seqs):
                finished[seq] = self._finish(seq, "error", f"llama_decode failed: {e}")
            return finished
        seconds = time.perf_counter() - t0
        for seq, s in list(self.seqs.items()):
            if seq in prompting:
                s.prompt_seconds += seconds
            else:
                s.gen_seconds += seconds
            if s.last is not None and seq not in prompting:   # the token it fed is in the cache now
                self.cached[seq].append(s.last)
                s.pos += 1
            if seq not in outputs:
                continue
            token = s.sampler.sample(self.ctx, outputs[seq])
            why = self._take(s, token)
            if why:
                finished[seq] = self._finish(seq, why)
        return finished

    def _interrupted(self, s: _Seq) -> str | None:
        if s.job.cancelled is not None and s.job.cancelled():
            return "cancelled"
        if s.job.deadline is not None and time.monotonic() >= s.job.deadline:
            return "deadline"
        return None

    def _take(self, s: _Seq, token: int) -> str | None:
        """Add a sampled token to the sequence; why it ends, if it does."""
        from llama_cpp import llama_cpp as C

        if C.llama_vocab_is_eog(self.vocab, token):
            s.last = None
            return "stop"
        s.generated += 1
        s.last = token
        s.raw += self.llm.detokenize([token])
        text = s.raw.decode("utf-8", errors="ignore")
        cut = _stop_at(text, s.job.stop)
        if cut is not None:
            s.raw = text[:cut].encode()
            return "stop"
        if s.job.on_text is not None:
            shown = len(text) - _held_back(text, s.job.stop)
            if shown > s.sent:
                s.job.on_text(text[s.sent:shown])
                s.sent = shown
        if s.job.done is not None and s.job.done(text):
            return "stop"
        if s.generated >= s.job.max_tokens:
            return "length"
        return self._interrupted(s)

    def _finish(self, seq: int, why: str, error: str | None = None) -> SeqResult:
        s = self._end(seq)
        text = s.raw.decode("utf-8", errors="ignore")
        if s.job.on_text is not None and why != "cancelled" and len(text) > s.sent:
            s.job.on_text(text[s.sent:])
        return SeqResult(text=text, finish_reason=why, prompt_tokens=len(s.job.tokens),
                         completion_tokens=s.generated, prompt_eval_tokens=s.evaluated,
                         prompt_seconds=s.prompt_seconds, gen_seconds=s.gen_seconds, error=error)

    def run(self, jobs: dict[int, SeqJob]) -> dict[int, SeqResult]:
        """Start `jobs` and step until every one has finished (a convenience for tests and benchmarks)."""
        for seq, job in jobs.items():
            self.start(seq, job)
        results: dict[int, SeqResult] = {}
        while self.seqs:
            results.update(self.step())
        return results
