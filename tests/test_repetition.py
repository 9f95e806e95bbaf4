"""Echo and loop detection (swarm_hpc/core/repetition.py) on real text: replies that SmolLM2 and Gemma 3 gave in
this project's own demo and in a 30-round debate, answers written to quote the question, and the output of
real tiny GGUF models through llama.cpp. A false flag hides an answer, so the negative cases matter most."""

from __future__ import annotations

import time

import pytest
from conftest import ROOT
from tinygguf import write_tiny_gguf

from swarm_hpc.core.repetition import ECHO, REPETITIVE, echo_verdict, judge, loop_verdict

# --- real replies (transcripts of jobs/examples/demo.toml and of debate.toml run for 30 rounds) ----------------

DEMO_TASK = "What is the most useful thing to do with a Raspberry Pi cluster at home? Name one use and why."
DEBATE_TASK = ("Is it better to run one large language model or a swarm of small ones on a cluster of small boards? "
               "Answer briefly.")

# gemma3, round 1 of the demo: the question, handed back
GEMMA_ECHOES_THE_TASK = "What is the most useful thing to do with a Raspberry Pi cluster at home?"
# smollm2 (moderator), round 1 of the demo: a real answer
MODERATOR_R1 = ("One of the most useful things to do with a Raspberry Pi cluster at home is to create a virtual "
                "machine for your personal computing. It allows you to run multiple machines simultaneously, which can "
                "be a great way to test and debug your projects without needing to physically move around to install "
                "and configure each machine.")
# round 2: the moderator says its round-1 answer again, the engineer copies it with a clause left out
MODERATOR_R2 = ("The most useful thing to do with a Raspberry Pi cluster at home is to create a virtual machine for "
                "your personal computing. It allows you to run multiple machines simultaneously, which can be a great "
                "way to test and debug your projects without needing to physically move around to install and "
                "configure each machine.")
ENGINEER_R2 = ("The most useful thing to do with a Raspberry Pi cluster at home is to create a virtual machine for "
               "your personal computing. It allows you to test and debug your projects without needing to physically "
               "move around to install and configure each machine.")
# the 30-round debate (smollm2): two real first answers ...
OPTIMIST_R1 = ("When it comes to AI, the answer is a matter of personal preference. While a single large language model "
               "can be incredibly powerful, it can also be overwhelming and prone to errors. Swarm algorithms, on the "
               "other hand, can be highly scalable and adaptive, allowing them to adapt to changing environments and "
               "handle large datasets.\n\nHowever, there are instances where a swarm of small ones can be a")
JUDGE_R1 = ("While running a large language model can be beneficial for rapid adaptation and optimization, it can also "
            "lead to a massive cloud of AI that may not be able to handle the complexity of a swarm of small ones. This "
            "is because the swarm of small ones can be more focused and adaptable, and they can handle a wide range of "
            "tasks without the need for a single, massive cloud of AI.")
# ... round 2: the optimist revises, reusing a sentence of its own and one of the judge's (a revision, not an echo)
OPTIMIST_R2 = ("The debate around AI is a complex one with multiple perspectives. While a large language model can be "
               "incredibly powerful, it can also be overwhelming and prone to errors. Swarm algorithms, on the other "
               "hand, can be highly scalable and adaptive, allowing them to handle a wide range of tasks without the "
               "need for a single, massive cloud of AI.\n\nHowever, there is a crucial distinction between the")
# ... round 4: the skeptic loops on the prompt's own framing until max_tokens
SKEPTIC_R4 = ("The other experts said:\n[skeptic] When it comes to AI, the answer is a matter of personal preference. "
              "The other experts said:\n[skeptic] When it comes to AI, the answer is a matter of personal preference. "
              "The other experts said:\n[skeptic] When it comes to AI, the answer is a matter of personal preference. "
              "The other experts said:")


def test_an_echoed_question_is_an_echo_of_the_task():
    v = judge(GEMMA_ECHOES_THE_TASK, DEMO_TASK)
    assert v is not None and v.status == ECHO and v.of == "task" and v.score == 1.0
    assert judge("What is the capital of France?", "What is the capital of France?").status == ECHO


def test_copying_a_peer_or_oneself_is_an_echo():
    v = judge(ENGINEER_R2, DEMO_TASK, {"r1.moderator": MODERATOR_R1})
    assert v is not None and v.status == ECHO and v.of == "r1.moderator" and v.score >= 0.95
    v = judge(MODERATOR_R2, DEMO_TASK, {"r1.moderator": MODERATOR_R1})
    assert v is not None and v.status == ECHO and v.of == "r1.moderator"
    # pasted together from two peers' answers: each alone is half of it, together all of it
    pasted = OPTIMIST_R1.split("\n\n")[0] + " " + JUDGE_R1
    assert echo_verdict(pasted, DEBATE_TASK, {"r1.optimist": OPTIMIST_R1}) is None
    v = judge(pasted, DEBATE_TASK, {"r1.optimist": OPTIMIST_R1, "r1.judge": JUDGE_R1})
    assert v is not None and v.status == ECHO and v.of == "r1.judge"


def test_token_loops_are_repetitive():
    assert judge("the " * 40, "").status == REPETITIVE
    v = judge(SKEPTIC_R4, DEBATE_TASK, {"r3.skeptic": OPTIMIST_R1})
    assert v is not None and v.status == REPETITIVE and v.score > 0.6 and "loops" in v.reason
    assert judge("Paris is the capital. " + "I hope this helps! " * 12, "").status == REPETITIVE
    v = loop_verdict("!" * 300)  # no words at all: zlib sees it
    assert v is not None and v.status == REPETITIVE and "compresses" in v.reason


GEMMA_R2 = "* <strong><em>I prefer the swarm.</em></strong>"   # gemma3 as the judge, 27 of 30 rounds


@pytest.mark.parametrize("answer, task, answers", [
    # real first answers, judged against the task they answer
    (MODERATOR_R1, DEMO_TASK, {}),
    (OPTIMIST_R1, DEBATE_TASK, {}),
    (JUDGE_R1, DEBATE_TASK, {}),
    # a real revision that reuses one sentence of its own and one of a peer's (71 % copied)
    (OPTIMIST_R2, DEBATE_TASK, {"r1.optimist": OPTIMIST_R1, "r1.judge": JUDGE_R1}),
    # answers that quote the question
    ("The capital of France is Paris.", "What is the capital of France?", {}),
    ("You ask what is the most useful thing to do with a Raspberry Pi cluster at home. Run a small Kubernetes lab: "
     "it teaches how real clusters fail and costs a few watts.", DEMO_TASK, {}),
    ("Is it better to run one large language model or a swarm of small ones? A swarm, because each board keeps its "
     "own model in memory and they answer in parallel.", DEBATE_TASK, {}),
    # the fix a task asked for: most words stay, in runs
    ("They're going to the store tomorrow morning with their friends.",
     "Correct this sentence: Their going to the store tomorrow morning with they're friends.", {}),
    # a short answer said again (a position kept, as Gemma 3 did round after round), or agreeing with a peer
    ("Paris is the capital.", "What is the capital of France?", {"r1.alice": "Paris is the capital."}),
    (GEMMA_R2, DEBATE_TASK, {"r1.judge": GEMMA_R2, "r1.optimist": "I prefer the swarm."}),
    ("I think the swarm is better.", DEBATE_TASK, {"r2.optimist": "I think the swarm is better."}),
    ("I agree with bob: Rome is the answer.", "What is the capital of Italy?", {"r1.bob": "Rome is the answer."}),
    # structure that repeats without looping: a list, code, a table
    ("1. The cost of power: a board draws 5 W.\n2. The cost of cooling: none below 30 C.\n3. The cost of "
     "networking: one switch.\n4. The cost of storage: one SD card each.", DEMO_TASK, {}),
    ("for i in range(10):\n    print(i)\nfor j in range(10):\n    print(j * j)\nprint('done')", "Show a loop.", {}),
    ("| board | watts | tok/s |\n|---|---|---|\n| Pi 5 | 5 | 20 |\n| Pi 4 | 4 | 9 |\n| Pi 3 | 3 | 4 |\n"
     "| Zero 2 | 2 | 2 |\n| Jetson | 10 | 40 |", "Compare boards.", {}),
    # a long genuine text (this project's own README) compresses like prose
    ("People run swarms of small local LLMs on clusters of Raspberry Pis and similar boards: a mixture of experts in "
     "which the experts talk to each other. swarm-hpc makes that an HPC batch workload: every MPI rank hosts one "
     "llama.cpp expert (its own GGUF model, persona, context size, threads); rank 0 coordinates parallel rounds: "
     "every expert thinks at the same time, then sees what its peers said.", "What is swarm-hpc?", {}),
])
def test_genuine_answers_are_not_flagged(answer, task, answers):
    assert judge(answer, task, answers) is None


def test_a_looping_tiny_model_is_repetitive_and_a_scripted_answer_is_not(tmp_path, tiny):
    """Real llama.cpp generation: the scripted model that says a sentence forever, cut at max_tokens."""
    from pathlib import Path

    from swarm_hpc.experts.llama import LlamaExpert
    from swarm_hpc.experts.models import resolve_model

    def say(model: Path, max_tokens: int) -> str:
        expert = LlamaExpert("x", resolve_model(str(model), Path(".")), n_ctx=512, threads=1, temperature=0.0,
                             seed=1, max_tokens=max_tokens)
        return expert.answer([{"role": "user", "content": "What is the capital of France?"}]).content

    loop = say(write_tiny_gguf(tmp_path / "loop.gguf", "Rome is the answer.", loop=True), 48)
    assert loop.startswith("Rome is the answer.Rome") or loop.startswith("Rome is the answer. Rome")
    v = judge(loop, "What is the capital of France?")
    assert v is not None and v.status == REPETITIVE
    assert judge(say(tiny["paris"], 48), "What is the capital of France?") is None


def test_judging_is_deterministic_and_cheap_on_long_replies():
    """Rank 0 judges every reply: a runaway loop, or pages of prose against pages of sources, stay cheap."""
    prose = (ROOT / "README.md").read_text()           # ~6000 words of genuine text
    loop = "la li lo " * 1500 + OPTIMIST_R1             # a loop cut at 4500 tokens, then some prose
    answers = {"r1.optimist": OPTIMIST_R1, "r1.judge": JUDGE_R1, "r2.optimist": OPTIMIST_R2}
    copy = {"r1.readme": prose, **answers}
    t0 = time.perf_counter()
    verdicts = [judge(loop, DEBATE_TASK, answers), judge(prose, DEBATE_TASK, answers), judge(prose, DEBATE_TASK, copy)]
    took = time.perf_counter() - t0
    assert [v.status if v else None for v in verdicts] == [REPETITIVE, None, ECHO]
    assert verdicts == [judge(loop, DEBATE_TASK, answers), judge(prose, DEBATE_TASK, answers),
                        judge(prose, DEBATE_TASK, copy)]
    assert took < 5.0  # a generous bound (about 0.1 s here): linear in the words, whatever they say
