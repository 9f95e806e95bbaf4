"""Experts that read, on real MPI ranks with real llama.cpp: indexes built by `swarm-hpc index build` with a tiny
embedding GGUF (tests/tinybert.py), tiny chat GGUFs as experts (tests/tinygguf.py), and the prompts llama.cpp
really evaluated (SWARM_HPC_TEST_PROMPTS, tests/expert_faults.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import expert, messages, run_dir_from
from test_mpi_swarm import by_round, prompts_of
from tinybert import tiny_bert_gguf

from swarm_hpc.core.passages import HEADER

HW = "The Zorblax cluster runs its nodes at 48 volts. Its switch is called Quarn."
SW = "Jobs on Zorblax are queued by the Quibble scheduler. Quibble keeps at most 9 jobs per user."
SHORT = "Zorblax nodes boot from Flimsy."
LONG = " ".join(f"Rack {i} of the Zorblax cluster holds sixteen blades and two spare power units." for i in range(8))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert_gguf(tmp_path_factory.mktemp("bert"), "tiny-bert")


def build(cli, folder: str, out: str, bert, cwd) -> None:
    r = cli("index", "build", folder, "--out", out, "--model", bert, cwd=cwd)
    assert r.rc == 0, r.err


def knowledge(spec, table: str) -> None:
    spec.write_text(spec.read_text() + "\n" + table)


def test_experts_read_their_own_collections_and_cite(write_spec, tiny, tmp_path, cli, bert):
    for name, text in (("hw", HW), ("sw", SW)):
        (tmp_path / "docs" / name).mkdir(parents=True)
        (tmp_path / "docs" / name / f"{name}.md").write_text(text + "\n")
        build(cli, f"docs/{name}", f"{name}.index", bert, tmp_path)
    spec = write_spec([expert("alice", tiny["paris"], collection="hw", n_ctx=1024),
                       expert("bob", tiny["rome"], collection="sw", n_ctx=1024), expert("carol", tiny["rome"])],
                      rounds=1, batch_experts=False)
    knowledge(spec, '[knowledge]\ntop_k = 3\nmin_score = -1.0\n[knowledge.collections]\nhw = "hw.index"\n'
                    'sw = "sw.index"\n')
    seen = tmp_path / "prompts"
    seen.mkdir()
    res = cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_TEST_PROMPTS": str(seen)})
    assert res.rc == 0, res.err
    assert "knowledge: 2 passage(s) retrieved for 2 expert(s) (alice 1, bob 1)" in res.out
    run_dir = run_dir_from(res.out)
    recs = messages(run_dir)
    # the task record: what was retrieved for whom (carol reads no index)
    task = recs[0]
    assert set(task["retrieved"]) == {"alice", "bob"}
    hit = task["retrieved"]["alice"][0]
    assert (hit["id"], hit["source"], hit["text"]) == ("hw#0", "docs/hw/hw.md", HW)
    assert task["retrieved"]["bob"][0]["id"] == "sw#0"
    # what the models really evaluated: each its own documents, numbered, with the request to cite
    prompts = {n: prompts_of(seen, n) for n in ("alice", "bob", "carol")}
    assert HEADER in prompts["alice"][1] and f"[1] ({hit['source']}) {HW}" in prompts["alice"][1]
    assert SW not in prompts["alice"][1] and "Quibble" in prompts["bob"][1] and "Quarn" not in prompts["bob"][1]
    assert HEADER not in prompts["carol"][1] and "Zorblax" not in prompts["carol"][1]
    # in every turn: the final step's synthesis (alice, the first expert) reads hers too
    assert all(HW in p for p in prompts["alice"].values()) and len(prompts["alice"]) == 2
    # each reply's record lists the passages its expert saw, as it numbered them
    rounds = by_round(recs)
    assert rounds[1]["alice"]["passages"] == [{"n": 1, "id": "hw#0", "source": hit["source"], "score": hit["score"]}]
    assert [p["id"] for p in rounds[1]["bob"]["passages"]] == ["sw#0"]
    assert "passages" not in rounds[1]["carol"] and "passages_cut" not in rounds[1]["alice"]
    final = next(r for r in recs if r["role"] == "final")
    assert by_round(recs)[2]["alice"]["passages"][0]["id"] == "hw#0" and final["content"]
    # `show` prints the citations, `show --json` keeps them
    shown = cli("show", run_dir)
    assert shown.rc == 0, shown.err
    assert f"passages for alice: hw#0 {hit['source']}" in shown.out
    assert f"  read [1] {hit['source']} {hit['score']:.3f} hw#0" in shown.out
    as_json = [json.loads(line) for line in cli("show", run_dir, "--json").out.splitlines()]
    assert next(r for r in as_json if r.get("id") == "r1.bob")["passages"][0]["id"] == "sw#0"


def test_passages_over_budget_are_cut_per_expert_also_in_a_batch(write_spec, tiny, tmp_path, cli, bert):
    """The long passage does not fit in half of a 512-token context (the tiny models spell it out byte by byte),
    the short one does; a member of a batch with a 2048-token context reads both."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.md").write_text(LONG + "\n")
    (docs / "short.md").write_text(SHORT + "\n")
    build(cli, "docs", "docs.index", bert, tmp_path)
    spec = write_spec([expert("solo", tiny["paris"]), expert("small", tiny["rome"]),
                       expert("big", tiny["rome"], n_ctx=2048)], rounds=1, batch_experts=True)
    knowledge(spec, '[knowledge]\nindex = "docs.index"\ntop_k = 4\nmin_score = -1.0\n')
    seen = tmp_path / "prompts"
    seen.mkdir()
    res = cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_TEST_PROMPTS": str(seen)})
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["batch"] for r in summary["ranks"]] == [[], ["small", "big"]]   # small and big: one batch
    recs = messages(run_dir)
    ids = {h["text"]: h["id"] for h in recs[0]["retrieved"]["solo"]}
    long_id, short_id = ids[LONG], ids[SHORT]
    rounds = by_round(recs)
    for name in ("solo", "small"):
        assert [p["id"] for p in rounds[1][name]["passages"]] == [short_id], rounds[1][name]
        assert rounds[1][name]["passages_cut"] == [long_id]
    assert sorted(p["id"] for p in rounds[1]["big"]["passages"]) == sorted([long_id, short_id])
    assert "passages_cut" not in rounds[1]["big"]
    solo = prompts_of(seen, "solo")[1]
    assert "[1] (" in solo and SHORT in solo and "Rack 3" not in solo
    shown = cli("show", run_dir)
    assert f"left out (no room in n_ctx): {long_id}" in shown.out


def test_a_missing_index_is_one_line_naming_the_command(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    knowledge(spec, '[knowledge]\nindex = "nowhere.index"\n')
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 2 and len(res.err.strip().splitlines()) == 1, res.err
    assert "nowhere.index" in res.err and "swarm-hpc index build" in res.err and "knowledge.index" in res.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_serve_reads_passages_for_the_requests_question(write_spec, tiny, tmp_path, cli, bert):
    """`swarm-hpc serve`: each request's experts read the passages most similar to its last message (the question),
    not to the conversation before it; the request's run directory records them as a run's does."""
    pytest.importorskip("openai")
    from test_serve import start, stop

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hw.md").write_text(HW + "\n")
    (docs / "sw.md").write_text(SW + "\n")
    build(cli, "docs", "docs.index", bert, tmp_path)
    spec = write_spec([expert("alice", tiny["paris"], n_ctx=1024), expert("bob", tiny["rome"], n_ctx=1024)],
                      rounds=1, synthesizer="alice")
    knowledge(spec, '[knowledge]\nindex = "docs.index"\ntop_k = 1\nmin_score = -1.0\n')
    svc = start(spec, tmp_path / "out")
    try:
        r = svc.client().chat.completions.create(model="spec", messages=[
            {"role": "user", "content": HW}, {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": SW}])
        assert r.choices[0].message.content == "Paris is the capital."
        recs = messages(Path(r.model_extra["swarm"]["run_dir"]))
    finally:
        stop(svc)
    assert {name: [h["source"] for h in hits] for name, hits in recs[0]["retrieved"].items()} == \
        {"alice": ["docs/sw.md"], "bob": ["docs/sw.md"]}
    assert recs[0]["retrieved_for"] == SW
    assert all(r["passages"][0]["source"] == "docs/sw.md" for r in recs if r["role"] == "expert")


def test_the_autogen_engine_reads_too(write_spec, tiny, tmp_path, cli, bert):
    """The AutoGen engine's agents call their experts with the passages: the prompts and records show them."""
    pytest.importorskip("autogen_agentchat")
    for name, text in (("hw", HW), ("sw", SW)):
        (tmp_path / "docs" / name).mkdir(parents=True)
        (tmp_path / "docs" / name / f"{name}.md").write_text(text + "\n")
        build(cli, f"docs/{name}", f"{name}.index", bert, tmp_path)
    spec = write_spec([expert("alice", tiny["paris"], collection="hw", n_ctx=1024),
                       expert("bob", tiny["rome"], collection="sw", n_ctx=1024)], rounds=1, engine="autogen")
    knowledge(spec, '[knowledge]\nmin_score = -1.0\n[knowledge.collections]\nhw = "hw.index"\nsw = "sw.index"\n')
    seen = tmp_path / "prompts"
    seen.mkdir()
    res = cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_TEST_PROMPTS": str(seen)})
    assert res.rc == 0, res.err
    recs = messages(run_dir_from(res.out))
    assert [h["id"] for h in recs[0]["retrieved"]["alice"]] == ["hw#0"]
    replies = [r for r in recs if r["role"] == "expert"]
    assert replies and all(r["engine"] == "autogen" for r in replies)
    assert all(r["passages"][0]["id"] == ("hw#0" if r["expert"] == "alice" else "sw#0") for r in replies)
    assert HW in prompts_of(seen, "alice")[1] and SW in prompts_of(seen, "bob")[1]
    assert SW not in prompts_of(seen, "alice")[1]


def test_eval_reads_passages_for_each_question(write_spec, tiny, tmp_path, cli, bert):
    """`swarm-hpc eval`: every question-arm run retrieves for its own question (top_k 1: the document that is it)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hw.md").write_text(HW + "\n")
    (docs / "sw.md").write_text(SW + "\n")
    build(cli, "docs", "docs.index", bert, tmp_path)
    spec = write_spec([expert("alice", tiny["paris"], n_ctx=1024)], strategy="vote", rounds=1)
    knowledge(spec, '[knowledge]\nindex = "docs.index"\ntop_k = 1\nmin_score = -1.0\n')
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "hw", "question": HW, "answer": "48"}) + "\n"
                         + json.dumps({"id": "sw", "question": SW, "answer": "9"}) + "\n")
    res = cli("eval", spec, "--questions", questions, "--arms", "single", "--out", tmp_path / "ev")
    assert res.rc == 0, res.err
    for qid in ("hw", "sw"):
        transcript = next((tmp_path / "ev" / "runs").glob(f"*-{qid}/*/transcript.jsonl"))
        recs = messages(transcript.parent)
        assert [h["source"] for h in recs[0]["retrieved"]["alice"]] == [f"docs/{qid}.md"]
        assert all(r["passages"][0]["source"] == f"docs/{qid}.md" for r in recs if r["role"] == "expert")
