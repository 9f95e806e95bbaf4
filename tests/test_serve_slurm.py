"""`swarm-hpc serve --submit`: the service as a SLURM job on the real local cluster (slurm/local-cluster.sh),
called with the real openai SDK; its URL and key in `swarm-hpc status`; the time-limit warning (SIGUSR1)
requeues it and it serves again from the same folder; scancel stops it cleanly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import expert, run_cli, wait_for

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def test_a_service_job_serves_requeues_and_stops_cleanly(local_slurm, tiny, write_spec, tmp_path):
    env = {**local_slurm.env, "SWARM_HPC_STATE": str(tmp_path / "state"), "SWARM_HPC_API_KEY": ""}
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], name="duo", rounds=1,
                      synthesizer="alice")
    res = run_cli("serve", spec, "--submit", "--time", "00:10:00", "--out", tmp_path / "runs", env=env)
    assert res.rc == 0, res.err
    job = re.search(r"submitted service job (\d+)", res.out).group(1)
    key_file = Path(re.search(r"API key: (\S+) \(mode 0600\)", res.out).group(1))
    folder = key_file.parent

    def status() -> dict:
        return json.loads(run_cli("status", job, "--json", env=env).out)[0]

    def serving(after: float = 0.0) -> str | None:
        info = json.loads((folder / "service.json").read_text()) if (folder / "service.json").exists() else {}
        return info["url"] if info.get("status") == "listening" and info["started"] > after else None

    wait_for(lambda: serving() is not None, 120, "the service job to listen")
    row = status()
    assert row["state"] == "RUNNING" and row["run_dir"] == str(folder)
    url = serving()
    assert row["progress"] == f"listening {url} key {key_file}"
    client = openai.OpenAI(base_url=url, api_key=key_file.read_text().strip(), max_retries=0, timeout=60)
    r = client.chat.completions.create(model="duo", messages=[{"role": "user", "content": "Capital of France?"}])
    assert r.choices[0].message.content == "Paris is the capital." and r.usage.completion_tokens > 0

    # the time-limit warning by hand: the service stops taking requests, the job requeues itself, serves again
    first = json.loads((folder / "service.json").read_text())["started"]
    local_slurm.run("scancel", "--signal=USR1", "--batch", job)
    wait_for(lambda: local_slurm.job_fields(int(job)).get("Restarts") == "1", 90, "the job to requeue itself")
    wait_for(lambda: serving(after=first) is not None, 120, "the requeued service to listen")
    client = openai.OpenAI(base_url=serving(), api_key=key_file.read_text().strip(), max_retries=0, timeout=60)
    r = client.chat.completions.create(model="duo/bob", messages=[{"role": "user", "content": "Capital of Italy?"}])
    assert r.choices[0].message.content == "Rome is the answer."

    # scancel: SIGTERM; rank 0 says so in service.json and the job ends without a traceback
    assert run_cli("cancel", job, env=env).rc == 0
    assert status()["state"] == "CANCELLED"
    assert json.loads((folder / "service.json").read_text())["status"] == "cancelled"
    log = run_cli("logs", job, env=env).out
    assert "requeues itself" in log and "Traceback" not in log
    runs = sorted((folder / "requests").iterdir())
    assert len(runs) == 2 and all(json.loads((d / "summary.json").read_text())["status"] == "complete" for d in runs)
