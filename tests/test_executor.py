"""The executor interface: LocalJob on real process groups, SlurmJob on a shared, rate-limited watcher (with a fake
monitor: the real one is exercised by test_slurm_jobs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm_hpc.errors import UserError
from swarm_hpc.executor import JobTimeout, LocalExecutor, LocalJob, session_members
from swarm_hpc.slurm.executor import JobWatcher, SlurmExecutor, SlurmJob
from swarm_hpc.slurm.monitor import JobInfo

# --- SLURM jobs: one shared watcher -----------------------------------------------------------------------------


def info(job: str, state: str, nodes: str = "") -> JobInfo:
    return JobInfo(job, "swarm", state, nodes, "debug", 0, 0, "", None)


class FakeMonitor:
    """squeue and the completion log as two dicts; counts how often it is asked."""

    name = "fake"

    def __init__(self, queue: dict[str, str], history: dict[str, str] | None = None):
        self.queue = queue
        self.ended = history or {}
        self.calls = 0
        self.history_calls = 0

    def jobs(self) -> list[JobInfo]:
        self.calls += 1
        return [info(job, state, "n1") for job, state in self.queue.items()]

    def history(self, job: str) -> JobInfo | None:
        self.history_calls += 1
        return info(job, self.ended[job]) if job in self.ended else None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_listing_per_interval_serves_every_handle() -> None:
    monitor, clock = FakeMonitor({"1": "RUNNING", "2": "PENDING", "3_0": "RUNNING"}), Clock()
    watcher = JobWatcher(monitor, interval=1.0, clock=clock)
    jobs = [SlurmJob(job, watcher) for job in ("1", "2", "3")]
    for _ in range(5):
        assert [j.state() for j in jobs] == ["RUNNING", "PENDING", "RUNNING"]
        assert not any(j.done() for j in jobs)
    assert monitor.calls == 1
    monitor.queue.update({"1": "COMPLETED", "2": "RUNNING"})
    clock.now += 0.9
    assert jobs[0].state() == "RUNNING" and monitor.calls == 1  # still the cached listing
    clock.now += 0.1
    assert [j.state() for j in jobs] == ["COMPLETED", "RUNNING", "RUNNING"] and monitor.calls == 2
    assert jobs[0].done() and jobs[1].nodes == "n1"


def test_handles_share_the_process_watcher_by_default() -> None:
    assert SlurmJob("1").watcher is SlurmJob("2").watcher is SlurmExecutor().watcher


def test_an_array_job_completes_when_every_task_completed() -> None:
    monitor, clock = FakeMonitor({"7_0": "COMPLETED", "7_1": "RUNNING", "70": "FAILED"}), Clock()
    array = SlurmJob("7", JobWatcher(monitor, clock=clock))
    assert array.state() == "RUNNING" and [i.job for i in array.infos()] == ["7_0", "7_1"]  # not job 70
    monitor.queue["7_1"] = "COMPLETED"
    clock.now += 1
    assert array.state() == "COMPLETED"
    monitor.queue.update({"7_1": "TIMEOUT", "7_2": "FAILED"})
    clock.now += 1
    assert array.state() == "FAILED"  # every task ended, not all completed: the first other state


def test_a_job_the_queue_forgot_is_read_from_its_record_once() -> None:
    monitor, clock = FakeMonitor({"5": "RUNNING"}, history={"5": "COMPLETED"}), Clock()
    watcher = JobWatcher(monitor, clock=clock)
    fresh = SlurmJob("9", watcher)  # just submitted; the listing may predate it
    assert fresh.state() == "PENDING" and monitor.history_calls == 0
    job = SlurmJob("5", watcher)
    assert job.state() == "RUNNING"
    del monitor.queue["5"]
    clock.now += 1
    assert job.state() == "COMPLETED" and monitor.history_calls == 1
    clock.now += 5
    assert job.wait() == "COMPLETED" and monitor.history_calls == 1  # an ended job's record does not change
    gone = SlurmJob("6", watcher, seen=True)  # listed once, now unknown to SLURM: nothing more to wait for
    assert gone.state() == "UNKNOWN" and gone.done()


def test_wait_polls_the_watcher_until_the_job_ends() -> None:
    monitor = FakeMonitor({"3": "PENDING"})
    real = monitor.jobs

    def jobs() -> list[JobInfo]:
        monitor.queue["3"] = ["PENDING", "RUNNING", "RUNNING", "COMPLETED"][min(monitor.calls, 3)]
        return real()

    monitor.jobs = jobs  # type: ignore[method-assign]
    job = SlurmJob("3", JobWatcher(monitor, interval=0.01))
    states = list(job.follow(0.001))
    assert states[-1] == "COMPLETED" and "RUNNING" in states
    assert monitor.calls == 4 < len(states)  # one listing per interval, not one per look
    monitor.queue["4"] = "RUNNING"
    with pytest.raises(JobTimeout, match=r"job 4: still not finished after 0\.05 s \(fix: wait longer \(--timeout\)"):
        SlurmJob("4", job.watcher).wait(timeout=0.05)


def test_a_job_slurm_does_not_know_is_one_user_error() -> None:
    executor = SlurmExecutor(JobWatcher(FakeMonitor({"1": "RUNNING"})))
    assert executor.job("1").state() == "RUNNING"
    with pytest.raises(UserError, match="job 2: SLURM does not know this job"):
        executor.job("2")


def test_a_job_log_and_run_dir_come_from_the_job_index(tmp_path, monkeypatch) -> None:
    from swarm_hpc.slurm import index

    monkeypatch.setenv("SWARM_HPC_STATE", str(tmp_path))
    index.record("8", fresh=True, log=tmp_path / "slurm-8_%a.log")
    index.record("8_1", run_dir=tmp_path / "run")
    task = SlurmJob("8_1", JobWatcher(FakeMonitor({})))
    assert task.log == tmp_path / "slurm-8_1.log" and task.run_dir == tmp_path / "run"
    assert SlurmJob("8", task.watcher).run_dir is None


# --- local jobs: a process group of their own -------------------------------------------------------------------


class ShellExecutor(LocalExecutor):
    """Runs a shell command instead of the ranks (same Popen and process group as a real run)."""

    def __init__(self, script: str):
        super().__init__(mpiexec="sh")
        self.script = script

    def command(self, run_dir: Path, np: int, resume: bool = False, module: str = "") -> list[str]:
        return ["sh", "-c", self.script]

    def env(self) -> dict[str, str]:
        return dict(os.environ)


def wait_for_members(job: LocalJob | int, n: int) -> list[int]:
    deadline = time.monotonic() + 10
    while len(members := session_members(int(job.id) if isinstance(job, LocalJob) else job)) < n:
        assert time.monotonic() < deadline, members
        time.sleep(0.02)
    return members


def test_local_job_ends_with_the_state_of_its_return_code(tmp_path) -> None:
    ok = ShellExecutor("exit 0").submit(tmp_path, 1)
    assert ok.wait() == "COMPLETED" and ok.returncode == 0 and ok.run_dir == tmp_path and ok.log is None
    bad = ShellExecutor("exit 3").submit(tmp_path, 1)
    assert bad.wait(timeout=10) == "FAILED" and bad.returncode == 3 and bad.done()


def test_cancel_ends_the_whole_process_group(tmp_path) -> None:
    job = ShellExecutor("sleep 30 & sleep 30 & wait").submit(tmp_path, 1)
    assert len(wait_for_members(job, 3)) == 3 and job.state() == "RUNNING"
    assert os.getsid(int(job.id)) == os.getpgid(int(job.id)) == int(job.id) != os.getpgid(0)  # a group of its own
    with pytest.raises(JobTimeout, match=r"still not finished after 0\.1 s"):
        job.wait(timeout=0.1)
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 3
    assert session_members(int(job.id)) == [] and job.state() == "CANCELLED" and job.wait() == "CANCELLED"


def test_cancel_kills_what_ignores_sigterm(tmp_path) -> None:
    job = ShellExecutor("trap '' TERM; sleep 30 & sleep 30; wait").submit(tmp_path, 1)
    job.kill_after = 0.3
    wait_for_members(job, 3)
    t0 = time.monotonic()
    job.cancel()
    assert 0.3 <= time.monotonic() - t0 < 3
    assert session_members(int(job.id)) == [] and job.returncode == -9


STUCK_PARENT = """
import os, signal, time
for code in (4, 0):   # like mpiexec: children (the ranks) that exit, rank 0 (the first) with 4, the other with 0
    if os.fork() == 0:
        os._exit(code)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)        # and never reaps them: Open MPI's mpiexec stuck on a futex after an MPI_Abort
"""


def test_a_parent_that_stays_after_every_rank_exited_is_ended(tmp_path) -> None:
    """The process under test is a stand-in for mpiexec's hang (it cannot be caused on demand): LocalJob.wait
    ends it once every child is a zombie for `stuck_after` s, and reports the first child's exit code."""
    job = LocalJob(subprocess.Popen([sys.executable, "-c", STUCK_PARENT], start_new_session=True), tmp_path)
    job.stuck_after = 0.5
    t0 = time.monotonic()
    assert job.wait(timeout=30) == "FAILED" and job.returncode == 4
    assert time.monotonic() - t0 < 10 and session_members(int(job.id)) == []


class Sleepers(LocalExecutor):
    """Real mpiexec, ranks that only sleep."""

    def command(self, run_dir: Path, np: int, resume: bool = False, module: str = "") -> list[str]:
        return [self.mpiexec, "-n", str(np), sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.skipif(not shutil.which("mpiexec"), reason="needs mpiexec (Open MPI)")
def test_cancel_ends_mpiexec_and_its_ranks(tmp_path) -> None:
    job = Sleepers().submit(tmp_path, 2)
    wait_for_members(job, 3)  # mpiexec and two ranks
    job.cancel()
    assert session_members(int(job.id)) == [] and job.state() == "CANCELLED"



@pytest.mark.skipif(not shutil.which("mpiexec"), reason="needs mpiexec (Open MPI)")
def test_a_local_job_ends_when_the_process_that_started_it_is_killed(tmp_path) -> None:
    """`swarm-hpc run` killed with SIGKILL (no chance to cancel) leaves no rank running."""
    starter = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}, {os.getcwd()!r}]\n"
               "from test_executor import Sleepers\n"
               "job = Sleepers().submit('.', 2)\n"
               "print(job.id, flush=True); job.wait()\n")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    sid = int(parent.stdout.readline())
    wait_for_members(sid, 3)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session_members(sid) == []
