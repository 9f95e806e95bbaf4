"""The memory store across jobs: SQLite facts that survive killed writers and concurrent ones, the CLI, and
real swarms (mpiexec ranks, tiny GGUFs) that recall facts into their prompts and learn their conclusions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, crash_after_first_round, expert, messages, run_dir_from

from swarm_hpc.autogen.runner import system_message
from swarm_hpc.core.dialogue import known_block
from swarm_hpc.core.rundir import load_snapshot
from swarm_hpc.memory.retrieval import LexicalRetriever
from swarm_hpc.memory.store import Store

WRITER = """
import sys
from swarm_hpc.memory.store import Store
name, n = sys.argv[1], int(sys.argv[2])
with Store(sys.argv[3]) as s:
    for i in range(n):
        print(s.add(f"{name} fact number {i} is {i * 7}.", source=name).id, flush=True)
"""


def writer(name: str, n: int, store, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, name, str(n), str(store)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_the_cli_adds_lists_searches_forgets_and_exports(cli, tmp_path):
    store = tmp_path / "memory"
    assert cli("memory", "add", store, "The vault code is 4711.").out.strip() == "1"
    assert cli("memory", "add", store, "Alice keeps the key of the lab.").out.strip() == "2"
    assert cli("memory", "add", store, "the  vault code is 4711").out.strip() == "1"   # the same fact: once
    listed = cli("memory", "list", store, "--json")
    assert [json.loads(line)["text"] for line in listed.out.splitlines()] == [
        "The vault code is 4711.", "Alice keeps the key of the lab."]
    assert "Alice keeps the key" in cli("memory", "search", store, "who keeps the key?").out
    assert cli("memory", "forget", store, "1").rc == 0
    out = tmp_path / "facts.jsonl"
    assert cli("memory", "export", store, "--out", out).rc == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [2]
    # bad input: one line, exit 2, no traceback
    for args in (("forget", store, "99"), ("list", tmp_path / "none"), ("add", store, "  "),
                 ("add", tmp_path / "facts.jsonl", "x")):
        res = cli("memory", *args)
        assert res.rc == 2 and len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, (args, res.err)


def test_two_concurrent_writers_lose_nothing(tmp_path, cli):
    store = tmp_path / "memory"
    procs = [writer("alpha", 300, store), writer("beta", 300, store)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    ids = [int(i) for out, _ in outs for i in out.split()]
    with Store(store) as s:
        facts = s.all()
        assert s.check() == "ok"
    assert len(facts) == 600 and sorted(f.id for f in facts) == sorted(ids)
    assert {f.source for f in facts} == {"alpha", "beta"}
    # and two `swarm-hpc memory add` at once
    adds = [subprocess.Popen([sys.executable, "-m", "swarm_hpc", "memory", "add", str(store), f"Parallel fact {i}."],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in adds)
    assert len(cli("memory", "list", store).out.splitlines()) == 604


def test_a_killed_writer_leaves_every_committed_fact_and_no_lock(tmp_path):
    store = tmp_path / "memory"
    p = writer("doomed", 100000, store)
    committed = []
    assert p.stdout is not None
    while len(committed) < 150:
        committed.append(int(p.stdout.readline()))
    p.send_signal(signal.SIGKILL)   # in the middle of a transaction, most likely
    rest, _ = p.communicate(timeout=30)
    committed += [int(i) for i in rest.split()]
    with Store(store) as s:
        assert s.check() == "ok"
        have = {f.id for f in s.all()}
        assert set(committed) <= have and len(have) <= len(committed) + 1   # at most the one whose id was not printed
        t0 = time.monotonic()
        s.add("Written after the crash.")                                    # nobody holds a lock
        assert time.monotonic() - t0 < 5


def spec_with_store(write_spec, tiny, store, name="spec", task="Where is the spare key of the lab kept?",
                    **memory) -> os.PathLike:
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], name=name, rounds=2, task=task)
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {"store": str(store), "recall": 2, **memory}.items())
    spec.write_text(spec.read_text() + f"\n[memory]\n{table}\n")
    return spec


def test_a_swarm_recalls_facts_and_learns_its_answer(write_spec, tiny, tmp_path, cli):
    store = tmp_path / "memory"
    for fact in ("The spare key of the lab is kept in the blue box.", "The cafeteria opens at 8.",
                 "Bob keeps the lab's spare key on Fridays."):
        assert cli("memory", "add", store, fact).rc == 0
    res = cli("run", spec_with_store(write_spec, tiny, store), "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    recs = messages(run_dir_from(res.out))
    task = next(r for r in recs if r["role"] == "task")
    assert {f["text"] for f in task["recalled"]} == {"The spare key of the lab is kept in the blue box.",
                                                    "Bob keeps the lab's spare key on Fridays."}
    assert f"memory: 2 fact(s) recalled from the store ({task['recalled_by']})" in res.out
    with Store(store) as s:
        learned = [f for f in s.all() if f.source.startswith("run ")]
        assert [f.text for f in learned] == [next(r for r in recs if r["role"] == "final")["content"]]
        assert learned[0].source == f"run {run_dir_from(res.out).name}"
        assert learned[0] in LexicalRetriever(s).search("Paris capital", 5)   # a later run about it recalls it


def test_the_autogen_engine_recalls_and_learns_as_well(write_spec, tiny, tmp_path, cli):
    store = tmp_path / "memory"
    assert cli("memory", "add", store, "The spare key of the lab is kept in the blue box.").rc == 0
    spec = spec_with_store(write_spec, tiny, store, recall=1)
    spec.write_text(spec.read_text().replace('strategy = "debate"', 'strategy = "debate"\nengine = "autogen"'))
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    recs = messages(run_dir_from(res.out))
    task = next(r for r in recs if r["role"] == "task")
    assert [f["text"] for f in task["recalled"]] == ["The spare key of the lab is kept in the blue box."]
    assert "memory: 1 fact(s) recalled from the store" in res.out
    final = next(r for r in recs if r["role"] == "final")
    assert final["content"] and "memory: the final answer is fact 2" in res.out
    with Store(store) as s:
        assert [f.text for f in s.all()][-1] == final["content"]
    # the agents' system messages end with what was recalled, as the native engine's system prompts do
    swarm, _ = load_snapshot(run_dir_from(res.out))
    fact = ["The spare key of the lab is kept in the blue box."]
    assert system_message(swarm, "alice", fact).endswith(known_block(fact))
    assert known_block(fact) == "\n\nWhat you know from earlier work:\n- " + fact[0]


LAB = ("The caretaker of the lab is Ottoline.", "The cafeteria opens at 8.", "The lab's printer is on floor 3.",
       "The budget in euros is 4820.")


def test_a_swarm_recalls_by_meaning_and_says_so(write_spec, tiny, tmp_path, cli, minilm):
    store = tmp_path / "memory"
    for fact in LAB:
        assert cli("memory", "add", store, fact).rc == 0
    spec = spec_with_store(write_spec, tiny, store, task="What time is lunch served?", recall=1, learn=False)
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    task = next(r for r in messages(run_dir_from(res.out)) if r["role"] == "task")
    assert [f["text"] for f in task["recalled"]] == ["The cafeteria opens at 8."]   # BM25: no word in common
    assert task["recalled_by"] == "minilm" and "memory: 1 fact(s) recalled from the store (minilm)" in res.out
    with Store(store) as s:
        assert s.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == len(LAB)   # kept for the next run
        assert LexicalRetriever(s).search("What time is lunch served?", 1) == []


def test_a_swarm_without_minilm_or_asked_for_bm25_recalls_by_words(write_spec, tiny, tmp_path, cli):
    store = tmp_path / "memory"
    for fact in LAB:
        assert cli("memory", "add", store, fact).rc == 0
    task = "When does the cafeteria open for lunch?"
    skip = {"SWARM_HPC_SKIP_MODELS": os.environ.get("SWARM_HPC_SKIP_MODELS", "") + ",minilm"}
    for spec, env, note in [(spec_with_store(write_spec, tiny, store, "a", task, recall=1, learn=False), skip, True),
                            (spec_with_store(write_spec, tiny, store, "b", task, recall=1, learn=False,
                                             retriever="bm25"), {}, False)]:
        res = cli("run", spec, "--out", tmp_path / "runs", env=env)
        assert res.rc == 0, res.err
        rec = next(r for r in messages(run_dir_from(res.out)) if r["role"] == "task")
        assert [f["text"] for f in rec["recalled"]] == ["The cafeteria opens at 8."] and rec["recalled_by"] == "bm25"
        assert "memory: 1 fact(s) recalled from the store (bm25)" in res.out
        said = res.out.count("memory: minilm is skipped (SWARM_HPC_SKIP_MODELS), so the store is searched by words")
        assert said == int(note), res.out
    with Store(store) as s:
        assert s.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0


def test_an_eval_recalls_for_each_question(write_spec, tiny, tmp_path, cli, minilm):
    """`swarm-hpc eval` with a store: every question's run recalls the facts nearest that question (the teach
    benchmark asks its facts this way, in a new job)."""
    store = tmp_path / "memory"
    for fact in LAB:
        assert cli("memory", "add", store, fact).rc == 0
    spec = spec_with_store(write_spec, tiny, store, recall=1, learn=False)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What time is lunch served?", "answer": "8"}\n'
                         '{"question": "Who looks after the lab?", "answer": "Ottoline"}\n')
    res = cli("eval", spec, "--questions", questions, "--arms", "single", "--out", tmp_path / "ev")
    assert res.rc == 0, res.err
    recalled = [[f["text"] for f in next(r for r in messages(d) if r["role"] == "task")["recalled"]]
                for d in sorted((tmp_path / "ev" / "runs").glob("*/single"))]
    assert recalled == [["The cafeteria opens at 8."], ["The caretaker of the lab is Ottoline."]]


def test_the_store_survives_a_killed_swarm_and_the_resume_recalls_the_same(write_spec, tiny, tmp_path, cli):
    store = tmp_path / "memory"
    assert cli("memory", "add", store, "The spare key of the lab is kept in the blue box.").rc == 0
    spec = spec_with_store(write_spec, tiny, store)
    run_dir = crash_after_first_round(spec, tmp_path / "runs", {"SWARM_HPC_TEST_STALL": "bob:2"})
    assert cli("memory", "add", store, "The lab's spare key moved to the green box.").rc == 0   # after the crash
    with Store(store) as s:
        assert s.check() == "ok" and len(s.all()) == 2
    res = cli("run", "--resume", run_dir)
    assert res.rc == 0, res.err
    task = next(r for r in messages(run_dir) if r["role"] == "task")
    assert [f["text"] for f in task["recalled"]] == ["The spare key of the lab is kept in the blue box."]
    with Store(store) as s:
        assert len(s.all()) == 3 and s.check() == "ok"   # the resumed run learned its final answer


def test_recalled_facts_are_in_every_system_prompt_from_the_first_turn():
    from swarm_hpc.core.dialogue import Dialogue
    from swarm_hpc.core.spec import parse_spec

    spec = parse_spec({"task": "t", "strategy": "debate", "rounds": 1, "experts": [
        {"name": "a", "model": "m.gguf", "persona": "You are a."},
        {"name": "b", "model": "m.gguf", "persona": "You are b."}]}, "spec.toml")
    d = Dialogue(spec)
    d.remember(["The vault code is 4711."])
    for turn in (d.opening("a", "Answer."), d.fresh("b", "Sum up.", [])):
        assert turn.messages[0]["role"] == "system"
        assert turn.messages[0]["content"].endswith("What you know from earlier work:\n- The vault code is 4711.")
