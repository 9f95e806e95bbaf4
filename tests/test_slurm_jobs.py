"""Swarm jobs on a real local SLURM cluster (slurmctld + slurmd + munged, started by slurm/local-cluster.sh):
render, submit, status, watch, logs, cancel, arrays, requeue, chat, multi-node placement, and errors."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, expert, messages, run_cli, step_ends, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def slurm_env(local_slurm, tmp_path) -> dict[str, str]:
    """The cluster's client environment, with a job index of this test's own."""
    return {**local_slurm.env, "SWARM_HPC_STATE": str(tmp_path / "state")}


def submit_wait(spec: Path | None, env: dict, out: Path, *extra: str, timeout: float = 300) -> dict:
    args = [spec] if spec else []
    res = run_cli("submit", *args, "--out", out, "--wait", "--json", "--timeout", str(timeout), *extra, env=env,
                  timeout=timeout + 30)
    assert res.rc == 0, (res.out, res.err)
    return json.loads(res.out)


# --- one node -------------------------------------------------------------------------------------------------


def test_demo_swarm_as_a_slurm_job(slurm_env, tmp_path):
    """The README's demo, submitted to SLURM: real models, real ranks under srun, transcript and final answer."""
    t0, wall0 = time.monotonic(), time.time()
    info = submit_wait(ROOT / "jobs" / "examples" / "demo.toml", slurm_env, tmp_path / "runs")
    took = time.monotonic() - t0
    assert info["state"] == "COMPLETED"
    run_dir = Path(info["run_dir"])
    recs = messages(run_dir)
    replies = [r for r in recs if r["role"] == "expert"]
    assert {r["expert"] for r in replies if r["round"] == 1} == {"engineer", "teacher", "moderator"}
    assert {r["node"] for r in replies} == {"n1"}
    assert [r for r in recs if r["role"] == "final"][0]["content"]
    first_round_done = max(r["time"] for r in replies if r["round"] == 1)
    print(f"\ndemo on SLURM: submit -> first round answered {first_round_done - wall0:.1f} s, "
          f"-> final answer {took:.1f} s")
    log = run_cli("logs", info["job_id"], env=slurm_env)
    assert log.rc == 0 and "== final answer" in log.out
    shown = run_cli("show", info["job_id"], env=slurm_env)
    assert shown.rc == 0 and "engineer" in shown.out


def test_status_watch_logs_cancel_on_a_running_job(slurm_env, tiny, write_spec, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=20, round_timeout=30)
    env = {**slurm_env, "SWARM_HPC_TEST_STALL": "bob:1"}  # bob takes a second a turn: the job runs ~20 s
    res = run_cli("submit", spec, "--out", tmp_path / "runs", env=env)
    assert res.rc == 0, res.err
    job = res.out.strip()
    run_dir = tmp_path / "runs" / f"slurm-{job}-spec"
    wait_for(lambda: step_ends(run_dir) >= 2, 60, "two rounds")

    status = run_cli("status", job, "--json", env=slurm_env)
    row = json.loads(status.out)[0]
    assert row["state"] == "RUNNING" and row["nodes"] == "n1"
    assert 0 < row["time"] < 120  # how long it has run, not its time limit (00:30:00)
    assert re.match(r"round \d+/20", row["progress"]) and float(row["tok_s"]) > 0
    assert "RUNNING" in run_cli("status", env=slurm_env).out
    verbose = run_cli("status", "-v", env=slurm_env)  # says how job state is read (no pyslurm for Slurm 22.05)
    assert "monitor: pyslurm is not installed" in verbose.err and "squeue" in verbose.err

    watch = run_cli("watch", job, "--timeout", "3", env=slurm_env)
    assert watch.rc == 0 and f"job {job}: RUNNING on n1" in watch.out and "Paris is the capital." in watch.out

    cancel = run_cli("cancel", job, env=slurm_env)
    assert cancel.rc == 0 and f"cancelled {job}" in cancel.out
    assert json.loads(run_cli("status", job, "--json", env=slurm_env).out)[0]["state"] == "CANCELLED"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "cancelled"  # not "running": rank 0 got scancel's SIGTERM and said so
    assert "(cancelled)" in json.loads(run_cli("status", job, "--json", env=slurm_env).out)[0]["progress"]
    logs = run_cli("logs", job, env=slurm_env)
    assert f"swarm-hpc: job {job} on n1" in logs.out
    # the transcript keeps what was finished; --resume continues it as a new job
    done = step_ends(run_dir)
    info = submit_wait(None, slurm_env, tmp_path / "runs", "--resume", str(run_dir))
    assert info["state"] == "COMPLETED" and info["run_dir"] == str(run_dir)
    rounds = [r["round"] for r in messages(run_dir) if r["role"] == "expert" and r["expert"] == "alice"]
    assert rounds == list(range(1, 22)) and done >= 2  # 20 rounds + the synthesis, none run twice


def test_array_job_one_swarm_per_task(slurm_env, tiny, write_spec, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=1)
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# one question per line\nWhat is the capital of France?\n\nWhat is the capital of Italy?\n")
    info = submit_wait(spec, slurm_env, tmp_path / "runs", "--tasks", str(tasks))
    assert info["state"] == "COMPLETED"
    job = info["job_id"]
    for i, task in enumerate(["What is the capital of France?", "What is the capital of Italy?"]):
        run_dir = tmp_path / "runs" / f"slurm-{job}_{i}-spec"
        recs = messages(run_dir)
        assert [r["content"] for r in recs if r["role"] == "task"] == [task]
        assert [r for r in recs if r["role"] == "final"]
        assert "== final answer" in run_cli("logs", f"{job}_{i}", env=slurm_env).out


def test_a_requeued_job_resumes_at_the_right_round(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=4, round_timeout=30)
    env = {**slurm_env, "SWARM_HPC_TEST_STALL": "bob:2"}
    res = run_cli("submit", spec, "--out", tmp_path / "runs", env=env)
    assert res.rc == 0, res.err
    job = res.out.strip()
    run_dir = tmp_path / "runs" / f"slurm-{job}-spec"
    wait_for(lambda: step_ends(run_dir) >= 1, 60, "round 1")
    local_slurm.run("scontrol", "requeue", job)  # SLURM kills the job and queues it again, same id
    result = local_slurm.wait(int(job), timeout=180)
    assert result.state == "COMPLETED", result
    recs = messages(run_dir)
    rounds = [r["round"] for r in recs if r["role"] == "expert" and r["expert"] == "alice"]
    assert rounds == [1, 2, 3, 4, 5]  # each round once: the requeued job went on from the last finished one
    log = run_cli("logs", job, env=slurm_env).out  # the log is appended to: both starts are in it
    assert log.index("(new)") < log.index("(resume)")


def test_chat_through_srun(slurm_env, tiny, write_spec, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])])
    p = subprocess.run([os.sys.executable, "-m", "swarm_hpc", "chat", str(spec), "--out", str(tmp_path / "runs")],
                       input="What is the capital of France?\nAnd of Italy?\n/quit\n", capture_output=True, text=True,
                       env={**os.environ, **slurm_env}, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("you> ") == 3 and "Rome is the answer." in p.stdout
    run_dir = next((tmp_path / "runs").iterdir())
    users = [r["content"] for r in messages(run_dir) if r["role"] == "user"]
    assert users == ["What is the capital of France?", "And of Italy?"]


def test_user_strings_reach_slurm_intact(slurm_env, tiny, write_spec, tmp_path):
    """A job name and paths full of shell syntax are data: the job runs and SLURM shows the name as written."""
    weird = tmp_path / "my runs $(touch pwned) `id` 'q' \"dq\""
    name = "it's a $(touch pwned) `id` job; touch pwned"
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    spec.write_text(spec.read_text() + f"\n[slurm]\njob_name = {json.dumps(name)}\n")
    info = submit_wait(spec, slurm_env, weird)
    assert info["state"] == "COMPLETED"
    assert Path(info["run_dir"]).parent == weird
    out = subprocess.run(["squeue", "--json", "--all"], env=slurm_env, capture_output=True, text=True).stdout
    assert name in [j["name"] for j in json.loads(out)["jobs"]]
    assert not (ROOT / "pwned").exists() and not (Path.cwd() / "pwned").exists() and not any(tmp_path.rglob("pwned"))


def test_logs_of_a_hand_submitted_script(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    """A rendered script given to sbatch by hand, its output folder not made yet: the job runs (SLURM fails a job
    whose log folder is missing, with no log), its log is where sbatch ran, and `logs` finds it (%j filled in)."""
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    out = tmp_path / "runs"  # does not exist
    here = tmp_path / "submitted-from"
    here.mkdir()
    script = tmp_path / "job.sbatch"
    script.write_text(run_cli("render", spec, "--out", out, env=slurm_env).out)
    sub = subprocess.run(["sbatch", "--parsable", str(script)], env={**os.environ, **slurm_env}, capture_output=True,
                         text=True, cwd=here)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    result = local_slurm.wait(int(job), timeout=120)
    assert result.state == "COMPLETED", result
    assert "final answer" in (here / f"slurm-{job}-spec.log").read_text()
    assert [r for r in messages(out / f"slurm-{job}-spec") if r["role"] == "final"]
    logs = run_cli("logs", job, env=slurm_env)
    assert logs.rc == 0 and f"swarm-hpc: job {job}" in logs.out, logs.err


def test_a_job_whose_python_is_missing_says_so_in_its_log(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    """The job needs swarm-hpc at the same path on every node: when it is not there, one line says so."""
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    text = run_cli("render", spec, "--out", tmp_path / "runs", env=slurm_env).out
    script = tmp_path / "job.sbatch"
    script.write_text(re.sub(r"(?m)^SWARM_PYTHON=.*$", "SWARM_PYTHON=/nowhere/bin/python", text))
    job = local_slurm.sbatch(script, "-D", str(tmp_path))
    assert local_slurm.wait(job, timeout=60).state == "FAILED"
    log = (tmp_path / f"slurm-{job}-spec.log").read_text()
    assert log.strip().splitlines() == [
        "swarm-hpc: error: /nowhere/bin/python is not on node n1 (fix: install swarm-hpc at the same path on every node)"]


def test_slurm_errors_are_one_line(slurm_env, tiny, write_spec, tmp_path):
    def one_line(res, *needles):
        assert res.rc == 2, (res.out, res.err)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.err
        for n in needles:
            assert n in lines[0], lines[0]

    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])])
    base = spec.read_text()
    spec.write_text(base + '\n[slurm]\npartition = "nosuch"\n')
    one_line(run_cli("submit", spec, "--out", tmp_path / "r", env=slurm_env), "Invalid partition", "sinfo")
    one_line(run_cli("submit", spec, "--dry-run", "--out", tmp_path / "r", env=slurm_env), "Invalid partition")
    spec.write_text(base + "\n[slurm]\nnodes = 2\n")  # the cluster has one node
    one_line(run_cli("submit", spec, "--out", tmp_path / "r", env=slurm_env), "not available", "fewer tasks")
    spec.write_text(base + "\n[slurm]\nntasks_per_node = 9\n")
    one_line(run_cli("submit", spec, "--out", tmp_path / "r", env=slurm_env), "fewer tasks")
    spec.write_text(base)
    one_line(run_cli("submit", spec, "--out", tmp_path / "r", env={**slurm_env, "SLURM_CONF": str(tmp_path / "none.conf")}),
             "no SLURM configuration", "SLURM_CONF")
    one_line(run_cli("status", "424242", env=slurm_env), "does not know this job")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_scancel_usr1_stops_after_the_round_and_the_job_requeues_itself(slurm_env, tiny, write_spec, tmp_path,
                                                                     local_slurm):
    """`scancel --signal=USR1 --batch` is the time-limit warning by hand: rank 0 ends the round in flight, the
    summary says `requeued`, the job requeues itself and the next start continues at the next round."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=6, round_timeout=30)
    env = {**slurm_env, "SWARM_HPC_TEST_STALL": "bob:2"}
    res = run_cli("submit", spec, "--out", tmp_path / "runs", env=env)
    assert res.rc == 0, res.err
    job = res.out.strip()
    run_dir = tmp_path / "runs" / f"slurm-{job}-spec"
    wait_for(lambda: step_ends(run_dir) >= 2, 60, "round 2")
    local_slurm.run("scancel", "--signal=USR1", "--batch", job)
    wait_for(lambda: local_slurm.job_fields(int(job)).get("Restarts") == "1", 60, "the job to requeue itself")
    stopped_at = step_ends(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "requeued"
    result = local_slurm.wait(int(job), timeout=180)
    assert result.state == "COMPLETED", result
    rounds = [r["round"] for r in messages(run_dir) if r["role"] == "expert" and r["expert"] == "alice"]
    assert rounds == list(range(1, 8)) and 2 <= stopped_at < 7  # every round once, the synthesis last
    log = run_cli("logs", job, env=slurm_env).out
    assert "requeues itself" in log and log.index("(new)") < log.index("(resume)") and "Traceback" not in log
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def test_a_job_at_its_time_limit_requeues_itself_and_finishes(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    """A one-minute job whose rounds need longer: SLURM's own warning (--signal=B:USR1@30) stops it after a round
    before the limit, it requeues itself, and the next start continues; nothing is cut off by the limit."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=30, round_timeout=10)
    spec.write_text(spec.read_text() + '\n[slurm]\ntime = "1"\n')
    env = {**slurm_env, "SWARM_HPC_TEST_STALL": "bob:2"}  # ~65 s of rounds: more than one start can do
    res = run_cli("submit", spec, "--out", tmp_path / "runs", env=env)
    assert res.rc == 0, res.err
    job = res.out.strip()
    run_dir = tmp_path / "runs" / f"slurm-{job}-spec"
    result = local_slurm.wait(int(job), timeout=420)
    assert result.state == "COMPLETED", (result, run_cli("logs", job, env=slurm_env).out)
    assert int(local_slurm.job_fields(int(job))["Restarts"]) >= 1
    rounds = [r["round"] for r in messages(run_dir) if r["role"] == "expert" and r["expert"] == "alice"]
    assert rounds == list(range(1, 32))
    log = run_cli("logs", job, env=slurm_env).out
    assert "requeues itself" in log and "TIME LIMIT" not in log and "Traceback" not in log


def test_the_spec_is_read_at_submit_not_when_the_job_starts(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1, task="the task as submitted")
    spec.write_text(spec.read_text() + '\n[slurm]\nextra = ["--hold"]\n')
    res = run_cli("submit", spec, "--out", tmp_path / "runs", env=slurm_env)
    assert res.rc == 0, res.err
    job = res.out.strip()
    spec.write_text(spec.read_text().replace("the task as submitted", "an edit made while the job pends"))
    local_slurm.run("scontrol", "release", job)
    assert local_slurm.wait(int(job), timeout=120).state == "COMPLETED"
    run_dir = tmp_path / "runs" / f"slurm-{job}-spec"
    assert [r["content"] for r in messages(run_dir) if r["role"] == "task"] == ["the task as submitted"]


def test_each_submit_uses_one_job_id_and_results_are_readable(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    first = submit_wait(spec, slurm_env, tmp_path / "runs")
    second = run_cli("submit", spec, "--out", tmp_path / "runs", env=slurm_env)
    assert second.rc == 0, second.err
    assert int(second.out.strip()) == int(first["job_id"]) + 1  # no id used up by a check
    local_slurm.wait(int(second.out.strip()), timeout=120)
    umask = os.umask(0o022)
    os.umask(umask)
    run_dir = Path(first["run_dir"])
    for name in ("spec.json", "summary.json", "final.md", "transcript.jsonl"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_new_cluster_state_does_not_show_an_older_jobs_run(slurm_env, tiny, write_spec, tmp_path, slurm_clusters):
    """Job ids start at 1 again on a cluster with a new state: `status` and `logs` of the new job 1 must not show
    the old job 1's run directory and log (the job index matches SLURM's submit time)."""
    def fresh_cluster():
        state = slurm_clusters.get(1).state
        slurm_clusters.stop()
        shutil.rmtree(state / "ctld", ignore_errors=True)
        (state / "jobcomp.log").unlink(missing_ok=True)
        return slurm_clusters.get(1)

    spec = write_spec([expert("alice", tiny["paris"])], rounds=1)
    cluster = fresh_cluster()
    env = {**cluster.env, "SWARM_HPC_STATE": str(tmp_path / "state")}
    old = submit_wait(spec, env, tmp_path / "old")
    cluster = fresh_cluster()
    script = tmp_path / "job.sbatch"
    script.write_text(run_cli("render", spec, "--out", tmp_path / "new", env=env).out)
    sub = subprocess.run(["sbatch", "--parsable", "--hold", "-D", str(tmp_path), str(script)], env=env,
                         capture_output=True, text=True)  # by hand, with this test's job index
    job = int(sub.stdout.strip())
    assert str(job) == old["job_id"]
    row = json.loads(run_cli("status", str(job), "--json", env=env).out)[0]
    assert row["state"] == "PENDING" and row["run_dir"] == "", row
    cluster.run("scontrol", "release", str(job))
    assert cluster.wait(job, timeout=120).state == "COMPLETED"
    row = json.loads(run_cli("status", str(job), "--json", env=env).out)[0]
    assert row["run_dir"] == str(tmp_path / "new" / f"slurm-{job}-spec")
    logs = run_cli("logs", str(job), env=env)
    assert logs.out.count("swarm-hpc: job") == 1 and str(tmp_path / "new") in logs.out


def test_ctrl_c_in_a_chat_round_is_a_clean_stop(slurm_env, tiny, write_spec, tmp_path, local_slurm):
    """Ctrl-C while the swarm answers, in `swarm-hpc chat` under srun --pty: no traceback, a job that ends
    COMPLETED, and the summary says `stopped`."""
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], round_timeout=60)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, on a terminal of its own
        os.chdir(ROOT)
        os.execvpe(sys.executable, [sys.executable, "-m", "swarm_hpc", "chat", str(spec), "--out",
                                    str(tmp_path / "runs")], {**os.environ, **slurm_env, "SWARM_HPC_TEST_STALL": "bob:30"})
    out = b""

    def read_until(needle: bytes, timeout: float) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while needle not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        assert needle in out, out.decode(errors="replace")

    try:
        read_until(b"you> ", 120)
        os.write(fd, b"What is the capital of France?\r")
        read_until(b"Paris is the capital.", 60)  # alice answered; bob stalls: the round is in flight
        os.write(fd, b"\x03")
        read_until(b"summary status", 30)
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(OSError):
            while select.select([fd], [], [], 0.5)[0] and os.read(fd, 4096):
                pass
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0 and "Traceback" not in text, text
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
    jobs = json.loads(local_slurm.run("squeue", "--json", "--all").stdout)["jobs"]
    assert [j["job_state"] for j in jobs if j["name"] == "chat-spec"][-1] == "COMPLETED"


# --- several nodes ---------------------------------------------------------------------------------------------


def test_demo_swarm_spans_nodes(local_slurm_3nodes, tmp_path):
    env = {**local_slurm_3nodes.env, "SWARM_HPC_STATE": str(tmp_path / "state")}
    demo = (ROOT / "jobs" / "examples" / "demo.toml").read_text()
    spec = tmp_path / "demo-3nodes.toml"
    spec.write_text(demo + "\n[slurm]\nntasks_per_node = 1\n")  # one expert per node
    t0 = time.monotonic()
    info = submit_wait(spec, env, tmp_path / "runs")
    took = time.monotonic() - t0
    assert info["state"] == "COMPLETED"
    recs = messages(Path(info["run_dir"]))
    nodes = {r["expert"]: r["node"] for r in recs if r["role"] == "expert"}
    assert set(nodes.values()) == {"n1", "n2", "n3"}, nodes
    assert [r for r in recs if r["role"] == "final"][0]["content"]
    # rank 0 and the experts on other nodes wake each other over the nodes' network, not by polling
    summary = json.loads((Path(info["run_dir"]) / "summary.json").read_text())
    assert {r["wakeup"] for r in summary["ranks"]} == {"doorbell"}, summary["ranks"]
    print(f"\ndemo on 3 nodes: submit -> final answer {took:.1f} s")


def test_an_eval_as_an_array_job_one_task_per_shard(slurm_env, write_spec, tmp_path):
    """`swarm-hpc eval --submit`: the shards answer their questions in parallel array tasks; the last to end
    writes the results of all of them."""
    from tinygguf import write_tiny_gguf

    m42, m7 = write_tiny_gguf(tmp_path / "a42.gguf", "So Answer: 42"), write_tiny_gguf(tmp_path / "a7.gguf", "Answer: 7")
    spec = write_spec([expert("alice", m42), expert("bob", m42), expert("carol", m7)], strategy="vote", rounds=1)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(f'{{"question": "q{i}?", "answer": {a}}}\n' for i, a in enumerate([42, 7, 42, 7, 42])))
    out = tmp_path / "ev"
    res = run_cli("eval", spec, "--questions", questions, "--arms", "single,vote", "--out", out, "--submit",
                  "--shards", "2", env=slurm_env)
    assert res.rc == 0, res.err
    job = re.search(r"submitted eval job (\d+) \(0-1: 2 shard", res.out).group(1)

    def all_answered() -> bool:
        try:
            return json.loads((out / "results.json").read_text())["arms"]["vote"]["n"] == 5
        except (OSError, ValueError, KeyError):
            return False

    wait_for(all_answered, 240, "both shards' results")
    arms = json.loads((out / "results.json").read_text())["arms"]
    assert arms["vote"]["accuracy"] == pytest.approx(0.6, abs=1e-3) and arms["single:carol"]["n"] == 5
    logs = sorted(out.glob(f"slurm-{job}_*.log"))
    assert len(logs) == 2 and all("eval shard" in p.read_text() for p in logs)


def test_two_swarms_that_do_not_fit_in_memory_together_are_not_packed(slurm_env, local_slurm, tiny, tmp_path):
    """The local cluster schedules memory (CR_Core_Memory, RealMemory = this machine's): two one-CPU jobs that
    each ask for 60 % of the node's memory do not run at the same time, though the node has CPUs for both."""
    node = local_slurm.run("scontrol", "-o", "show", "node", local_slurm.nodes[0]).stdout
    real_mb = int(re.search(r"RealMemory=(\d+)", node).group(1))
    spec = tmp_path / "big.toml"
    spec.write_text(f'task = "t"\nstrategy = "vote"\nrounds = 1\nround_timeout = 60\n'
                    f'[slurm]\nmem_per_cpu = "{int(real_mb * 0.6)}M"\n'
                    f'[[experts]]\nname = "alice"\nmodel = "{tiny["paris"]}"\npersona = "p"\nn_ctx = 512\nmax_tokens = 16\n')
    env = {**slurm_env, "SWARM_HPC_TEST_STALL": "alice:20"}
    first, second = (run_cli("submit", spec, "--out", tmp_path / "runs", env=env).out.strip() for _ in range(2))
    wait_for(lambda: local_slurm.job_fields(int(first)).get("JobState") == "RUNNING", 60, "the first job to run")
    # right after sbatch a job's reason is None until the scheduler has looked at it
    wait_for(lambda: local_slurm.job_fields(int(second)).get("Reason") != "None", 30, "the scheduler's verdict")
    fields = local_slurm.job_fields(int(second))
    assert local_slurm.job_fields(int(first))["JobState"] == "RUNNING", "the first job ended too soon to tell"
    assert fields["JobState"] == "PENDING" and fields.get("Reason") == "Resources", fields
    assert local_slurm.wait(int(first), timeout=120).state == "COMPLETED"
    assert local_slurm.wait(int(second), timeout=120).state == "COMPLETED"


def test_a_job_asks_for_the_memory_its_ranks_need(slurm_env, local_slurm, tiny, write_spec, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=1)
    job = run_cli("submit", spec, "--out", tmp_path / "runs", env=slurm_env).out.strip()
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.experts.preflight import job_mem_per_cpu

    want = job_mem_per_cpu(load_spec(spec), spec.parent, 1)   # not the partition's DefMemPerCPU
    assert local_slurm.job_fields(int(job))["MinMemoryCPU"] == want
    assert local_slurm.wait(int(job), timeout=120).state == "COMPLETED"
