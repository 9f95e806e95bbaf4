"""verify-and-select: the checker that computes a reply's `Calc:` line (no code runs), the vote over checked
answers, and the `verify` and `calc:<expert>` arms of `swarm-hpc eval` on real mpiexec ranks."""

from __future__ import annotations

import json

import pytest
from conftest import expert
from hypothesis import given
from hypothesis import strategies as st
from tinygguf import write_tiny_gguf

from swarm_hpc.core.calc import calc, evaluate, run_program
from swarm_hpc.core.dialogue import make_reply
from swarm_hpc.core.rundir import load_snapshot
from swarm_hpc.core.strategies.program import PROGRAM_INSTRUCTION
from swarm_hpc.core.strategies.verify import checked_tally
from swarm_hpc.eval.arms import parse_arms


@pytest.mark.parametrize("line, value", [
    ("Calc: 3 * 4 = 12", 12), ("calc: (45-5)/2*3", 60), ("**Calc:** 1,200 x 3 + $5", 3605), ("Calc: 2^10", 1024),
    ("Calc: 20% * 50", 10), ("Calc: round(10/3, 2)", 3.33), ("Calculation = 7 ÷ 2", 3.5), ("- Calc: -(2 - 9) * 3.", 21),
])
def test_a_calc_line_is_computed(line, value):
    c = calc(f"Let me think.\n{line}\nAnswer: 1")
    assert c is not None and c.value == pytest.approx(value)


@pytest.mark.parametrize("expression", [
    '__import__("os").system("true")', "open('/etc/passwd')", "x + 1", "9**9**9", "10**400", "(1).__class__",
    "lambda: 1", "[1, 2]", "1 if 2 else 3", "", "1e309 * 10", "True + 1", "max(*[1])",
])
def test_nothing_but_arithmetic_is_computed(expression):
    assert evaluate(expression) is None


@given(st.text(max_size=200))
def test_any_text_is_a_value_or_none(text):
    value = evaluate(text)
    assert value is None or abs(value) <= 1e15


def reply(name: str, text: str):
    return make_reply(name, f"r1.{name}", text, ["a", "b", "c"])


def test_the_vote_is_over_checked_answers():
    # two experts set 6 * 7 up right and add it up wrong; the checker computes their lines
    final = checked_tally([reply("a", "Calc: 6 * 7\nAnswer: 41"), reply("b", "Calc: 6*7\nAnswer: 43"),
                           reply("c", "Answer: 41")])
    assert final.content.endswith("Answer: 42") and "6 * 7 = 42" in final.content
    # a tie goes to the checked answer an expert also stated
    final = checked_tally([reply("a", "Calc: 2 + 2\nAnswer: 5"), reply("b", "Calc: 2 * 3\nAnswer: 6")])
    assert final.content.endswith("Answer: 6")
    # then to a computed answer over one only stated
    final = checked_tally([reply("a", "The total is 13."), reply("b", "Calc: 72 - 54 + 4 - 3\nAnswer: 7")])
    assert final.content.endswith("Answer: 19")
    # without a Calc line it is a plain vote
    assert checked_tally([reply("a", "Answer: 7"), reply("b", "Answer: 7"), reply("c", "Answer: 8")]).content == "Answer: 7"


def eval_arms(tmp_path, write_spec, cli, experts, questions: str, arms: str):
    """`swarm-hpc eval` of scripted experts on mpiexec ranks: the results' arms and the eval folder."""
    spec = write_spec(experts, strategy="vote")
    (tmp_path / "q.jsonl").write_text(questions)
    out = tmp_path / "ev"
    res = cli("eval", spec, "--questions", tmp_path / "q.jsonl", "--arms", arms, "--out", out)
    assert res.rc == 0, res.err
    return json.loads((out / "results.json").read_text())["arms"], out


def test_verify_and_calc_arms_share_one_run(tmp_path, write_spec, cli):
    wrong_sum = write_tiny_gguf(tmp_path / "w.gguf", "Calc: 6 * 7 Answer: 41")
    right = write_tiny_gguf(tmp_path / "r.gguf", "Calc: 6*7 =42 Answer: 42")
    seven = write_tiny_gguf(tmp_path / "s.gguf", "Answer: 7")
    arms, out = eval_arms(tmp_path, write_spec, cli, [expert("alice", wrong_sum), expert("bob", right), expert("carol", seven)],
                          '{"question": "What is 6 * 7?", "answer": 42}\n{"question": "What is 3 + 4?", "answer": 7}\n',
                          "single:alice,calc,verify")
    assert set(arms) == {"single:alice", "calc:alice", "calc:bob", "calc:carol", "verify"}
    assert arms["single:alice"]["accuracy"] == 0                          # 41 is wrong
    assert arms["calc:alice"]["accuracy"] == pytest.approx(0.5)           # its Calc line gives 42
    assert arms["calc:carol"]["accuracy"] == pytest.approx(0.5)           # no Calc line: its stated 7
    assert arms["verify"]["accuracy"] == pytest.approx(0.5)               # 42 checked twice beats 7
    assert sorted(p.name for p in (out / "runs").glob("*/*")) == ["single", "single", "verify", "verify"]
    assert "Answer: 42" in next((out / "runs").glob("0000*/verify/final.md")).read_text()


@pytest.mark.parametrize("reply_text, value", [
    ("```python\napples = 5\nprice = 0.5 * 3\nanswer = apples * price\n```", 7.5),
    ("```python\nx = 442\ny = x * 0.5 + 7\ntotal = x + y\nprint(total)\n```", 670),              # what it prints last
    ("```python\ndef solution():\n    a = 2\n    a *= 3\n    return a + 1\n\nprint(solution())\n```", 7),
    ("```py\ncount: int = 4\nanswer = count ** 2\n```", 16), ("``` x=6; answer=x*7 ```", 42),
    ("```python\nper_day = 160 * 0.7\nweekly = per_day * 5\nper_day = 0\n```", 0),       # the last name assigned
    ("```python\nper_day = 160 * 0.7\nweekly = per_day * 5\n```", 560),
    ("Here:\n```python\nanswer = 1\n```\nor better:\n```python\nanswer = 2\n```", 2),
])
def test_a_program_of_assignments_is_run(reply_text, value):
    c = calc(reply_text)
    assert c is not None and c.value == pytest.approx(value)


@pytest.mark.parametrize("source", [
    "import os\nanswer = 1", "answer = y + 1", "for i in range(3):\n    answer = i", "answer = (1).__class__",
    "answer = open('/etc/passwd')", "answer = [1, 2]", "while True:\n    pass", "def f(x):\n    return x\nanswer = f(2)",
    "answer = 9**9**9", "x = 1\nx.y = 2", "answer = sum(i for i in [1])", "exec('answer = 1')",
])
def test_nothing_but_assignments_and_arithmetic_runs(source):
    assert run_program(source) is None


@given(st.text(max_size=300))
def test_any_program_text_is_a_value_or_none(text):
    value = run_program(text)
    assert value is None or abs(value) <= 1e15


def test_program_and_code_arms_share_one_run(tmp_path, write_spec, cli):
    right = write_tiny_gguf(tmp_path / "r.gguf", "```python x=6; answer=x*7 ```")
    wrong = write_tiny_gguf(tmp_path / "w.gguf", "```python answer=6+7 ```")
    arms, out = eval_arms(tmp_path, write_spec, cli, [expert("alice", right), expert("bob", wrong), expert("carol", right)],
                          '{"question": "What is 6 * 7?", "answer": 42}\n', "code,program")
    assert {k: v["accuracy"] for k, v in arms.items()} == {"code:alice": 1, "code:bob": 0, "code:carol": 1, "program": 1}
    assert sorted(p.name for p in (out / "runs").glob("*/*")) == ["program"]
    # each expert is asked for a program, whatever the eval's instruction for text answers says
    swarm, _ = load_snapshot(out)
    arm = parse_arms("program", swarm)[0]
    assert arm.strategy(arm.spec(swarm, "What is 6 * 7?")).instruction == PROGRAM_INSTRUCTION
