"""The llama.cpp expert on tiny real GGUF files (llama-cpp-python, no mocks)."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tinygguf import write_tiny_gguf

from swarm_hpc.experts.llama import LlamaExpert, load_llama, plain_prompt
from swarm_hpc.experts.models import ResolvedModel, resolve_model


def make(path: Path, **kw) -> LlamaExpert:
    args = dict(n_ctx=512, threads=1, temperature=0.0, seed=1, max_tokens=32) | kw
    return LlamaExpert("x", resolve_model(str(path), Path(".")), **args)


def chat(text: str = "What is the capital of France?") -> list[dict]:
    return [{"role": "system", "content": "You are brief."}, {"role": "user", "content": text}]


def test_scripted_model_answers_with_real_counts_and_timings(tiny):
    g = make(tiny["paris"]).answer(chat())
    assert g.content == "Paris is the capital."
    assert g.finish_reason == "stop" and g.error is None
    assert g.completion_tokens == 4  # four scripted pieces, then EOS
    assert g.prompt_tokens > 10 and g.prompt_eval_tokens == g.prompt_tokens
    assert g.gen_seconds > 0 and g.prompt_seconds > 0 and g.tok_s > 0


def test_kv_cache_prefix_is_reused_between_turns(tiny):
    e = make(tiny["paris"])
    first = e.answer(chat())
    msgs = chat() + [{"role": "assistant", "content": first.content}, {"role": "user", "content": "And Italy?"}]
    second = e.answer(msgs)
    assert second.prompt_eval_tokens < second.prompt_tokens  # llama.cpp evaluated only the new tail


def test_max_tokens_and_deadline_stop_a_model_that_never_ends(tmp_path):
    e = make(write_tiny_gguf(tmp_path / "loop.gguf", "la li lo", loop=True), n_ctx=4096, max_tokens=3000)
    short = e.answer(chat(), max_tokens=7)
    assert short.finish_reason == "length" and short.completion_tokens == 7
    t0 = time.perf_counter()
    cut = e.answer(chat(), deadline=time.monotonic() + 0.2)
    assert cut.finish_reason == "deadline" and 0 < cut.completion_tokens < 3000
    assert time.perf_counter() - t0 < 2.0
    assert "la li lo" in cut.content


def test_history_is_trimmed_to_fit_n_ctx(tiny):
    e = make(tiny["paris"], n_ctx=512, max_tokens=32)
    msgs = chat()
    for i in range(12):
        msgs += [{"role": "assistant", "content": f"answer number {i} " * 5}, {"role": "user", "content": f"question {i} " * 5}]
    g = e.answer(msgs)
    assert g.finish_reason == "stop" and g.dropped_messages > 0
    assert g.prompt_tokens + g.completion_tokens <= 512


def test_a_failing_turn_is_reported_not_raised(tiny):
    e = make(tiny["paris"], n_ctx=256, max_tokens=16)
    g = e.answer([{"role": "system", "content": "long " * 400}, {"role": "user", "content": "hi"}])
    assert g.finish_reason == "error" and "n_ctx" in g.error


def test_plain_transcript_prompt_for_base_models(tiny):
    text = plain_prompt(chat("hi") + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}])
    assert text == "You are brief.\n\nQuestion: hi\n\nAnswer: hello\n\nQuestion: bye\n\nAnswer:"
    m = resolve_model(str(tiny["paris"]), Path("."))
    e = LlamaExpert("p", ResolvedModel(m.ref, m.path, "plain", False), n_ctx=512, threads=1, temperature=0.0,
                    seed=1, max_tokens=16)
    assert e.answer(chat()).content == "Paris is the capital."


@contextlib.contextmanager
def llama_log() -> Iterator[list[str]]:
    """What llama.cpp (and ggml) log meanwhile, whatever llama-cpp-python's verbosity; its own logger after."""
    from llama_cpp import _logger
    from llama_cpp import llama_cpp as C

    lines: list[str] = []

    @C.llama_log_callback
    def keep(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    C.llama_log_set(keep, ctypes.c_void_p(0))   # `keep` lives in this frame until the library's is back
    try:
        yield lines
    finally:
        C.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def test_an_expert_uses_the_mapped_weights_in_place_without_a_repacked_copy(tmp_path):
    """llama.cpp repacks Q4_0 weights into private memory by default (x86 with AVX2, ARM); an expert loads them
    without (ranks on a node then share the file's pages: bench/weights.py), and still answers."""
    from llama_cpp import Llama
    from llama_cpp import llama_cpp as C

    path = write_tiny_gguf(tmp_path / "q4.gguf", "Paris is the capital.", quant="q4_0")
    with llama_log() as log:
        e = make(path)
    assert e.llm.model_params.use_extra_bufts is False     # the struct llama_model_load_from_file was given
    assert any("CPU_Mapped model buffer" in line for line in log)
    assert not any("CPU_REPACK" in line or "repack tensor" in line for line in log)
    assert e.answer(chat()).content == "Paris is the capital."
    assert C.llama_model_default_params().use_extra_bufts is True   # llama.cpp's default is back for others

    with llama_log() as log:
        Llama(model_path=str(path), n_ctx=256, verbose=False).close()
    if not any("CPU_REPACK" in line for line in log):
        pytest.skip("llama.cpp repacks no Q4_0 weights on this CPU, so its log cannot tell the two loads apart")
    assert any("repack tensor" in line for line in log)


def test_loads_in_threads_at_once_all_skip_repacking(tiny):
    model = resolve_model(str(tiny["paris"]), Path("."))
    found: list[bool] = []

    def load() -> None:
        llm = load_llama(model, 256, 1, 1)
        found.append(llm.model_params.use_extra_bufts)
        llm.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [False] * 4
    assert load_llama(model, 256, 1, 1, repack=True).model_params.use_extra_bufts is True


@pytest.mark.parametrize("ref", ["smollm2"])
def test_bundled_model_resolves_to_a_gguf(ref):
    m = resolve_model(ref, Path("."))
    assert m.bundled and m.path.read_bytes()[:4] == b"GGUF"


def test_a_turn_can_bring_its_own_temperature_and_seed(tmp_path):
    """Self-consistency draws several answers from one greedy expert: the turn's sampling wins over the expert's."""
    from swarm_hpc.core.turns import Sampling

    e = make(write_tiny_gguf(tmp_path / "random.gguf"), max_tokens=12)  # random weights, loaded greedy
    greedy = {e.answer(chat()).content for _ in range(2)}
    assert len(greedy) == 1
    drawn = [e.answer(chat(), sampling=Sampling(1.5, seed)).content for seed in (1, 2, 3, 1)]
    assert drawn[0] == drawn[3]                       # the same seed draws the same answer
    assert len(set(drawn[:3])) > 1 and set(drawn) != greedy


def test_passages_are_fitted_with_the_experts_own_tokenizer(tiny):
    """The block of passages an expert keeps fits its budget in its own tokens, and one more would not; the prompt
    it evaluates has them, numbered, with the conversation still whole; the reply says which it read."""
    from swarm_hpc.core.passages import Passage, passage_budget, render

    e = make(tiny["paris"], n_ctx=512, max_tokens=32)
    passages = [Passage(f"#{i}", f"doc{i}.md", 1.0 - i / 10, f"Fact number {i} about the Zorblax cluster.")
                for i in range(12)]
    msgs, given = e.read(chat(), passages, 32)
    assert given is not None and 0 < len(given.given) < len(passages)
    budget = passage_budget(512, 32, e.prompter.count(chat()))
    tokens = lambda ps: e._tokens("\n\n" + render(ps))
    assert tokens(given.given) <= budget < tokens([*given.given, given.cut[0]])
    assert given.given == tuple(passages[:len(given.given)])   # best first, all the same length
    assert msgs[0]["content"].endswith(render(given.given)) and msgs[1:] == chat()[1:]
    g = e.answer(chat(), passages=passages)
    assert g.content == "Paris is the capital." and g.passages == given and g.prompt_tokens <= 512 - 32
