"""Rendering job scripts: golden files for the example specs, and no user string can break out of its quoting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm_hpc.core.spec import load_spec, parse_spec
from swarm_hpc.jinja import directive
from swarm_hpc.slurm.job import SwarmJob

GOLDEN = Path(__file__).parent / "golden" / "jobs"
# fed-*.toml are federated-learning specs (`swarm-hpc fed`), which have no job script yet
EXAMPLES = sorted(p for p in (ROOT / "jobs" / "examples").glob("*.toml") if not p.name.startswith("fed-"))
FIXED = dict(python="/opt/swarm/.venv/bin/python")


def fixed_job(path: Path, **kw) -> SwarmJob:
    return SwarmJob(load_spec(path), Path("/opt/swarm/jobs/examples") / path.name, Path("/opt/swarm/runs"), **FIXED, **kw)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden_scripts_for_the_examples(example: Path):
    text = fixed_job(example).script()
    golden = GOLDEN / f"{example.stem}.sbatch"
    if os.environ.get("SWARM_HPC_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"re-render with SWARM_HPC_UPDATE_GOLDEN=1 if the change is intended: {golden}"
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_resources_come_from_the_spec(tmp_path):
    spec = parse_spec({"task": "t", "strategy": "debate", "rounds": 1, "rank0_hosts_expert": False,
                       "experts": [{"name": "a", "persona": "p", "threads": 2}, {"name": "b", "persona": "p", "threads": 3}],
                       "slurm": {"partition": "pis", "nodes": 2, "ntasks_per_node": 2, "mem_per_cpu": "900M",
                                 "time": "01:00:00", "requeue": False, "extra": ["--exclusive"]}}, "t")
    text = SwarmJob(spec, tmp_path / "s.toml", tmp_path, **FIXED).script()
    for line in ["#SBATCH --partition=pis", "#SBATCH --ntasks=3", "#SBATCH --cpus-per-task=3", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --mem-per-cpu=900M", "#SBATCH --time=01:00:00",
                 "#SBATCH --no-requeue", "#SBATCH --exclusive"]:
        assert line in text.splitlines(), line


def test_user_templates_override_the_shipped_ones(tmp_path):
    (tmp_path / "swarm.sbatch.j2").write_text("#!/bin/bash\n# my site's template for {{ job_name }}\n")
    text = fixed_job(EXAMPLES[0], templates_dir=tmp_path).script()
    assert text == f"#!/bin/bash\n# my site's template for swarm-{EXAMPLES[0].stem}\n"


# Any text a user can write: shell syntax, quotes, newlines, control characters, non-ASCII.
nasty = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40) | \
    st.sampled_from(["$(touch pwned)", "`id`", "'; touch pwned #", '"$HOME"', "a\nb", "x\\", "\\\n", "${IFS}", "%j %A"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=nasty, folder=nasty, spec_name=nasty, extra=nasty)
def test_no_user_string_breaks_out_of_its_quoting(name, folder, spec_name, extra, tmp_path):
    spec = parse_spec({"task": "t", "strategy": "vote", "rounds": 1, "experts": [{"name": "a", "persona": "p"}],
                       "slurm": {"job_name": name, "extra": [extra]}}, "t")
    out = tmp_path / folder.replace("/", "_").replace("\x00", "")
    spec_path = tmp_path / (spec_name.replace("/", "_") + ".toml")
    job = SwarmJob(spec, spec_path, out, **FIXED)
    text = job.script()
    assert subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
    lines = text.split("\n")  # bash's idea of a line
    # the header is exactly: comments and #SBATCH directives, each value on its own line
    header = lines[:lines.index("# --- values (shell-quoted: whatever they contain, they are data, never commands)")]
    assert all(l.startswith("#") or l == "" for l in header)
    assert f"#SBATCH --job-name={directive(job.job_name)}" in header  # a name of only spaces gets the default
    # the values block, run by bash, gives back exactly the strings the user wrote
    start = lines.index("# --- values (shell-quoted: whatever they contain, they are data, never commands)")
    end = lines.index("# --- end of values")
    block = "\n".join(lines[start:end])
    probe = block + '\nprintf "%s\\0" "$SWARM_SPEC" "$SWARM_OUT"\n'
    got = subprocess.run(["bash", "-c", probe], capture_output=True, cwd=tmp_path).stdout.split(b"\0")[:2]
    assert [g.decode() for g in got] == [str(spec_path), str(out)]
    assert not (tmp_path / "pwned").exists()


@given(value=nasty)
def test_directive_values_stay_on_one_line(value):
    d = directive(value)
    assert "\n" not in d and "\r" not in d


def test_chat_sessions_keep_the_specs_placement(tmp_path):
    spec = parse_spec({"task": "t", "strategy": "debate", "rounds": 1,
                       "experts": [{"name": n, "persona": "p"} for n in ("a", "b", "c")],
                       "slurm": {"nodes": 3, "ntasks_per_node": 1, "mem_per_cpu": "900M", "extra": ["--exclusive"]}},
                      "t")
    script = SwarmJob(spec, tmp_path / "s.toml", tmp_path, **FIXED).chat_script(["python", "-m", "x"], pty=False)
    words = " ".join(script.split("\\\n")).split()
    assert {"--ntasks=3", "--nodes=3", "--ntasks-per-node=1", "--mem-per-cpu=900M", "--exclusive"} <= set(words)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_an_eval_job_is_an_array_of_shards_that_writes_the_results():
    job = fixed_job(ROOT / "jobs" / "examples" / "demo.toml", run_dir=Path("/opt/swarm/runs/eval-1"), eval_shards=3)
    text = job.script()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert "#SBATCH --array=0-2" in text and "#SBATCH --job-name=eval-demo" in text
    assert 'rank_args=(--eval "${SLURM_ARRAY_TASK_ID}/3")' in text
    assert '-m swarm_hpc eval --report "$run_dir"' in text and " prepare " not in text
    assert str(job.log_path) == "/opt/swarm/runs/eval-1/slurm-%A_%a.log"
