"""`swarm-hpc fed submit`: federated training as a SLURM job on the real local cluster (slurm/local-cluster.sh).
The time-limit warning (SIGUSR1) ends the job after the round in flight and it requeues itself; scancel (SIGTERM)
gives up the round in flight and says `cancelled`; `fed submit --resume` continues from the checkpoint. Every
round is recorded once. Clients are slowed from outside the product (tests/fed_faults.py) so a signal lands
mid-run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli, wait_for
from test_fed import WRAP, fed_spec, rounds

pytest.importorskip("sklearn")
pytestmark = pytest.mark.slow

SLOW = {**WRAP, "SWARM_HPC_FED_TEST_PAUSE": "0.4"}  # every fit() sleeps: a 16-round run takes ~7 s


def submit(local_slurm, tmp_path: Path, *args) -> tuple[str, Path]:
    env = {**local_slurm.env, **SLOW, "SWARM_HPC_STATE": str(tmp_path / "state")}
    res = run_cli("fed", "submit", *args, env=env)
    assert res.rc == 0, res.err
    job = res.out.splitlines()[0].strip()
    run_dir = Path(re.search(r"run directory: (\S+)", res.out).group(1))
    return job, run_dir


def done_rounds(run_dir: Path) -> int:
    return len(rounds(run_dir)) if (run_dir / "rounds.jsonl").exists() else 0


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_federated_job_requeues_at_the_time_limit_and_resumes_after_scancel(local_slurm, tmp_path):
    spec = fed_spec(tmp_path, clients=2, rounds=16, round_timeout=20.0)
    dry = run_cli("fed", "submit", spec, "--nodes", "1", "--dry-run", "--out", tmp_path / "runs",
                  env=local_slurm.env)
    assert dry.rc == 0, dry.err
    assert "#SBATCH --ntasks=2\n" in dry.out and "swarm_hpc.fed.rank" in dry.out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing

    job, run_dir = submit(local_slurm, tmp_path, spec, "--out", tmp_path / "runs")
    wait_for(lambda: done_rounds(run_dir) >= 3, 120, "three rounds")
    local_slurm.run("scancel", "--signal=USR1", "--batch", job)  # the time-limit warning, by hand
    wait_for(lambda: local_slurm.job_fields(int(job)).get("Restarts") == "1", 90, "the job to requeue itself")
    local_slurm.wait(int(job), timeout=180)
    assert local_slurm.job_fields(int(job))["JobState"] == "COMPLETED"
    assert [r["round"] for r in rounds(run_dir)] == list(range(1, 17))  # each round once, across the requeue
    assert summary(run_dir)["status"] == "complete"
    status = run_cli("status", job, "--json", env={**local_slurm.env, "SWARM_HPC_STATE": str(tmp_path / "state")})
    assert json.loads(status.out)[0]["progress"] == "done"
    log = (run_dir / f"slurm-{job}.log").read_text()
    assert "requeues itself" in log and "stopped after round" in log and "Traceback" not in log

    # scancel mid-run: the round in flight is given up, the summary says so, the checkpoint is the last round
    job, run_dir = submit(local_slurm, tmp_path, spec, "--out", tmp_path / "runs")
    wait_for(lambda: done_rounds(run_dir) >= 3, 120, "three rounds")
    local_slurm.run("scancel", job)
    wait_for(lambda: summary(run_dir)["status"] == "cancelled", 60, "the summary to say cancelled")
    local_slurm.wait(int(job), timeout=60)
    kept = done_rounds(run_dir)
    assert 3 <= kept < 16 and summary(run_dir)["rounds_done"] == kept

    job, again = submit(local_slurm, tmp_path, "--resume", run_dir)
    assert again == run_dir
    local_slurm.wait(int(job), timeout=180)
    assert [r["round"] for r in rounds(run_dir)] == list(range(1, 17))
    assert summary(run_dir)["status"] == "complete"
    assert "Traceback" not in (run_dir / f"slurm-{job}.log").read_text()
