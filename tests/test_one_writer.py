"""One writer per run, on real mpiexec ranks: two resumes of one run at once, and a resume of a finished run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, crash_after_first_round, expert, messages, run_cli, wait_for

from swarm_hpc.core.recorder import lock_run
from swarm_hpc.errors import UserError
from swarm_hpc.executor import LocalExecutor


def unlocked(run_dir) -> bool:
    try:
        lock_run(run_dir, wait=0).close()
    except UserError:
        return False
    return True


def resume(run_dir, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "swarm_hpc", "run", "--resume", str(run_dir)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_resumes_at_once_one_writes_the_other_stops_with_one_line(write_spec, tiny, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=3, round_timeout=30)
    # bob takes 4 s a turn: the first resume writes for longer than the second waits for the lock (LOCK_WAIT)
    slow = {"SWARM_HPC_TEST_STALL": "bob:4"}
    run_dir = crash_after_first_round(spec, tmp_path / "runs", slow)
    wait_for(lambda: unlocked(run_dir), 60, "the killed run's ranks to end")  # they hold the lock until then
    kept = (run_dir / "transcript.jsonl").read_bytes()  # round 1 (a torn line, if any, is cut by a resume)
    kept = kept[:kept.rindex(b'"step_end"')]
    first, second = resume(run_dir, slow), resume(run_dir, slow)
    outs = [(p.wait(timeout=120), *p.communicate()) for p in (first, second)]
    codes = sorted(rc for rc, _, _ in outs)
    assert codes == [0, 2], outs
    err = next(e for rc, _, e in outs if rc == 2)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "another swarm-hpc process is writing this run (pid " in lines[0], err
    ends = [json.loads(l)["step"] for l in (run_dir / "transcript.jsonl").read_text().splitlines()
            if '"step_end"' in l]
    assert ends == sorted(set(ends)) == list(range(1, len(ends) + 1))  # every step once, in order
    assert sum(1 for r in messages(run_dir) if r["role"] == "final") == 1
    assert (run_dir / "transcript.jsonl").read_bytes().startswith(kept)  # round 1 as it was, byte for byte
    wait_for(lambda: not rank_pids(run_dir), 10, "no process of either resume left")


def test_resuming_a_finished_run_changes_nothing(write_spec, tiny, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    res = run_cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    run_dir = next((tmp_path / "runs").iterdir())
    before = {f: (run_dir / f).read_bytes() for f in ("transcript.jsonl", "summary.json", "final.md")}
    again = run_cli("run", "--resume", run_dir)
    assert again.rc == 0 and "complete already" in again.out, again.err
    assert {f: (run_dir / f).read_bytes() for f in before} == before
    # a requeued job script starts the ranks on it directly: rank 0 leaves it as it is too
    ex = LocalExecutor()
    ranks = subprocess.run(ex.command(run_dir, 1, resume=True), env=ex.env(), capture_output=True, text=True,
                           timeout=120)
    assert ranks.returncode == 0 and "complete already" in ranks.stdout, ranks.stderr
    assert {f: (run_dir / f).read_bytes() for f in before} == before


def test_damage_before_the_last_line_stops_the_resume_and_cuts_nothing(write_spec, tiny, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=3, round_timeout=30)
    run_dir = crash_after_first_round(spec, tmp_path / "runs", {"SWARM_HPC_TEST_STALL": "bob:2"})
    wait_for(lambda: unlocked(run_dir), 60, "the killed run's ranks to end")
    transcript = run_dir / "transcript.jsonl"
    lines = transcript.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:20] + b"\x00" + lines[1][21:]  # one corrupt byte in line 2
    transcript.write_bytes(b"".join(lines))
    before = transcript.read_bytes()
    res = run_cli("run", "--resume", run_dir)
    err = [l for l in res.err.splitlines() if l.strip()]
    assert res.rc == 2 and len(err) == 1 and "line 2 of" in err[0] and "damaged" in err[0], res.err
    assert transcript.read_bytes() == before  # nothing cut, nothing re-run


def rank_pids(run_dir) -> list[int]:
    """Live processes whose command line names the run directory (mpiexec and its ranks)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(run_dir).encode() in (proc / "cmdline").read_bytes() and (proc / "stat").read_text().split(") ")[1][0] != "Z":
                pids.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_cli_leaves_no_ranks_behind(sig, write_spec, tiny, tmp_path):
    """Issue 17 #2: `swarm-hpc run spec & ...; kill $!` (or kill -9, or what `timeout` sends) ends the ranks too."""
    # bob takes 2 s a turn: left alone the run would go on for about 40 s more
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=20, round_timeout=30)
    proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "run", str(spec), "--out", str(tmp_path / "runs")],
                            cwd=ROOT, env={**os.environ, "SWARM_HPC_TEST_STALL": "bob:2"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    run_dir = Path(line.split(": ", 1)[1].strip())
    wait_for(lambda: len(rank_pids(run_dir)) >= 3, 30, "mpiexec and both ranks")
    proc.send_signal(sig)  # the CLI only, as a shell's `kill $!` does
    proc.wait(timeout=30)
    wait_for(lambda: not rank_pids(run_dir), 10, "no process of the run left")
