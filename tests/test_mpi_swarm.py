"""The conversation layer on real MPI ranks (mpiexec + mpi4py) with tiny real GGUF models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, crash_after_first_round, expert, messages, run_dir_from
from tinygguf import write_tiny_gguf

from swarm_hpc.procs import rank_pids


def prompts_of(folder, name: str) -> dict[int, str]:
    """{turn: the prompt text llama.cpp evaluated} of one expert (SWARM_HPC_TEST_PROMPTS, tests/expert_faults.py)."""
    lines = (folder / f"{name}.jsonl").read_text().splitlines()
    # llama.cpp's detokenizer puts a space after a control token ("<|im_start|> user"): take it out again
    return {r["turn"]: re.sub(r"(<\|im_(?:start|end)\|>) ", r"\1", r["prompt"]) for r in map(json.loads, lines)}


def by_round(recs: list[dict], role: str = "expert") -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for r in recs:
        if r["role"] == role:
            out.setdefault(r["round"], {})[r["expert"]] = r
    return out


@pytest.mark.parametrize("wakeup", ["doorbell", "poll"])
def test_debate_rounds_peers_and_directed_messages(write_spec, tiny, tmp_path, cli, wakeup):
    """The same conversation whether waiting ranks sleep on their doorbells or probe every 2 ms."""
    spec = write_spec([expert("alice", tiny["note"]), expert("bob", tiny["paris"]), expert("carol", tiny["rome"])],
                      rounds=2, synthesizer="bob")
    seen = tmp_path / "prompts"  # what llama.cpp really evaluated on each rank (tests/expert_faults.py)
    seen.mkdir()
    res = cli("run", spec, "--np", "3", "--out", tmp_path / "runs",
              env={"SWARM_HPC_WAKEUP": wakeup, "SWARM_HPC_TEST_PROMPTS": str(seen)})
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    recs = messages(run_dir)
    rounds = by_round(recs)
    # every expert answered every round, on its own rank
    for rnd in (1, 2):
        assert set(rounds[rnd]) == {"alice", "bob", "carol"}
        assert all(r["status"] == "ok" and r["completion_tokens"] > 0 for r in rounds[rnd].values())
    assert {r["rank"] for r in rounds[1].values()} == {0, 1, 2}
    assert rounds[1]["bob"]["content"] == "Paris is the capital."
    # peers' answers were in the next round's prompt
    assert {"r1.carol"} <= set(rounds[2]["bob"]["saw"])
    assert {"r1.bob"} <= set(rounds[2]["carol"]["saw"])
    assert "r1.bob" not in rounds[2]["bob"]["saw"]
    # alice's "@bob: pineapple" went to bob only, privately, in the next round
    directs = [r for r in recs if r["role"] == "direct"]
    assert directs[0]["expert"] == "alice" and directs[0]["to"] == "bob" and directs[0]["content"] == "pineapple"
    assert "r1.alice>bob" in rounds[2]["bob"]["saw"]
    assert not any(">bob" in s for s in rounds[2]["carol"]["saw"])
    assert "r1.alice" not in rounds[2]["carol"]["saw"]  # her whole reply was the private note
    # and so it was in the prompts the models really got, not only in `saw`
    prompts = {n: prompts_of(seen, n) for n in ("alice", "bob", "carol")}
    assert "[alice to you] pineapple" in prompts["bob"][2]
    assert "pineapple" not in prompts["carol"][2] and "pineapple" not in prompts["bob"][1]
    assert "[carol] Rome is the answer." in prompts["bob"][2] and "[bob] Paris is the capital." in prompts["carol"][2]
    assert "[bob]" not in prompts["bob"][2]
    # final answer, summary, ranks are separate processes
    final = [r for r in recs if r["role"] == "final"]
    assert final[0]["content"] == "Paris is the capital." and final[0]["expert"] == "bob"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["round"] == 2
    assert len({r["pid"] for r in summary["ranks"]}) == 3
    assert [r["wakeup"] for r in summary["ranks"]] == [wakeup] * 3  # doorbells found each other on loopback
    assert "Paris is the capital." in (run_dir / "final.md").read_text()
    # the live view showed who said what, tokens and tok/s
    assert "-- carol [" in res.out and "tok/s" in res.out and "final answer" in res.out
    shown = cli("show", run_dir)
    assert shown.rc == 0 and "alice -> bob (private): pineapple" in shown.out


def test_deadline_marks_slow_and_hung_experts(write_spec, tiny, tmp_path, cli):
    looping = write_tiny_gguf(tmp_path / "loop.gguf", "la li lo", loop=True)
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"]),
                       expert("carol", looping, max_tokens=3000, n_ctx=4096)], rounds=2, round_timeout=1.5)
    t0 = time.monotonic()
    # bob hangs for 6 s in every turn: longer than a round's deadline plus grace
    res = cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_TEST_STALL": "bob:6"}, timeout=120)
    took = time.monotonic() - t0
    assert res.rc == 0, res.err
    rounds = by_round(messages(run_dir_from(res.out)))
    assert rounds[1]["bob"]["status"] == "late" and "round_timeout" in rounds[1]["bob"]["error"]
    assert rounds[2]["bob"]["status"] == "late"
    assert rounds[1]["alice"]["status"] == "ok"
    # carol never stops by herself: llama.cpp generation is cut at the deadline, what she said is kept; it is one
    # phrase said over and over, so it is marked repetitive (not ok) and not shown to the others
    assert rounds[1]["carol"]["status"] == "repetitive" and rounds[1]["carol"]["finish_reason"] == "deadline"
    assert rounds[1]["carol"]["repetition"]["kind"] == "repetitive" and "la li lo" in rounds[1]["carol"]["content"]
    assert rounds[1]["carol"]["completion_tokens"] > 0 and rounds[1]["carol"]["seconds"] < 3
    assert "r1.bob" not in rounds[2]["alice"]["saw"] and "r1.carol" not in rounds[2]["alice"]["saw"]
    assert "LATE" in res.out
    assert took < 60


def test_echoes_and_loops_are_marked_and_never_become_the_answer(write_spec, tiny, tmp_path, cli):
    """Real ranks, real llama.cpp: bob's model says the task back, carol's loops until max_tokens, and carol
    writes the synthesis. Both are marked in the transcript, neither reaches alice, and the final answer is
    alice's, not carol's loop (which, being the longest reply, the fallback used to pick)."""
    echo = write_tiny_gguf(tmp_path / "echo.gguf", "What is the capital of France?")
    looping = write_tiny_gguf(tmp_path / "loop.gguf", "la li lo", loop=True)
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", echo), expert("carol", looping, max_tokens=60)],
                      rounds=2, synthesizer="carol")
    res = cli("run", spec, "--np", "3", "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    rounds = by_round(messages(run_dir))
    for rnd in (1, 2):
        assert rounds[rnd]["alice"]["status"] == "ok" and rounds[rnd]["alice"]["content"] == "Paris is the capital."
        bob, carol = rounds[rnd]["bob"], rounds[rnd]["carol"]
        assert bob["status"] == "echo" and bob["content"] == "What is the capital of France?"
        assert bob["repetition"]["of"] == "task" and bob["repetition"]["score"] == 1.0
        assert carol["status"] == "repetitive" and carol["finish_reason"] == "length" and carol["completion_tokens"] == 60
    assert rounds[2]["alice"]["saw"] == []      # neither bob's echo nor carol's loop was shown to her
    assert rounds[3]["carol"]["status"] == "repetitive"
    final = [r for r in messages(run_dir) if r["role"] == "final"][0]
    assert final["content"] == "Paris is the capital." and final["expert"] == "alice"
    assert final["method"] == "synthesizer carol gave no answer (repetitive); longest last answer"
    assert "bob: marked ECHO (echo: 100% of its words are copied from task)" in res.out
    assert "carol: marked REPETITIVE (loops:" in res.out
    shown = cli("show", run_dir)
    assert shown.rc == 0 and "! echo: 100% of its words are copied from task" in shown.out


def test_resume_after_a_crash_continues_from_the_last_finished_round(write_spec, tiny, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=3, round_timeout=30)
    run_dir = crash_after_first_round(spec, tmp_path / "runs", {"SWARM_HPC_TEST_STALL": "bob:4"})
    with open(run_dir / "transcript.jsonl", "a") as f:
        f.write('{"type": "message", "round": 2, "torn')  # a write cut off by the crash
    before = by_round(messages(run_dir))
    assert set(before) == {1}  # only round 1 was finished when the run was killed
    assert not (run_dir / "final.md").exists()

    res = subprocess.run([sys.executable, "-m", "swarm_hpc", "run", "--resume", str(run_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "round 1: replayed from the transcript" in res.stdout
    recs = messages(run_dir)
    rounds = by_round(recs)
    assert set(rounds) == {1, 2, 3, 4}  # 4 = the final synthesis
    assert sum(1 for r in recs if r["round"] == 1 and r["role"] == "expert") == 2  # round 1 not run again
    assert rounds[1]["alice"]["time"] == before[1]["alice"]["time"]
    assert "r1.bob" in rounds[2]["alice"]["saw"]  # the replayed round fed the next one
    assert (run_dir / "final.md").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def test_vote_majority_wins(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("a", tiny["paris"]), expert("b", tiny["paris"]), expert("c", tiny["rome"])],
                      strategy="vote", rounds=1)
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    final = [r for r in messages(run_dir_from(res.out)) if r["role"] == "final"][0]
    assert final["content"] == "Paris is the capital." and final["method"].startswith("majority: 2 of 3")


def test_moa_with_a_coordinator_only_rank0(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("p1", tiny["paris"]), expert("p2", tiny["rome"]), expert("agg", tiny["paris"])],
                      strategy="moa", rounds=2, rank0_hosts_expert=False, synthesizer="agg")
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    recs = messages(run_dir_from(res.out))
    rounds = by_round(recs)
    # rank 0 only coordinates; p1 and agg share a model, so they share a rank and generate as one batch
    assert {n: r["rank"] for n, r in rounds[1].items()} == {"p1": 1, "agg": 1, "p2": 2}
    assert set(rounds[2]["p1"]["saw"]) == {"r1.p1", "r1.p2", "r1.agg"}  # a layer sees the whole previous layer
    assert [r for r in recs if r["role"] == "final"][0]["expert"] == "agg"


def test_round_robin_is_one_expert_at_a_time(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("a", tiny["paris"]), expert("b", tiny["rome"])], strategy="round-robin", rounds=2)
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    steps = [json.loads(l) for l in (run_dir / "transcript.jsonl").read_text().splitlines()]
    ends = [s for s in steps if s["type"] == "step_end" and s.get("turns")]
    assert [e["turns"] for e in ends] == [1, 1, 1, 1]
    recs = [r for r in messages(run_dir) if r["role"] == "expert"]
    assert [r["expert"] for r in recs] == ["a", "b", "a", "b"]
    assert recs[1]["saw"] == ["r1.a"] and recs[2]["saw"] == ["r1.b"]
    final = [r for r in messages(run_dir) if r["role"] == "final"][0]
    assert final["expert"] == "b"


def test_trimming_keeps_the_system_prompt_the_task_and_the_newest_turn(write_spec, tmp_path, cli):
    """A history that outgrows n_ctx: the prompt the model really gets still starts with the system prompt and
    the task, and ends with the newest turn; the oldest turns in between are what goes."""
    # random weights: 40 tokens of gibberish every turn (a loop would be marked repetitive and kept out of the
    # history, which would then never outgrow n_ctx)
    chatty = write_tiny_gguf(tmp_path / "chatty.gguf")
    persona = "You are alice, a careful geographer."
    spec = write_spec([expert("alice", chatty, persona=persona, max_tokens=40, n_ctx=512),
                       expert("bob", chatty, max_tokens=40, n_ctx=512)], rounds=5)
    seen = tmp_path / "prompts"
    seen.mkdir()
    res = cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_TEST_PROMPTS": str(seen)})
    assert res.rc == 0, res.err
    alice = by_round(messages(run_dir_from(res.out)))
    assert alice[1]["alice"]["dropped_messages"] == 0 and alice[5]["alice"]["dropped_messages"] >= 2
    prompt = prompts_of(seen, "alice")[5]
    assert alice[5]["alice"]["prompt_tokens"] <= 512 - 40
    system, task = prompt.index("<|im_start|>system\n" + persona), prompt.index("<|im_start|>user\nTask: What is")
    newest = prompt.index("Consider their points and give your improved answer", task)
    assert system < task < newest and prompt.rstrip().endswith("<|im_start|>assistant")
    assert prompt.count("<|im_start|>system") == 1 and prompt.count("Task: What is") == 1
    assert prompt.count("<|im_start|>user") == 5 - alice[5]["alice"]["dropped_messages"] // 2


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.parametrize("wakeup", ["doorbell", "poll"])
def test_waiting_ranks_sleep(write_spec, tiny, tmp_path, wakeup):
    """While bob thinks for 5 s, rank 0 (waiting for him) and carol's rank (done, waiting for the next turn) use
    next to no CPU: they sleep, as summary.json says, rather than spin in MPI's receive."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"]), expert("carol", tiny["paris"])],
                      rounds=1)
    proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "run", str(spec), "--out", str(tmp_path / "runs")],
                            cwd=ROOT, env={**os.environ, "SWARM_HPC_TEST_STALL": "bob:5", "SWARM_HPC_WAKEUP": wakeup},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        run_dir = run_dir_from(proc.stdout.readline())
        answered: set[str] = set()
        while answered != {"alice", "carol"}:  # both answered at once; bob's turn goes on
            line = proc.stdout.readline()
            assert line, "the run ended early"
            answered |= {n for n in ("alice", "carol") if line.startswith(f"-- {n} [")}
        pids = rank_pids(run_dir)
        before, t0 = {r: cpu_seconds(pids[r]) for r in (0, 2)}, time.monotonic()
        time.sleep(2.5)
        used = {r: (cpu_seconds(pids[r]) - before[r]) / (time.monotonic() - t0) for r in (0, 2)}
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    print(f"\nCPU while waiting ({wakeup}): rank 0 {used[0]:.1%}, idle expert rank {used[2]:.1%} of a core")
    # a spinning rank takes a whole core (or, on a busy machine, its share of the cores): 10 % is generous
    assert used[0] < 0.10 and used[2] < 0.10, used
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["wakeup"] for r in summary["ranks"]] == [wakeup] * 3
