"""Fault injection on real mpiexec ranks: SIGKILL/SIGTERM of rank 0, of an expert rank, of mpiexec and of the
CLI; SIGSTOP of an expert rank (a real hang, native and AutoGen engines); a silent synthesizer; two resumes at
once. After each: the run resumes to its end, every round finished before the fault is still there byte for
byte, and no process of the run is left (`pytest -m faults` runs only these; CI runs them with the rest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, expert, messages, run_dir_from, step_ends, wait_for

from swarm_hpc.procs import mpiexec_pid, rank_pids, run_processes

pytestmark = pytest.mark.faults


# --- the run's processes, from /proc ----------------------------------------------------------------------------

def rank_pid(run_dir: Path, rank: int) -> int:
    pid = rank_pids(run_dir).get(rank)
    assert pid is not None, f"no rank {rank} running for {run_dir}"
    return pid


def mpiexec_of(run_dir: Path) -> int:
    pid = mpiexec_pid(run_dir)
    assert pid is not None, f"no mpiexec running for {run_dir}"
    return pid


def no_process_left(run_dir: Path, timeout: float = 20) -> None:
    """Wait for every process of the run to end (an orphaned rank fails the test, and is killed)."""
    try:
        wait_for(lambda: not run_processes(run_dir), timeout, "no process of the run left")
    except AssertionError:
        left = run_processes(run_dir)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"orphaned processes of {run_dir}: {left}") from None


def finished_bytes(run_dir: Path) -> bytes:
    """The transcript up to the end of its last finished step: what no fault may change."""
    data = (run_dir / "transcript.jsonl").read_bytes()
    end = data.rfind(b'"type": "step_end"')
    return data[:data.index(b"\n", end) + 1] if end >= 0 else b""


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`swarm-hpc ARGS` in a process of its own (its own session, so a test's signal reaches only its target)."""
    return subprocess.Popen([sys.executable, "-m", "swarm_hpc", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def check_steps(run_dir: Path) -> list[int]:
    ends = [json.loads(l)["step"] for l in (run_dir / "transcript.jsonl").read_text().splitlines() if '"step_end"' in l]
    assert ends == list(range(1, len(ends) + 1)), ends  # every step once, in order: nothing lost, nothing twice
    return ends


# --- kills, one after another in one run -----------------------------------------------------------------------

# every target with both signals, in an order that has each signal follow each other target
FAULTS = [("rank 0", signal.SIGKILL), ("expert rank", signal.SIGTERM), ("mpiexec", signal.SIGKILL),
          ("cli", signal.SIGTERM), ("rank 0", signal.SIGTERM), ("expert rank", signal.SIGKILL),
          ("mpiexec", signal.SIGTERM), ("cli", signal.SIGKILL)]


def test_kills_of_every_process_resume_without_loss_or_orphans(write_spec, tiny, tmp_path):
    """One run, killed eight times (rank 0, an expert rank, mpiexec and the CLI, by SIGKILL and by SIGTERM; each
    mid-round), resumed after each. (Two resumes at once: test_one_writer.py.)"""
    env = {"SWARM_HPC_TEST_STALL": "bob:0.5"}  # a round takes about 0.5 s: each kill lands mid-round
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=20, round_timeout=30)
    proc = cli("run", str(spec), "--out", str(tmp_path / "runs"), env=env)
    run_dir = run_dir_from(proc.stdout.readline() if proc.stdout else "")
    try:
        for target, sig in FAULTS:
            what = f"{sig.name} to {target}"
            before = step_ends(run_dir)
            wait_for(lambda b=before: step_ends(run_dir) > b, 90, f"a new round before {what}")
            kept = finished_bytes(run_dir)
            pid = (rank_pid(run_dir, 0) if target == "rank 0" else rank_pid(run_dir, 1) if target == "expert rank"
                   else mpiexec_of(run_dir) if target == "mpiexec" else proc.pid)
            os.kill(pid, sig)
            proc.wait(timeout=60)
            no_process_left(run_dir)
            # (the ranks may finish a round more before the signal reaches them: mpiexec forwards it)
            assert (run_dir / "transcript.jsonl").read_bytes().startswith(kept), f"records lost after {what}"
            assert not (run_dir / "final.md").exists(), f"the run ended before {what}"
            proc = cli("run", "--resume", str(run_dir), env=env)
        _, err = proc.communicate(timeout=120)
    finally:
        for pid in run_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert (run_dir / "transcript.jsonl").read_bytes().startswith(kept)
    assert len(check_steps(run_dir)) == 20 + 2  # 20 rounds, the synthesis, the final answer
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    no_process_left(run_dir)


# --- a real hang: a stopped expert rank -------------------------------------------------------------------------

def late_rounds(run_dir: Path, name: str) -> dict[int, str]:
    return {r["round"]: r["status"] for r in messages(run_dir) if r["role"] == "expert" and r["expert"] == name}


def test_a_stopped_expert_rank_is_marked_late_and_the_run_ends(write_spec, tiny, tmp_path):
    """SIGSTOP from outside, mid-round: rank 0 never waits on it past a round's deadline (+ grace), the run ends
    with exit code 0 (the stopped rank cannot take its Stop: the job is ended for it), nothing is left running."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=3, round_timeout=1.5,
                      synthesizer="alice")
    proc = cli("run", str(spec), "--out", str(tmp_path / "runs"), env={"SWARM_HPC_TEST_STALL": "bob:0.5"})
    run_dir = run_dir_from(proc.stdout.readline() if proc.stdout else "")
    try:
        wait_for(lambda: step_ends(run_dir) >= 1, 60, "round 1")
        os.kill(rank_pid(run_dir, 1), signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        for pid in run_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    # round 3 (and round 2, unless it was over before the stop) waits 1.5 s + 1 s grace; the end gives the stopped
    # rank 2 s (it waited 30 s, then aborted)
    assert took < 20, took
    status = late_rounds(run_dir, "bob")
    assert status[1] == "ok" and status[3] == "late"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final"]["by"] == "alice"
    no_process_left(run_dir, 10)


def test_a_hung_expert_under_the_autogen_engine_is_marked_late_and_the_run_ends(write_spec, tiny, tmp_path):
    """The AutoGen engine with an expert rank that stops itself (SIGSTOP) when its first turn comes."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=2, round_timeout=1.5,
                      engine="autogen", synthesizer="alice")
    t0 = time.monotonic()
    proc = cli("run", str(spec), "--out", str(tmp_path / "runs"), env={"SWARM_HPC_TEST_STOP": "bob"})
    run_dir = run_dir_from(proc.stdout.readline() if proc.stdout else "")
    try:
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - t0
    finally:
        for pid in run_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert took < 30, took  # start-up, two rounds of 1.5 s + 1 s grace, 2 s for the stopped rank at the end
    assert late_rounds(run_dir, "bob") == {1: "late", 2: "late"} and "LATE" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final"]["content"] == "Paris is the capital."
    no_process_left(run_dir, 10)


def test_a_hung_expert_on_rank_0_does_not_keep_the_run_from_ending(write_spec, tiny, tmp_path):
    """Rank 0's own expert (in a thread of rank 0) hangs for good in its first turn, deaf to its cancel: rank 0
    still ends when the run is written (its thread once kept the process from exiting, for ever)."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=2, round_timeout=1.5,
                      synthesizer="bob")
    t0 = time.monotonic()
    proc = cli("run", str(spec), "--out", str(tmp_path / "runs"), env={"SWARM_HPC_TEST_HANG": "alice"})
    run_dir = run_dir_from(proc.stdout.readline() if proc.stdout else "")
    try:
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        for pid in run_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert took < 30, took
    assert late_rounds(run_dir, "alice") == {1: "late", 2: "late"} and "LATE" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final"]["content"] == "Rome is the answer."
    no_process_left(run_dir, 10)


# --- a synthesizer that gives no answer -------------------------------------------------------------------------

def test_a_silent_synthesizer_falls_back_to_the_longest_last_answer(write_spec, tiny, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=2, synthesizer="bob")
    proc = cli("run", str(spec), "--out", str(tmp_path / "runs"), env={"SWARM_HPC_TEST_SILENT": "bob@3"})
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    run_dir = run_dir_from(out)
    final = [r for r in messages(run_dir) if r["role"] == "final"][0]
    # bob answered both rounds, then said nothing as synthesizer (his 3rd turn)
    assert late_rounds(run_dir, "bob") == {1: "ok", 2: "ok", 3: "empty"}
    assert final["expert"] == "alice" and final["content"] == "Paris is the capital."
    assert final["method"] == "synthesizer bob gave no answer (empty); longest last answer"
    assert "Paris is the capital." in (run_dir / "final.md").read_text()
