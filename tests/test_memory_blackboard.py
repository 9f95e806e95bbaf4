"""The shared blackboard on rank 0: "@board:" posts, shown to every expert in every round within a budget,
written to the run directory; on real mpiexec ranks with tiny GGUFs."""

from __future__ import annotations

import json

from conftest import expert, messages, run_dir_from
from tinygguf import write_tiny_gguf

from swarm_hpc.core.dialogue import Dialogue, make_reply
from swarm_hpc.core.spec import parse_spec
from swarm_hpc.memory.blackboard import Blackboard, posts
from swarm_hpc.memory.store import Store


def test_posts_are_kept_once_within_the_budget():
    assert posts("I agree.\n@board: The vault code is 4711.\n- @Board, Alice keeps the key") == [
        "The vault code is 4711.", "Alice keeps the key"]
    b = Blackboard(budget_tokens=20)
    b.post("r1.a", "a", ["The vault code is 4711."])
    b.post("r1.b", "b", ["the vault code is 4711", "Alice keeps the key."])   # the same fact: once
    assert [e.id for e in b.entries] == ["r1.a@board", "r1.b@board2"]
    b.post("r2.a", "a", ["We meet at noon on Friday in room 12."])
    assert b.tokens() <= 20 and b.entries[-1].text.startswith("We meet") and b.dropped >= 1   # the oldest left


def test_every_turn_shows_the_board():
    spec = parse_spec({"task": "t", "strategy": "debate", "rounds": 2, "memory": {"policy": "blackboard"},
                       "experts": [{"name": "a", "model": "m.gguf", "persona": "You are a."},
                                   {"name": "b", "model": "m.gguf", "persona": "You are b."}]}, "spec.toml")
    d = Dialogue(spec)
    assert "@board: the fact" in d.opening("a", "Answer.").messages[0]["content"]
    d.opening("b", "Answer.")
    d.record({"a": make_reply("a", "r1.a", "@board: The vault code is 4711.", d.names),
              "b": make_reply("b", "r1.b", "Fine.", d.names)})
    for name in ("a", "b"):
        turn = d.after_round(name, [], "Answer.")
        assert "Blackboard (what the swarm agreed on so far):\n- a: The vault code is 4711." in turn.messages[-1]["content"]
        assert "r1.a@board" in turn.saw


def test_a_swarm_keeps_a_blackboard(write_spec, tiny, tmp_path, cli):
    poster = write_tiny_gguf(tmp_path / "poster.gguf", "@board: Zanzibar keeps code 4711.")
    spec = write_spec([expert("alice", poster), expert("bob", tiny["paris"]), expert("carol", tiny["rome"])],
                      rounds=3, synthesizer="bob")
    store = tmp_path / "memory"
    spec.write_text(spec.read_text() + f'\n[memory]\npolicy = "blackboard"\nstore = "{store}"\n')
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    board = json.loads((run_dir / "blackboard.json").read_text())
    assert board["entries"] == [{"id": "r1.alice@board", "by": "alice", "text": "Zanzibar keeps code 4711."}]
    recs = messages(run_dir)
    replies = {r["id"]: r for r in recs if r["role"] == "expert"}
    for rnd in (2, 3):                     # every expert, every round after the post
        for name in ("alice", "bob", "carol"):
            assert "r1.alice@board" in replies[f"r{rnd}.{name}"]["saw"]
    assert not any(r["role"] == "direct" for r in recs)   # "@board:" is not a private note
    with Store(store) as s:
        assert "Zanzibar keeps code 4711." in [f.text for f in s.all()]   # learned with the final answer
