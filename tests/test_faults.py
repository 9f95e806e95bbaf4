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

pytestmark = pytest.mark.faults


# --- the run's processes, from /proc ----------------------------------------------------------------------------

def run_processes(run_dir: Path) -> dict[int, list[str]]:
    """Live (not zombie) processes whose command line names the run directory: mpiexec and its ranks."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(str(run_dir).encode() == part for part in cmd):
            found[int(proc.name)] = [c.decode() for c in cmd if c]
    return found


def rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of MPI rank `rank` of the run (Open MPI puts OMPI_COMM_WORLD_RANK in every rank's environment)."""
    for pid, cmd in run_processes(run_dir).items():
        if "swarm_hpc.mpi.rank" in cmd:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                    return pid
    raise AssertionError(f"no rank {rank} running for {run_dir}")


def mpiexec_pid(run_dir: Path) -> int:
    return next(pid for pid, cmd in run_processes(run_dir).items() if Path(cmd[0]).name.startswith("mpiexec"))


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

TARGETS = ["rank 0", "expert rank", "mpiexec", "cli"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kills_of_every_process_resume_without_loss_or_orphans(sig, write_spec, tiny, tmp_path):
    """One run, killed four times (rank 0, an expert rank, mpiexec, the CLI; each mid-round), resumed after each;
    after the SIGKILLs the last resume is two at once: one finishes the run, the other stops with one line."""
    env = {"SWARM_HPC_TEST_STALL": "bob:0.7"}  # a round takes about 0.7 s: each kill lands mid-round
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=8, round_timeout=30,
                      synthesizer="bob")
    proc = cli("run", str(spec), "--out", str(tmp_path / "runs"), env=env)
    run_dir = run_dir_from(proc.stdout.readline() if proc.stdout else "")
    try:
        for target in TARGETS:
            before = step_ends(run_dir)
            wait_for(lambda b=before: step_ends(run_dir) > b, 90, f"a new round before killing {target}")
            kept = finished_bytes(run_dir)
            pid = (rank_pid(run_dir, 0) if target == "rank 0" else rank_pid(run_dir, 1) if target == "expert rank"
                   else mpiexec_pid(run_dir) if target == "mpiexec" else proc.pid)
            os.kill(pid, sig)
            proc.wait(timeout=60)
            no_process_left(run_dir)
            # (the ranks may finish a round more before the signal reaches them: mpiexec forwards it)
            assert (run_dir / "transcript.jsonl").read_bytes().startswith(kept), f"records lost after killing {target}"
            if target != TARGETS[-1]:
                proc = cli("run", "--resume", str(run_dir), env=env)
        assert not (run_dir / "final.md").exists()
        if sig == signal.SIGKILL:  # two resumes at once; bob slower now: the first resume writes (2 rounds or
            # more and the synthesis) for longer than the second waits for the writer lock (5 s)
            slow = {"SWARM_HPC_TEST_STALL": "bob:2"}
            resumes = [cli("run", "--resume", str(run_dir), env=slow) for _ in range(2)]
        else:
            resumes = [cli("run", "--resume", str(run_dir), env=env)]
        outs = [(p.wait(timeout=120), *p.communicate()) for p in resumes]
    finally:
        for pid in run_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
    assert sorted(rc for rc, _, _ in outs) == [0, 2][:len(outs)], [(rc, o[-600:], e) for rc, o, e in outs]
    for rc, _, err in outs:
        if rc == 2:  # one line, and nothing written
            assert [l for l in err.splitlines() if l.strip()] == [l for l in err.splitlines() if "another swarm-hpc process" in l]
    assert (run_dir / "transcript.jsonl").read_bytes().startswith(kept)
    assert len(check_steps(run_dir)) == 8 + 2  # 8 rounds, the synthesis, the final answer
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
    # rounds 2 and 3 wait 1.5 s + 1 s grace each; the end gives the stopped rank 2 s (it waited 30 s, then aborted)
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
