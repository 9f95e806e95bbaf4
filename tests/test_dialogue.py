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


def test_without_a_majority_the_vote_takes_a_plurality_of_stated_answers():
    r = lambda n, t: make_reply(n, f"r1.{n}", t, NAMES)
    said = [r("alice", "So 560 emails.\nAnswer: 560"), r("bob", "Add up the emails of the work week."),
            r("carol", "Answer: 15")]
    f = tally(said)                                 # two stated answers, tied: never the reply that states none
    assert f.content in (said[0].public, said[2].public) and "no majority" in f.method
    names = ["alice", "bob", "carol", "dave", "erin"]
    five = [make_reply(n, f"r1.{n}", t, names) for n, t in
            zip(names, ["Answer: 7", "Answer: 7", "Answer: 9", "Answer: 4", "I am not sure."], strict=True)]
    f = tally(five)
    assert f.method == "plurality: 2 of 5 answers agree; no majority" and f.content == "Answer: 7"


def test_vote_counts_the_stated_answers_not_the_wording():
    r = lambda n, t: make_reply(n, f"r1.{n}", t, NAMES)
    f = tally([r("alice", "3 * 4 = 12 apples.\nAnswer: 12"), r("bob", "She has 12 in the end."), r("carol", "Answer: 7")])
    assert f.method.startswith("majority: 2 of 3") and "12" in f.content


def drive(strategy: str, rounds: int = 2, **top):
    """Run a strategy with replies made up on the spot; return the steps it asked for and its final answer."""
    return drive_with(strategy, rounds, {}, **top)


def test_a_synthesis_wrapped_in_a_tag_pair_is_unwrapped():
    # Qwen 1.5B, shown answers listed as "[solver] ...", wrote its moa synthesis as "[swarm]\n...\n[/swarm]"
    _, final = drive_with("moa", 1, {"r2.carol": ("[swarm]\nStep 1: add.\nAnswer: 195\n[/swarm]", "ok")},
                          synthesizer="carol")
    assert final.content == "Step 1: add.\nAnswer: 195" and final.by == "carol"
    _, final = drive_with("moa", 1, {"r2.carol": ("[alice] said 4, [bob] said 5.\nAnswer: 4", "ok")},
                          synthesizer="carol")
    assert final.content == "[alice] said 4, [bob] said 5.\nAnswer: 4"   # no pair around all of it: as it is


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


def drive_with(strategy: str, rounds: int, said: dict[str, tuple[str, str]], **top):
    """Like drive(), but the reply with id `r<round>.<expert>` in `said` is (text, status) instead: a status the
    recorder gave it (swarm_hpc/core/repetition.py), as the strategy receives it live and on resume."""
    run = get_strategy(strategy)(spec(strategy, rounds, **top)).run()
    steps = []
    step = next(run)
    try:
        while True:
            steps.append(step)
            out = {}
            for t in step.turns:
                rid = f"r{step.round}.{t.expert}"
                text, status = said.get(rid, (f"{t.expert} says {step.round}", "ok"))
                out[t.expert] = make_reply(t.expert, rid, text, NAMES, status)
            step = run.send(out)
    except StopIteration as stop:
        return steps, stop.value


def test_each_turn_names_what_its_reply_must_not_merely_repeat():
    steps, _ = drive("debate", rounds=2, synthesizer="carol")
    bob_r2 = next(t for t in steps[1].turns if t.expert == "bob")
    # the answers bob was shown, and his own previous one (the recorder adds the task)
    assert bob_r2.refs == {"r1.alice": "alice says 1", "r1.carol": "carol says 1", "r1.bob": "bob says 1"}
    assert all(t.refs == {} for t in steps[0].turns)        # round 1: only the task
    assert steps[2].turns[0].refs == {}                     # the synthesis may copy the best answer
    steps, _ = drive("vote", rounds=2)
    assert all(t.refs == {} for s in steps for t in s.turns)  # agreeing is what a vote is for
    steps, _ = drive("round-robin", rounds=2)
    assert steps[3].turns[0].refs == {"r1.bob": "bob says 1", "r1.carol": "carol says 1", "r1.alice": "alice says 1"}


def test_an_echo_or_a_loop_is_left_out_and_its_authors_previous_answer_stands():
    loop = "la li lo " * 30
    steps, final = drive_with("debate", 3, {
        "r2.carol": (loop, "repetitive"),
        "r3.carol": ("Task: t", "echo"),          # an echo of the task: no answer of her own
        "r4.alice": ("alice says 1 " * 20, "repetitive"),   # the synthesizer loops too
    }, synthesizer="alice")
    bob_r3 = next(t for t in steps[2].turns if t.expert == "bob")
    prompt = bob_r3.messages[-1]["content"]
    assert "[carol]" not in prompt and "r2.carol" not in bob_r3.saw and "r2.carol" not in bob_r3.refs
    assert "Left out because they only repeated earlier text: carol." in prompt and "No answer came from" not in prompt
    carol_r3 = next(t for t in steps[2].turns if t.expert == "carol")
    # her loop is not fed back to her, nor is an empty turn put in its place: round 2 is left out of her history
    assert [m["role"] for m in carol_r3.messages] == ["system", "user", "assistant", "user"]
    assert carol_r3.messages[2] == {"role": "assistant", "content": "carol says 1"}
    assert carol_r3.refs["r1.carol"] == "carol says 1"                      # her newest real answer
    # the synthesis sees carol's standing answer (round 1), not her echo of round 3
    synth = steps[3].turns[0]
    assert synth.saw == ["r3.alice", "r3.bob", "r1.carol"]
    assert "[carol] carol says 1" in synth.messages[-1]["content"]
    # the synthesizer's loop is not the final answer, and the fallback never picks a flagged reply
    assert "alice says 1 alice" not in final.content
    assert "(repetitive)" in final.method and final.content in ("alice says 3", "bob says 3", "carol says 1")


def test_an_echo_that_states_an_answer_is_a_vote_for_it():
    """Repeating a peer's worked answer in a debate is taking its side: the final vote counts it (the eval showed
    right answers lost when the experts who came round to them were left out)."""
    _, final = drive_with("debate", 2, {"r1.alice": ("12 - 5 = 7. Answer: 7", "ok"), "r1.bob": ("Answer: 9", "ok"),
                                        "r1.carol": ("Answer: 8", "ok"), "r2.alice": ("Answer: 7", "ok"),
                                        "r2.bob": ("12 - 5 = 7. Answer: 7", "echo"), "r2.carol": ("Answer: 8", "ok")},
                          final="vote")
    assert final.method == "majority: 2 of 3 answers agree" and final.content.endswith("Answer: 7")
    steps, _ = drive_with("debate", 3, {"r2.bob": ("12 - 5 = 7. Answer: 7", "echo")})
    carol_r3 = next(t for t in steps[2].turns if t.expert == "carol")
    assert "[bob]" not in carol_r3.messages[-1]["content"]     # still not shown to peers as new text


def test_vote_counts_neither_a_loop_nor_an_echo_of_the_task():
    r = lambda n, t, s="ok": make_reply(n, f"r1.{n}", t, NAMES, s)
    f = tally([r("alice", "Rome"), r("bob", "Rome " * 20, "repetitive"), r("carol", "Paris")])
    assert "no majority" in f.method and f.content in ("Rome", "Paris")
    _, final = drive_with("vote", 2, {"r1.alice": ("Paris", "ok"), "r1.bob": ("Paris", "ok"), "r1.carol": ("Rome", "ok"),
                                      "r2.alice": ("What is it?", "echo"), "r2.bob": ("Paris " * 30, "repetitive"),
                                      "r2.carol": ("Rome", "ok")})
    # alice and bob stand by their first-round answers; no flagged reply is voted for
    assert final.content == "Paris" and final.method.startswith("majority: 2 of 3")


def test_final_vote_ends_a_debate_without_a_synthesis_step():
    steps, final = drive("debate", final="vote")
    assert [len(s.turns) for s in steps] == [3, 3]   # no synthesizer turn
    assert final.by == "vote" and final.method == "majority: 3 of 3 answers agree"  # all say "2"


def test_the_spec_instruction_replaces_the_strategies_own():
    ask = "Think step by step, then end with a line 'Answer: <your answer>'."
    for strategy in ("debate", "vote", "moa", "round-robin"):
        steps, _ = drive(strategy, instruction=ask)
        assert all(t.messages[-1]["content"].endswith(ask) for s in steps for t in s.turns), strategy
    steps, _ = drive("debate", instruction=ask)
    assert "If someone made a mistake (you too), correct it." in steps[1].turns[0].messages[-1]["content"]


def test_self_consistency_draws_independent_sampled_answers_and_votes():
    steps, final = drive("self-consistency", rounds=3)
    assert [len(s.turns) for s in steps] == [3, 3, 3]
    assert all(len(t.messages) == 2 and t.saw == [] for s in steps for t in s.turns)  # no peer, no history
    seeds = [t.sampling.seed for s in steps for t in s.turns if t.expert == "alice"]
    assert seeds == [2, 3, 4] and all(t.sampling.temperature > 0 for s in steps for t in s.turns)
    assert "no majority" in final.method  # the made-up draws say 1, 2 and 3: a three-way tie


def test_a_synthesizer_without_an_answer_gives_way_to_the_longest_last_answer():
    run = get_strategy("debate")(spec("debate", rounds=1, synthesizer="carol")).run()
    step = next(run)
    said = {"alice": "Paris, the capital.", "bob": "Paris, without a doubt the capital.", "carol": "Lyon?"}
    step = run.send({n: make_reply(n, f"r1.{n}", said[n], NAMES) for n in said})
    assert [t.expert for t in step.turns] == ["carol"]
    for status in ("late", "empty", "error"):
        again = get_strategy("debate")(spec("debate", rounds=1, synthesizer="carol")).run()
        next(again)
        again.send({n: make_reply(n, f"r1.{n}", said[n], NAMES) for n in said})
        try:
            again.send({"carol": make_reply("carol", "r2.carol", "", NAMES, status)})
        except StopIteration as stop:
            final = stop.value
        assert (final.by, final.content) == ("bob", said["bob"])
        assert final.method == f"synthesizer carol gave no answer ({status}); longest last answer"
