"""`swarm-hpc bench`: the model benchmark, for real: tiny GGUF models the suite writes, the bundled smollm2, bad
models next to good ones, the report (table, CSV, JSON, PNG plot, comparison) and an array job on the local
SLURM cluster."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarm_hpc.errors import UserError
from swarm_hpc.ops.benchmark import runner as bench_runner
from swarm_hpc.ops.benchmark.cli import bench
from swarm_hpc.ops.benchmark.config import ModelRun, load_config
from swarm_hpc.ops.benchmark.measure import MeasureJob
from swarm_hpc.ops.benchmark.plan import load_plan, make_plan
from swarm_hpc.ops.benchmark.submit import array_jobs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = "reps = 2\nprompt_tokens = 32\nmax_tokens = 16\nprobe_max_tokens = 8\nn_ctx = 256\nbandwidth_mb = 64\n"


def write_models(folder: Path, *models: str, head: str = FAST) -> Path:
    path = folder / "models.toml"
    path.write_text(head + "".join(f'\n[[models]]\nmodel = "{m}"\n' for m in models))
    return path


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(bench, [str(a) for a in args], env=env, catch_exceptions=False)
    return result


def rows_by_model(run_dir: Path) -> dict[str, dict]:
    return {r["model"]: r for r in json.loads((run_dir / "results.json").read_text())["rows"]}


def check_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def check_sane(row: dict) -> None:
    assert row["status"] == "ok", row
    assert row["gen_tok_s"] > 0 and row["prompt_tok_s"] > 0 and row["load_s"] > 0
    assert row["gen_tok_s_min"] <= row["gen_tok_s"] <= row["gen_tok_s_max"]
    assert row["peak_mb"] > row["model_mb"] > 0
    assert 0 < row["bw_ratio"] < 1.2
    assert row["bandwidth_gb_s"] > 0.1
    assert row["probe_total"] == 8 and 0 <= row["probe_correct"] <= 8
    assert row["reps"] == 2 and row["prompt_tokens"] == 32 and row["n_ctx"] >= 256


# --- bad input: one line, exit code 2, nothing written ---------------------------------------------------------

@pytest.mark.parametrize("head, field", [
    (FAST + "repz = 3\n", "repz"),
    (FAST.replace("n_ctx = 256", "n_ctx = 300"), "n_ctx"),
    (FAST + "max_tokens = 1\n", None),  # duplicate key: not valid TOML
    (FAST.replace("n_ctx = 256", "n_ctx = 256\nprompt_tokens = 300\n").replace("prompt_tokens = 32\n", ""), "n_ctx"),
])
def test_bad_file_is_one_line(tmp_path: Path, head: str, field: str | None) -> None:
    path = write_models(tmp_path, "smollm2", head=head)
    r = invoke("models", path)
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"swarm-hpc: error: {path}") and "(fix: " in line
    if field:
        assert f": {field}: " in line
    assert not (tmp_path / "results").exists()


def test_bad_models_table_and_flags(tmp_path: Path) -> None:
    path = write_models(tmp_path, "smollm2", "smollm2")
    r = invoke("models", path)
    assert r.exit_code == 2 and "named 'smollm2'" in r.stderr and ": models: " in r.stderr
    path = write_models(tmp_path, "smollm2")
    for args, msg in ((["--nodes", "n1"], "--nodes needs --submit"), (["--local", "--submit"], "exclude each other"),
                      (["--submit", "--nodes", "n1;rm"], "not a node name")):
        r = invoke("models", path, *args)
        assert r.exit_code == 2 and msg in r.stderr, r.stderr
    r = invoke("report", tmp_path)
    assert r.exit_code == 2 and "no plan.json" in r.stderr
    # no SLURM controller to submit to: one line, and the run directory is removed again
    r = invoke("models", path, "--submit", env={"SLURM_CONF": str(tmp_path / "no-slurm.conf")})
    assert r.exit_code == 2 and r.stderr.startswith("swarm-hpc: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "results").exists()


# --- a local run: tiny models and bad ones ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny) -> Path:
    d = tmp_path_factory.mktemp("bench")
    (d / "notgguf.gguf").write_text("this is not a GGUF file\n")
    (d / "corrupt.gguf").write_bytes(tiny["random"].read_bytes()[:4096])  # a GGUF header, then nothing
    (d / "tiny.gguf").write_bytes(tiny["random"].read_bytes())
    path = write_models(d, "tiny.gguf", "notgguf.gguf", "missing.gguf", "corrupt.gguf")
    r = invoke("models", path, "--out", d / "run")
    assert r.exit_code == 1, r.output + r.stderr  # 1: some models failed, results still written
    return d / "run"


def test_local_run_keeps_going_after_bad_models(tiny_run: Path) -> None:
    rows = rows_by_model(tiny_run)
    assert list(rows) == ["tiny", "notgguf", "missing", "corrupt"]
    check_sane(rows["tiny"])
    assert rows["tiny"]["peak_mb"] > 20  # a whole process, not just the 0.5 MB of weights
    assert "is not a GGUF file" in rows["notgguf"]["error"] and "models[1].model" in rows["notgguf"]["error"]
    assert "does not exist" in rows["missing"]["error"]
    assert "Failed to load model" in rows["corrupt"]["error"]
    for bad in ("notgguf", "missing", "corrupt"):
        assert rows[bad]["status"] == "error" and rows[bad]["gen_tok_s"] is None
    raw = sorted(p.name for p in (tiny_run / "raw").iterdir())
    assert raw == ["000-tiny-" + rows["tiny"]["node"] + ".json"] + [f"00{i}-{m}-{rows[m]['node']}.json" for i, m in
                                                                    ((1, "notgguf"), (2, "missing"), (3, "corrupt"))]
    result = json.loads((tiny_run / "raw" / raw[0]).read_text())
    reps = result["measurement"]["reps"]
    assert len(reps) == 2 and all(r["gen_tokens"] >= 15 for r in reps)  # end of text banned: max_tokens - 1 decoded


def test_report_files(tiny_run: Path) -> None:
    check_png(tiny_run / "plot.png")
    md = (tiny_run / "report.md").read_text()
    assert "| model | node |" in md and "| tiny |" in md and "**failed**" in md and "- **missing** on" in md
    csv_lines = (tiny_run / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,node,status,error,") and len(csv_lines) == 5
    r = invoke("report", tiny_run)
    assert r.exit_code == 0 and "| tiny |" in r.output and "1 of 4 measured" in r.output


def test_report_compare(tiny_run: Path, tmp_path: Path) -> None:
    old = json.loads((tiny_run / "results.json").read_text())
    for row in old["rows"]:
        if row["model"] == "tiny":
            for k in ("gen_tok_s", "gen_tok_s_min", "gen_tok_s_max"):
                row[k] = row[k] / 2  # the old run generated at half the speed
    (tmp_path / "old.json").write_text(json.dumps(old))
    r = invoke("report", tiny_run, "--compare", tmp_path / "old.json")
    assert r.exit_code == 0, r.stderr
    line = next(x for x in r.output.splitlines() if x.startswith("| tiny |") and "→" in x)
    assert "generation faster" in line and "+100.0%" in line
    assert "## Compared with" in (tiny_run / "report.md").read_text()
    check_png(tiny_run / "plot.png")
    # the same run against itself (its CSV): nothing changed
    r = invoke("report", tiny_run, "--compare", tiny_run / "results.csv")
    line = next(x for x in r.output.splitlines() if x.startswith("| tiny |") and "→" in x)
    assert "generation same, prompt same" in line and "+0.0%" in line
    r = invoke("report", tiny_run, "--compare", tmp_path / "nothing.json")
    assert r.exit_code == 2 and "file not found" in r.stderr


# --- containment: a model process that runs too long, a model too large for the node ----------------------------

def _run(path: Path, **kw) -> ModelRun:
    base = dict(name="tiny", model=str(path), threads=1, n_ctx=256, chat_format=None, reps=1, prompt_tokens=32,
                max_tokens=8, probe_max_tokens=8, bandwidth_mb=16, timeout=60.0)
    return ModelRun(**{**base, **kw})


def test_timeout_kills_the_model_process(tiny) -> None:
    run = _run(tiny["random"], reps=5, n_ctx=2304, max_tokens=2000)  # seconds of work, stopped after 0.5 s
    record, _maxrss = bench_runner.run_measure(MeasureJob(run, str(tiny["random"]), None), timeout=0.5,
                                              progress=lambda e: None)
    assert record["status"] == "error" and "timeout of 0.5 s" in record["error"], record


def test_too_large_model_is_reported(tiny, tmp_path: Path, monkeypatch) -> None:
    path = write_models(tmp_path, str(tiny["random"]))
    plan = make_plan(load_config(path), path, "local", [])
    (tmp_path / "raw").mkdir()
    monkeypatch.setattr(bench_runner, "mem_available", lambda: 1000)
    result = bench_runner.run_task(plan, plan.tasks[0], tmp_path, bench_runner.Bandwidths(), lambda e: None)
    assert result.status == "error" and "too large" in result.error and result.measurement is None
    assert len(list((tmp_path / "raw").iterdir())) == 1


# --- the array job script ------------------------------------------------------------------------------------------

def test_array_script(tmp_path: Path) -> None:
    path = write_models(tmp_path, "smollm2", "gemma3", head=FAST + 'threads = 2\n[slurm]\npartition = "pis"\n')
    plan = make_plan(load_config(path), path, "slurm", ["blade01", "blade02"])
    run_dir = tmp_path / "run dir 'x'"
    jobs = array_jobs(plan, run_dir, python="/opt/my python/bin/python")
    assert [(j.node, j.first, j.last) for j in jobs] == [("blade01", 0, 1), ("blade02", 2, 3)]
    s = jobs[1].script
    assert "#SBATCH --array=2-3%1\n" in s and "#SBATCH --nodelist=blade02\n" in s
    assert "#SBATCH --cpus-per-task=2\n" in s and "#SBATCH --partition=pis\n" in s and "#SBATCH --exclusive\n" in s
    assert f'#SBATCH --output="{run_dir.resolve()}/logs/%A_%a.out"' in s
    last = s.strip().splitlines()[-1]
    assert shlex.split(last) == ["exec", "/opt/my python/bin/python", "-m", "swarm_hpc.ops.benchmark.task", str(run_dir.resolve())]


# --- real models and real SLURM ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bundled_smollm2(tmp_path: Path) -> None:
    path = write_models(tmp_path, "smollm2")
    r = invoke("models", path, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output + r.stderr
    row = rows_by_model(tmp_path / "run")["smollm2"]
    check_sane(row)
    assert row["model_mb"] > 90 and row["peak_mb"] > 100
    assert row["probe_correct"] >= 3, row  # SmolLM2-135M answers most of these (7 of 8 when measured)
    check_png(tmp_path / "run" / "plot.png")


@pytest.mark.slow
def test_slurm_array(local_slurm, tiny, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf").write_bytes(tiny["random"].read_bytes())
    path = write_models(tmp_path, "tiny.gguf", "missing.gguf", head=FAST + '[slurm]\ntime = "00:05:00"\n')
    assert local_slurm.python == sys.executable
    r = invoke("models", path, "--submit", "--nodes", local_slurm.nodes[0], "--wait", "--wait-timeout", "120",
               "--out", tmp_path / "run", env=local_slurm.env)
    run_dir = tmp_path / "run"
    logs = "\n".join(p.read_text() for p in sorted((run_dir / "logs").glob("*.out")))
    assert r.exit_code == 1, r.output + r.stderr + logs  # the missing model failed, the tiny one was measured
    rows = rows_by_model(run_dir)
    check_sane(rows["tiny"])
    assert rows["tiny"]["node"] == local_slurm.nodes[0]
    assert rows["missing"]["status"] == "error" and "does not exist" in rows["missing"]["error"]
    assert len(list((run_dir / "logs").glob("*_0.out"))) == 1 and "tiny: repetition 2/2" in logs
    jobs = json.loads((run_dir / "jobs.json").read_text())
    assert len(jobs) == 1 and jobs[0]["node"] == local_slurm.nodes[0] and jobs[0]["array"] == "0-1"
    result = json.loads(next((run_dir / "raw").glob("000-*.json")).read_text())
    assert result["slurm_job"] == f"{jobs[0]['job_id']}_0"
    assert load_plan(run_dir).mode == "slurm"
    check_png(run_dir / "plot.png")


def test_user_error_type() -> None:
    with pytest.raises(UserError):
        load_config(Path("nowhere/models.toml"))
