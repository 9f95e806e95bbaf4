"""`swarm-hpc eval` on real mpiexec ranks and tiny scripted GGUFs whose answers are known in advance: the
arms, the grading, results.json's shape, a killed eval resumed without redoing finished questions, and bad
input as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, expert, wait_for
from tinygguf import write_tiny_gguf


@pytest.fixture
def eval_setup(tmp_path, write_spec):
    m42 = write_tiny_gguf(tmp_path / "a42.gguf", "So Answer: 42")
    m7 = write_tiny_gguf(tmp_path / "a7.gguf", "Answer: 7")
    spec = write_spec([expert("alice", m42), expert("bob", m42), expert("carol", m7)], strategy="vote", rounds=2)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "six-sevens", "question": "What is 6 * 7?", "answer": 42}\n'
                         '{"question": "What is 3 + 4?", "answer": "7"}\n'
                         '{"question": "How many days has a week?", "answer": 7, "kind": "fact"}\n')
    return spec, questions


def test_moa_ends_with_its_aggregator_and_debate_with_a_vote_whatever_the_spec_says():
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.eval.arms import parse_arms

    base = load_spec(ROOT / "jobs" / "eval" / "qwen.toml")   # final = "vote"
    arms = {a.name: a.spec(base, "What is 6 * 7?") for a in parse_arms("moa,debate,debate-synth", base)}
    assert (arms["moa"].strategy, arms["moa"].final, arms["moa"].rounds) == ("moa", "synthesis", base.rounds)
    assert arms["debate"].final == "vote" and arms["debate-synth"].final == "synthesis"
    assert {s.task for s in arms.values()} == {"What is 6 * 7?"}


def test_every_arm_is_graded_on_the_same_questions(eval_setup, tmp_path, cli):
    spec, questions = eval_setup
    out = tmp_path / "ev"
    res = cli("eval", spec, "--questions", questions, "--arms", "single,sc:carol,vote,debate", "--out", out)
    assert res.rc == 0, res.err
    assert "question 3/3" in res.out                          # progress, a line per question
    result = json.loads((out / "results.json").read_text())
    arms = result["arms"]
    assert set(arms) == {"single:alice", "single:bob", "single:carol", "sc:carol", "vote", "debate"}
    assert arms["single:alice"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3) and arms["single:alice"]["n"] == 3
    assert arms["single:carol"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert arms["sc:carol"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert arms["vote"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)    # two say 42, one says 7: 42 wins every vote
    assert arms["debate"]["accuracy_by_round"] == pytest.approx([1 / 3, 1 / 3], abs=1e-3)
    low, high = arms["vote"]["ci"]
    assert 0 <= low <= arms["vote"]["accuracy"] <= high <= 1
    q0 = result["questions"][0]
    assert q0["id"] == "six-sevens" and q0["arms"]["vote"]["correct"] and not q0["arms"]["single:carol"]["correct"]
    assert result["vote_by_experts"]["1"] == pytest.approx(1 / 3 * 2 / 3 + 2 / 3 * 1 / 3, abs=1e-3)
    assert (out / "results.md").read_text().count("\n| ") >= 7
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # every answer is an ordinary run directory, with its transcript
    assert (out / "runs" / "0000-six-sevens" / "vote" / "transcript.jsonl").exists()
    assert (out / "runs" / "0000-six-sevens" / "single" / "final.md").exists()


def test_a_killed_eval_resumes_without_redoing_finished_questions(eval_setup, tmp_path):
    spec, questions = eval_setup
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "swarm_hpc", "eval", str(spec), "--questions", str(questions), "--arms", "single,vote",
           "--out", str(out)]
    env = {**os.environ, "SWARM_HPC_TEST_STALL": "carol:1.5"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "runs" / "0000-six-sevens"
    try:
        wait_for(lambda: (first / "vote" / "final.md").exists(), 120, "the first question")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    kept = {p: p.read_bytes() for p in first.rglob("transcript.jsonl")}
    assert len(kept) == 2
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert {p: p.read_bytes() for p in first.rglob("transcript.jsonl")} == kept   # not run again
    assert json.loads((out / "results.json").read_text())["arms"]["vote"]["n"] == 3
    # a different plan in the same folder is refused, not mixed in
    other = subprocess.run(cmd[:-3] + ["vote", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode == 2 and "holds an eval of other questions or arms" in other.stderr


@pytest.mark.parametrize("line, says", [
    ('{"question": "2+2?"}', "q.jsonl:2: field 'answer' is missing"),
    ('{"question": "2+2?", "answer": 4', "q.jsonl:2: is not valid JSON"),
    ('{"question": "", "answer": 4}', "q.jsonl:2: field 'question'"),
    ('{"question": "2+2?", "answer": [4]}', "q.jsonl:2: field 'answer' must be a number or a string"),
    ('{"question": "2+2?", "answer": 4, "hint": "x"}', "q.jsonl:2: unknown field 'hint'"),
    ('{"id": "a", "question": "2+2?", "answer": 4}', "two questions have the id 'a'"),
])
def test_a_bad_questions_file_is_one_line(tmp_path, write_spec, cli, tiny, line, says):
    spec = write_spec([expert("alice", tiny["paris"])])
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "question": "1+1?", "answer": 2}\n' + line + "\n")
    res = cli("eval", spec, "--questions", q, "--out", tmp_path / "ev")
    assert res.rc == 2 and says in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("args, says", [
    (["--arms", "single,majority"], "unknown arm 'majority'"),
    (["--arms", "single:zed"], "no expert named 'zed'"),
    (["--questions", "rg:no_such_task"], "no_such_task"),
])
def test_bad_arms_and_question_sets_are_one_line(tmp_path, write_spec, cli, tiny, args, says):
    spec = write_spec([expert("alice", tiny["paris"])])
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "1+1?", "answer": 2}\n')
    full = ["--questions", str(q), *args] if args[0] != "--questions" else args
    res = cli("eval", spec, *full, "--out", tmp_path / "ev")
    assert res.rc == 2 and says in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_reasoning_gym_questions_are_generated_and_graded_by_its_checker():
    from swarm_hpc.eval.questions import load_questions
    from swarm_hpc.eval.results import grade

    qs = load_questions("rg:basic_arithmetic:4:7")
    assert len(qs) == 4 and qs == load_questions("rg:basic_arithmetic:4:7")   # the seed fixes the set
    assert all(q.rg == {"task": "basic_arithmetic", "size": 4, "seed": 7, "index": i} for i, q in enumerate(qs))
    q = qs[0]
    assert grade(f"Let me compute.\nAnswer: {q.answer}", q)
    assert not grade(f"Answer: {int(float(q.answer)) + 1}", q)
