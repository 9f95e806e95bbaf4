"""Strategy and dialogue logic: directed messages, vote tallies, what each step asks for."""

from __future__ import annotations

from swarm_hpc.core.dialogue import make_reply, split_directs
from swarm_hpc.core.spec import parse_spec
from swarm_hpc.core.strategies import get_strategy
from swarm_hpc.core.strategies.vote import tally

NAMES = ["alice", "bob", "carol"]


def spec(strategy: str, rounds: int = 2, **top):
    return parse_spec({"task": "t", "strategy": strategy, "rounds": rounds,
                       "experts": [{"name": n, "persona": f"I am {n}"} for n in NAMES], **top}, "test")


def test_directed_lines_are_split_from_public_text():
    public, directs = split_directs("I think 4.\n@bob: check my maths\n@zed: nobody\n@alice: me", NAMES, "alice")
    assert directs == [("bob", "check my maths")]
    assert public == "I think 4.\n@zed: nobody\n@alice: me"  # unknown names and self-notes stay public


def test_vote_majority_and_most_similar():
    r = lambda n, t: make_reply(n, f"r1.{n}", t, NAMES)
    assert tally([r("alice", "Paris."), r("bob", "paris"), r("carol", "Rome")]).method.startswith("majority: 2 of 3")
    f = tally([r("alice", "Paris is big"), r("bob", "Paris is large"), r("carol", "Rome")])
    assert f.by in ("alice", "bob") and "most similar" in f.method
    assert tally([make_reply("alice", "r1.alice", "", NAMES, "late")]).by == "none"


def drive(strategy: str, rounds: int = 2, **top):
    """Run a strategy with replies made up on the spot; return the steps it asked for and its final answer."""
    run = get_strategy(strategy)(spec(strategy, rounds, **top)).run()
    steps = []
    step = next(run)
    try:
        while True:
            steps.append(step)
            step = run.send({t.expert: make_reply(t.expert, f"r{step.round}.{t.expert}", f"{t.expert} says {step.round}", NAMES)
                             for t in step.turns})
    except StopIteration as stop:
        return steps, stop.value


def test_debate_asks_everyone_each_round_then_the_synthesizer():
    steps, final = drive("debate", synthesizer="carol")
    assert [len(s.turns) for s in steps] == [3, 3, 1]
    assert steps[2].turns[0].expert == "carol" and final.by == "carol"
    bob_r2 = next(t for t in steps[1].turns if t.expert == "bob")
    assert bob_r2.saw == ["r1.alice", "r1.carol"]
    assert "[alice] alice says 1" in bob_r2.messages[-1]["content"]
    assert [m["role"] for m in bob_r2.messages] == ["system", "user", "assistant", "user"]


def test_round_robin_is_sequential_and_sees_everything_since_its_last_turn():
    steps, final = drive("round-robin", rounds=2)
    assert [[t.expert for t in s.turns] for s in steps] == [["alice"], ["bob"], ["carol"], ["alice"], ["bob"], ["carol"]]
    assert steps[3].turns[0].saw == ["r1.bob", "r1.carol"]
    assert final.by == "carol"


def test_moa_layers_see_the_whole_previous_layer():
    steps, _final = drive("moa", rounds=2)
    assert steps[1].turns[0].saw == ["r1.alice", "r1.bob", "r1.carol"]
    assert len(steps[1].turns[0].messages) == 2  # proposers start fresh each layer
