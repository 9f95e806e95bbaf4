"""Experts that share a model, decoded as one batch (swarm_hpc/experts/batch.py, group.py), on real llama.cpp:
the tiny GGUFs the suite writes and the bundled SmolLM2. A batched expert says what it says alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tinygguf import write_tiny_gguf

from swarm_hpc.core.turns import Sampling
from swarm_hpc.experts.group import ExpertGroup, Member
from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.models import available, resolve_model


def chat(text: str, persona: str = "You are brief.") -> list[dict]:
    return [{"role": "system", "content": persona}, {"role": "user", "content": text}]


def group(path: Path, k: int, **kw) -> ExpertGroup:
    members = [Member(f"e{i}", n_ctx=kw.get("n_ctx", 512), temperature=0.0, seed=i + 1,
                      max_tokens=kw.get("max_tokens", 24)) for i in range(k)]
    return ExpertGroup(resolve_model(str(path), Path(".")), members, threads=1)


def alone(path: Path, **kw) -> LlamaExpert:
    return LlamaExpert("alone", resolve_model(str(path), Path(".")), n_ctx=kw.get("n_ctx", 512), threads=1,
                       temperature=0.0, seed=1, max_tokens=kw.get("max_tokens", 24))


def ascii_only(text: str) -> str:
    return "".join(c for c in text if ord(c) < 128)


QUESTIONS = ["What is the capital of France?", "Name a colour.", "Count to five, please.", "Say something."]


def test_greedy_replies_in_a_batch_are_the_replies_alone(tiny):
    single = alone(tiny["random"])
    expected = [single.answer(chat(q)) for q in QUESTIONS]
    g = group(tiny["random"], 4)
    for name, q in zip(g.names, QUESTIONS, strict=True):
        assert g.begin(name, chat(q)) is None
    done: dict = {}
    while g.busy:
        done.update(g.step())
    for name, want in zip(g.names, expected, strict=True):
        got = done[name]
        # the same tokens; llama-cpp-python's streaming drops some multi-byte characters of the gibberish (its
        # multibyte check), the batch decodes the bytes whole: compare the ASCII
        assert ascii_only(got.content) == ascii_only(want.content) and got.content
        assert got.finish_reason == want.finish_reason
        assert got.completion_tokens == want.completion_tokens and got.prompt_tokens == want.prompt_tokens
        assert got.gen_seconds > 0 and got.prompt_seconds > 0


def test_sequences_keep_their_own_cache_and_settings(tiny):
    g = group(tiny["random"], 2, max_tokens=16)
    a1 = g.answer("e0", chat("What is the capital of France?"))
    b1 = g.answer("e1", chat("Name a colour.", persona="You are a poet."))
    # the next turn of each re-evaluates only what is new in its own history
    a2 = g.answer("e0", chat("What is the capital of France?") + [{"role": "assistant", "content": a1.content},
                                                                  {"role": "user", "content": "And Italy?"}])
    assert a2.prompt_eval_tokens < a2.prompt_tokens - 10
    b2 = g.answer("e1", chat("Name a colour.", persona="You are a poet."))
    assert b2.prompt_eval_tokens == 1 and b1.prompt_eval_tokens == b1.prompt_tokens  # all cached but the last
    # per-turn sampling: a seeded draw at T=1 differs from greedy, and the same seed draws the same again
    hot = [g.answer("e0", chat("Say something."), sampling=Sampling(1.0, 7)).content for _ in range(2)]
    assert hot[0] == hot[1] != g.answer("e0", chat("Say something.")).content


def test_a_deadline_or_cancel_ends_one_sequence_and_not_the_others(tmp_path):
    loop = write_tiny_gguf(tmp_path / "loop.gguf", "la li lo", loop=True)
    g = group(loop, 3, n_ctx=2048, max_tokens=1500)
    stop = {"flag": False}
    assert g.begin("e0", chat("q"), deadline=time.monotonic() + 0.3) is None
    assert g.begin("e1", chat("q"), cancelled=lambda: stop["flag"]) is None
    assert g.begin("e2", chat("q"), sampling=Sampling(0.0, 1, max_tokens=40)) is None
    done: dict = {}
    t0 = time.monotonic()
    while len(done) < 2:
        done.update(g.step())
    assert done["e2"].finish_reason == "length" and done["e2"].completion_tokens == 40
    while "e0" not in done:
        done.update(g.step())
    assert done["e0"].finish_reason == "deadline" and time.monotonic() - t0 < 3
    assert "e1" not in done and g.busy  # e1 goes on alone
    stop["flag"] = True
    done.update(g.step())
    assert done["e1"].finish_reason == "cancelled" and not g.busy


def test_a_stop_string_is_held_back_while_streaming(tiny):
    g = group(tiny["paris"], 2)
    pieces: list[str] = []
    early = g.begin("e0", chat("q"), on_text=pieces.append)
    assert early is None
    assert g.begin("e1", chat("q")) is None
    done: dict = {}
    while g.busy:
        done.update(g.step())
    assert done["e0"].content == done["e1"].content == "Paris is the capital." == "".join(pieces)
    assert done["e0"].finish_reason == "stop"
    assert g.begin("zed", chat("q")).error.startswith("this rank's group has no expert")
    assert "serves only model" in g.begin("e0", chat("q"), model="other").error


def test_the_bundled_smollm2_says_the_same_batched_as_alone():
    """A real model: greedy, four personas in one batch, each reply as the expert gives it alone."""
    if not available("smollm2", Path(".")):
        pytest.skip("the bundled SmolLM2 is not installed")
    path = resolve_model("smollm2", Path(".")).path
    personas = ["You are brief.", "You are a geographer.", "You are a poet.", "You answer in one word."]
    single = alone(path, max_tokens=16)
    expected = []
    for p in personas:  # each prompt evaluated whole, as in the batch (a cached prefix can change the last bits)
        single.llm.reset()
        expected.append(single.answer(chat("What is the capital of France?", p)).content)
    g = group(path, 4, max_tokens=16)
    for name, p in zip(g.names, personas, strict=True):
        assert g.begin(name, chat("What is the capital of France?", p)) is None
    done: dict = {}
    while g.busy:
        done.update(g.step())
    assert [done[n].content for n in g.names] == expected


# --- on real MPI ranks --------------------------------------------------------------------------------------------


def test_experts_that_share_a_model_share_a_rank_and_answer_as_alone(write_spec, tiny, tmp_path, cli):
    """A vote of four experts on one model: rank 0 hosts the first, rank 1 the other three as one batch, and every
    reply is the expert's own (its persona, its tokens, its timings), as with one rank per expert."""
    from conftest import expert, messages, run_dir_from

    personas = {"a": "You are a.", "b": "You are careful and brief.", "c": "Think, then answer.", "d": "You know geography."}
    experts = [expert(n, tiny["random"], persona=p, max_tokens=12) for n, p in personas.items()]
    answers = {}
    for batch in (True, False):
        spec = write_spec(experts, name=f"vote-{batch}", strategy="vote", rounds=1, batch_experts=batch)
        res = cli("run", spec, "--out", tmp_path / f"runs-{batch}")
        assert res.rc == 0, res.err
        run_dir = run_dir_from(res.out)
        summary = json.loads((run_dir / "summary.json").read_text())
        replies = [r for r in messages(run_dir) if r["role"] == "expert" and r["round"] == 1]
        answers[batch] = {r["expert"]: (ascii_only(r["content"]), r["completion_tokens"]) for r in replies}
        ranks = {r["expert"]: r["rank"] for r in replies}
        if batch:
            assert "b+c+d@rank1" in res.out and len(summary["ranks"]) == 2
            assert ranks == {"a": 0, "b": 1, "c": 1, "d": 1}
            assert [e.get("batch") for e in summary["experts"]] == [None] + [["b", "c", "d"]] * 3
        else:
            assert ranks == {"a": 0, "b": 1, "c": 2, "d": 3}
        assert all(r["completion_tokens"] > 0 and r["gen_seconds"] > 0 for r in replies)
    assert answers[True] == answers[False]
    assert len({text for text, _ in answers[True].values() if text}) >= 2  # each its own persona's answer


MEASURE = """
import gc, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_batch import alone, chat, group
from swarm_hpc.experts.memory import rss_mb
path = Path(sys.argv[1])
gc.collect()
base = rss_mb()
single = alone(path, n_ctx=1024, max_tokens=4)
single.answer(chat("Hi."))
one = rss_mb() - base
single.llm.close()
del single
gc.collect()
base = rss_mb()
g = group(path, 4, n_ctx=1024, max_tokens=4)
for name in g.names:
    g.answer(name, chat("Hi."))
print(json.dumps({"one": one, "four": rss_mb() - base}))
"""


def test_a_group_costs_one_model_plus_a_kv_cache_per_member():
    """SmolLM2: a group of four takes about one expert's memory plus three more KV caches, not four experts'
    (resident memory after each has answered, so the weights are paged in; in a process of its own, so that
    nothing else the suite did is freed meanwhile)."""
    import subprocess
    import sys

    from swarm_hpc.experts.ggufmeta import kv_cache_bytes, read_metadata

    if not available("smollm2", Path(".")):
        pytest.skip("the bundled SmolLM2 is not installed")
    path = resolve_model("smollm2", Path(".")).path
    kv = kv_cache_bytes(read_metadata(path), 1024) / 2**20
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(Path(__file__).parent)], capture_output=True,
                         text=True, check=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    print(f"\none expert {m['one']:.0f} MB, a group of four {m['four']:.0f} MB, KV cache {kv:.0f} MB each")
    assert m["one"] > 50 and m["four"] < m["one"] + 3 * kv + 40 and m["four"] < 2 * m["one"]
