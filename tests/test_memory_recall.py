"""Recall by meaning (swarm_hpc/knowledge/recall.py): the memory store's facts embedded once with the real minilm
(llama.cpp), found by a paraphrase that BM25 misses, never a forgotten fact, and nothing lost when two processes
add facts and search at once."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

from swarm_hpc.knowledge.recall import EmbeddingRetriever, Recall, model_key
from swarm_hpc.memory.retrieval import LexicalRetriever
from swarm_hpc.memory.store import Store

CARETAKER = "The caretaker of the lab is Ottoline."
CAFETERIA = "The cafeteria opens at 8."
BUDGET = "The budget in euros is 4820."
MEETING = "The weekly meeting is on Thursday."
FACTS = [CARETAKER, "The lab looks out over the river.", CAFETERIA, "The lab's printer is on floor 3.", BUDGET,
         MEETING, "After the meeting, the lab is locked."]


def texts(facts) -> list[str]:
    return [f.text for f in facts]


def store_of(folder, facts=FACTS) -> Store:
    s = Store(folder)
    for f in facts:
        s.add(f)
    return s


class Counting:
    """The real embedder, keeping every text it is asked to embed."""

    def __init__(self, embedder):
        self.embedder, self.model, self.dim, self.path = embedder, embedder.model, embedder.dim, embedder.path
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += texts
        return self.embedder.embed(texts)


def test_a_paraphrase_recalls_the_fact_that_bm25_misses(tmp_path, minilm):
    with store_of(tmp_path / "memory") as s:
        by_meaning, by_words = EmbeddingRetriever(s, minilm), LexicalRetriever(s)
        assert by_meaning.name == "minilm" and by_words.name == "bm25"
        # BM25 ranks the facts that share "looks", "after" and "lab" with it first
        assert CARETAKER in texts(by_meaning.search("Who looks after the lab?", 2))
        assert CARETAKER not in texts(by_words.search("Who looks after the lab?", 2))
        for question, fact in [("What time is lunch served?", CAFETERIA), ("How much money can we spend?", BUDGET),
                               ("Which day do we get together each week?", MEETING)]:   # no word in common
            assert texts(by_meaning.search(question, 1)) == [fact], question
            assert by_words.search(question, 1) == [], question
        assert len(by_meaning.search("anything", 100)) == len(FACTS)
        assert by_meaning.search("  ", 3) == [] and by_meaning.search("lunch", 0) == []


def test_each_fact_is_embedded_once_and_kept_in_the_store(tmp_path, minilm):
    key = model_key(minilm)
    assert key.startswith("all-MiniLM-L6-v2@sha256:") and len(key.split(":")[1]) == 64
    with store_of(tmp_path / "memory") as s:
        counting = Counting(minilm)
        assert texts(EmbeddingRetriever(s, counting).search("What time is lunch served?", 1)) == [CAFETERIA]
        assert sorted(counting.texts) == sorted(FACTS + ["What time is lunch served?"])
        counting.texts.clear()
        EmbeddingRetriever(s, counting).search("Who looks after the lab?", 2)   # a new retriever: the store's vectors
        assert counting.texts == ["Who looks after the lab?"]
        counting.texts.clear()
        s.add("Lunch is served at noon in the hall.")                         # a new fact: embedded on the next search
        assert texts(EmbeddingRetriever(s, counting).search("What time is lunch served?", 1)) == [
            "Lunch is served at noon in the hall."]
        assert counting.texts == ["Lunch is served at noon in the hall.", "What time is lunch served?"]
        kept = dict((f.text, v) for f, v in s.with_vectors(key))
        assert all(v is not None and len(v) == 4 * 384 for v in kept.values())
        assert s.with_vectors("another-model@sha256:0")[0][1] is None            # keyed by model
        # vectors of another file of this model go when this one embeds anew; another model's stay
        fact = s.with_vectors(key)[0][0].id
        s.put_vectors("all-MiniLM-L6-v2@sha256:0", {fact: b"old"})
        s.put_vectors("bge-small@sha256:0", {fact: b"other"})
        s.add("The printer is in room B2.")
        EmbeddingRetriever(s, counting).search("Where is the printer?", 1)
        assert s.with_vectors("all-MiniLM-L6-v2@sha256:0")[0][1] is None
        assert s.with_vectors("bge-small@sha256:0")[0][1] == b"other"
    with Store(tmp_path / "memory", create=False) as s:                           # another process's view of it
        counting = Counting(minilm)
        EmbeddingRetriever(s, counting).search("Where is the printer?", 1)
        assert counting.texts == ["Where is the printer?"]
        assert s.check() == "ok"


def test_a_forgotten_fact_is_never_recalled_and_its_vector_goes(tmp_path, minilm, cli):
    store = tmp_path / "memory"
    with store_of(store) as s:
        r, key = EmbeddingRetriever(s, minilm), model_key(minilm)
        cafeteria = r.search("What time is lunch served?", 1)[0]
        assert cafeteria.text == CAFETERIA
        assert s.forget(cafeteria.id)
        assert CAFETERIA not in texts(r.search("What time is lunch served?", 100))
        assert s.db.execute("SELECT COUNT(*) FROM vectors WHERE fact = ?", (cafeteria.id,)).fetchone()[0] == 0
        assert s.put_vectors(key, {cafeteria.id: b"\0" * 4 * 384}) == 0   # a search that embedded it before: no vector
        budget = r.search("How much money can we spend?", 1)[0]
    assert cli("memory", "forget", store, str(budget.id)).rc == 0        # a process that never loads the model
    with Store(store) as s:
        assert BUDGET not in texts(EmbeddingRetriever(s, minilm).search("How much money can we spend?", 100))
        assert s.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == len(FACTS) - 2


def test_the_cli_searches_by_meaning_or_with_bm25_by_words(tmp_path, minilm, cli):
    store = tmp_path / "memory"
    store_of(store).close()
    first = cli("memory", "search", store, "What time is lunch served?", "-k", "1")
    assert first.rc == 0 and first.out.strip().endswith(CAFETERIA) and first.err == "", first.err
    with Store(store) as s:
        assert s.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == len(FACTS)   # kept for the next search
    assert cli("memory", "search", store, "What time is lunch served?", "--bm25").out == ""
    assert cli("memory", "search", store, "When does the cafeteria open?", "--bm25", "-k", "1").out.strip().endswith(
        CAFETERIA)
    skipped = cli("memory", "search", store, "What time is lunch served?",
                  env={"SWARM_HPC_SKIP_MODELS": os.environ.get("SWARM_HPC_SKIP_MODELS", "") + ",minilm"})
    assert skipped.rc == 0 and skipped.out == "" and len(skipped.err.strip().splitlines()) == 1
    assert "minilm is skipped (SWARM_HPC_SKIP_MODELS), so the store is searched by words (BM25)" in skipped.err


SEARCHER = """
import sys
from swarm_hpc.knowledge.recall import Recall
from swarm_hpc.memory.store import Store
name, n = sys.argv[1], int(sys.argv[2])
with Store(sys.argv[3]) as s, Recall() as recall:
    r = recall(s)
    assert r.name == "minilm", r.name
    seen = 0   # the other process's facts this one saw while it worked
    for i in range(n):
        fact = s.add(f"{name} fact number {i} is {i * 7}.", source=name)
        found = r.search(fact.text, 1)
        assert [f.id for f in found] == [fact.id], (fact, found)
        print(fact.id, flush=True)
        if i < n - 1:
            seen = max(seen, sum(f.source != name for f in s.all()))
    print(f"seen {seen}")
"""


def test_two_processes_adding_and_searching_at_once_lose_nothing(tmp_path, minilm):
    store = tmp_path / "memory"
    Store(store).close()
    procs = [subprocess.Popen([sys.executable, "-c", SEARCHER, name, "100", str(store)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("alpha", "beta")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ids = sorted(int(line) for out, _ in outs for line in out.splitlines() if not line.startswith("seen"))
    seen = [int(line.split()[1]) for out, _ in outs for line in out.splitlines() if line.startswith("seen")]
    assert max(seen) > 0, seen   # they did run at once
    with Store(store) as s:
        assert s.check() == "ok"
        facts = s.all()
        assert len(facts) == 200 and sorted(f.id for f in facts) == ids
        key = model_key(minilm)
        assert all(v is not None for _, v in s.with_vectors(key))
        assert s.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 200   # one each, none left over
        counting = Counting(minilm)
        assert texts(EmbeddingRetriever(s, counting).search("beta fact number 7 is 49.", 1)) == [
            "beta fact number 7 is 49."]
        assert counting.texts == ["beta fact number 7 is 49."]


def test_without_minilm_recall_falls_back_to_bm25_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_HPC_SKIP_MODELS", "minilm")
    said: list[str] = []
    with store_of(tmp_path / "memory") as s, Recall(say=said.append) as recall:
        assert isinstance(recall(s), LexicalRetriever) and isinstance(recall(s), LexicalRetriever)
        assert texts(recall(s).search("Who keeps the budget?", 1)) == [BUDGET]
    assert len(said) == 1 and "minilm is skipped" in said[0] and "searched by words (BM25)" in said[0]
