"""Compression instead of drop-oldest: real llama.cpp experts (tiny GGUFs) in this process, and a real swarm."""

from __future__ import annotations

import pytest
from conftest import expert, messages, run_dir_from
from tinygguf import write_tiny_gguf

from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.models import ResolvedModel
from swarm_hpc.memory.compress import REMINDER_HEAD
from swarm_hpc.memory.facts import key_facts
from swarm_hpc.memory.options import ExpertMemory

FACT = "The vault code is 4711 and Zanzibar keeps the key."
FILLER = "we should weigh the options again and keep looking at every side of it before we settle on one answer"


@pytest.fixture(scope="module")
def paris(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "paris.gguf", "Paris is the capital.")
    return ResolvedModel(ref=str(path), path=path, chat_format=None, bundled=False)


def make(model: ResolvedModel, n_ctx: int = 512, **memory) -> LlamaExpert:
    return LlamaExpert("alice", model, n_ctx=n_ctx, threads=1, temperature=0.0, seed=1, max_tokens=24,
                       memory=ExpertMemory(**memory))


def debate(expert: LlamaExpert, rounds: int, filler: str = FILLER) -> tuple[list[dict[str, str]], list]:
    """`rounds` turns of a debate in which bob states FACT in round 1 only, then only filler."""
    chat = [{"role": "system", "content": "You are alice."}, {"role": "user", "content": "Task: where is the key?"}]
    gens = []
    for i in range(rounds):
        g = expert.answer(chat)
        assert g.finish_reason != "error", g.error
        gens.append(g)
        said = FACT if i == 0 else f"{filler} (round {i + 1})"
        chat += [{"role": "assistant", "content": g.content},
                 {"role": "user", "content": f"The other experts said:\n[bob] {said}\n\nGive your improved answer."}]
    return chat, gens


def test_key_facts_keep_numbers_and_names_verbatim():
    text = "[bob] I think so. The vault code is 4711. Zanzibar keeps it, said Alice.\nwe agree on nothing here."
    assert key_facts(text) == ["bob: The vault code is 4711.", "bob: Zanzibar keeps it, said Alice."]
    assert key_facts("Paris is nice.") == []          # a capital opening the sentence is not a name
    assert key_facts("I met Bob in Rome.") == ["I met Bob in Rome."]


def test_key_facts_keep_notes_and_decisions_without_numbers_or_names():
    text = ("[carol] Note for the team: the password hint is walrus. We agreed to buy the quiet switch. "
            "Remember that lunch is upstairs. Notebooks are useful. We should think more.")
    assert key_facts(text) == ["carol: Note for the team: the password hint is walrus.",
                               "carol: We agreed to buy the quiet switch.", "carol: Remember that lunch is upstairs."]


def test_compressed_history_keeps_a_fact_that_drop_oldest_loses(paris):
    dropper, keeper = make(paris, n_ctx=768), make(paris, n_ctx=768, policy="compress", summary_tokens=24)
    chat, _ = debate(dropper, 8)
    fitted, dropped, _ = dropper.prepare(chat, 24)
    assert dropped > 0 and not any("4711" in m["content"] for m in fitted)   # the old turn with the fact is gone

    chat, gens = debate(keeper, 8)
    fitted, dropped, _ = keeper.prepare(chat, 24)
    assert dropped == 0
    assert fitted[1]["content"].startswith("Task: where is the key?")          # the task stays first
    assert "bob: " + FACT in fitted[1]["content"]                               # the fact, word for word
    assert "Summary of the earlier conversation: Paris is the capital." in fitted[1]["content"]  # the expert's own
    assert keeper.prompter.count(fitted) <= keeper.n_ctx - 24
    folds = [g.memory["fold"] for g in gens if g.memory and "fold" in g.memory]
    assert folds and all(f["summary_call"]["completion_tokens"] > 0 for f in folds)
    # the summarizing call starts as the expert's last prompt did: llama.cpp evaluates little more than the request
    assert all(f["summary_call"]["prompt_eval_tokens"] < f["summary_call"]["prompt_tokens"] // 2 for f in folds)
    assert [m["role"] for m in fitted[2:]] == ["assistant", "user"] * (len(fitted[2:]) // 2) + ["user"] * (len(fitted) % 2)


def test_the_prefix_stays_stable_between_folds_and_one_call_per_turn_at_most(paris):
    keeper = make(paris, n_ctx=1024, policy="compress")
    calls = []
    create = keeper.llm.create_completion

    def counted(*a, **kw):
        calls.append(kw.get("stream", False))
        return create(*a, **kw)

    keeper.llm.create_completion = counted
    _, gens = debate(keeper, 16)
    assert len(calls) <= 2 * len(gens)                                           # the answer and at most one summary
    folds = [i for i, g in enumerate(gens) if "fold" in (g.memory or {})]
    assert sum(not stream for stream in calls) == len(folds) and 2 <= len(folds) <= len(gens) // 3
    # a round after one without a fold evaluates its new tokens only: the prefix (system, task, summary, kept
    # turns) is in llama.cpp's KV cache
    quiet = [i for i in range(1, len(gens)) if i not in folds]
    assert quiet and all(gens[i].prompt_eval_tokens <= gens[i].prompt_tokens - gens[i - 1].prompt_tokens + 8
                         for i in quiet)


def test_a_folded_fact_is_restated_beside_a_question_about_it_and_stays_there(paris):
    keeper = make(paris, n_ctx=1024, policy="compress")
    chat, gens = debate(keeper, 12)
    assert any("fold" in (g.memory or {}) for g in gens)
    chat[-1] = {"role": "user", "content": "Quick question: what is the vault code?"}
    asked = keeper.answer(chat)
    fitted, _, _ = keeper.prepare(chat, 24)
    assert fitted[-1]["content"] == f"{chat[-1]['content']}\n\n{REMINDER_HEAD}\n- bob: {FACT}"   # next to the question
    # a filler turn shares no word with the fact (the speaker's name does not count): nothing is restated, and the
    # question keeps its reminder in every later prompt, so llama.cpp's cache still holds it
    chat += [{"role": "assistant", "content": asked.content},
             {"role": "user", "content": f"The other experts said:\n[bob] {FILLER}\n\nGive your improved answer."}]
    later = keeper.answer(chat)
    fitted, _, _ = keeper.prepare(chat, 24)
    assert REMINDER_HEAD not in fitted[-1]["content"] and fitted[-3]["content"].endswith(FACT)
    assert later.prompt_eval_tokens <= later.prompt_tokens - asked.prompt_tokens + 8
    # remind_facts = 0: none
    quiet = make(paris, n_ctx=1024, policy="compress", remind_facts=0)
    chat, _ = debate(quiet, 12)
    chat[-1] = {"role": "user", "content": "Quick question: what is the vault code?"}
    assert REMINDER_HEAD not in quiet.prepare(chat, 24)[0][-1]["content"]


def test_the_summarizer_reads_the_cached_prompt_when_peers_say_a_lot(paris):
    """Peers' long turns make the prompt overshoot the context by more than one turn; the fold still starts
    while the expert's previous prompt, the request and the summary fit, so llama.cpp evaluates only the request
    (before, the summarizer's prompt was cut at its start and evaluated whole)."""
    keeper = make(paris, n_ctx=1024, policy="compress", summary_tokens=96, facts_tokens=128)
    _, gens = debate(keeper, 14, filler=" ".join([FILLER] * 4))
    folds = [g.memory["fold"]["summary_call"] for g in gens if g.memory and "fold" in g.memory]
    ask = keeper.compressor.ask_tokens
    assert len(folds) >= 2 and all(c["prompt_eval_tokens"] <= ask + 16 for c in folds), (ask, folds)
    assert all(c["prompt_tokens"] + 96 <= 1024 for c in folds)


def test_drop_oldest_drops_the_fewest_turns_in_a_few_renders(paris):
    e = make(paris, n_ctx=512)
    chat = [{"role": "system", "content": "You are alice."}, {"role": "user", "content": "Task: where is the key?"}]
    for i in range(100):
        chat += [{"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": f"{FILLER} ({i})"}]
    fewest = next(k for k in range(len(chat)) if e.prompter.count([*chat[:2], *chat[2 + k:]]) <= 512 - 24)
    renders = []
    count = e.prompter.count
    e.prompter.count = lambda m: renders.append(1) or count(m)
    fitted, dropped = e.fit(chat, 24)
    assert dropped == fewest and fitted == [*chat[:2], *chat[2 + fewest:]]
    assert len(renders) <= 10                                    # bisection: not one render per dropped turn


def test_drop_oldest_stays_the_default(paris):
    e = make(paris)
    _, gens = debate(e, 6)
    assert any(g.dropped_messages for g in gens) and all(g.memory is None for g in gens)


def test_a_swarm_compresses_on_its_ranks(write_spec, tiny, tmp_path, cli):
    """Three experts on three mpiexec ranks, a context too small for eight rounds: no message is dropped, each
    expert folds its history itself and the transcript says so."""
    spec = write_spec([expert("alice", tiny["paris"], n_ctx=512), expert("bob", tiny["rome"], n_ctx=512),
                       expert("carol", tiny["paris"], n_ctx=512)], rounds=8)
    spec.write_text(spec.read_text() + '\n[memory]\npolicy = "compress"\nsummary_tokens = 32\nfacts_tokens = 48\n')
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    replies = [r for r in messages(run_dir_from(res.out)) if r["role"] == "expert" and r["round"] <= 8]
    assert len(replies) == 3 * 8 and all(r["status"] in ("ok", "echo") for r in replies), \
        [(r["id"], r["status"], r.get("error")) for r in replies]
    assert all(r["dropped_messages"] == 0 for r in replies)
    folds = {r["expert"] for r in replies if "fold" in r.get("memory", {})}
    assert folds == {"alice", "bob", "carol"}
    assert all(r["memory"]["policy"] == "compress" for r in replies)
