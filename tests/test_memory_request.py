"""A SLURM job's memory request (experts/preflight.py `rank_memory_mb`) against what a rank really uses: a real
llama.cpp expert on the bundled models, in a process of its own, RSS read from /proc after a turn. The capable
models run where they are installed and not skipped (the suite skips them: SWARM_HPC_SKIP_MODELS= runs them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from swarm_hpc.core.spec import parse_spec
from swarm_hpc.experts.models import resolve_model
from swarm_hpc.experts.preflight import job_mem_per_cpu, rank_memory_mb

PROBE = """
import json, sys
from pathlib import Path
from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.memory import rss_mb
from swarm_hpc.experts.models import resolve_model
from mpi4py import MPI  # noqa: F401  (a rank has it loaded)
e = LlamaExpert("x", resolve_model(sys.argv[1], Path(".")), n_ctx=int(sys.argv[2]), threads=1, temperature=0.0,
                seed=1, max_tokens=16)
e.answer([{"role": "user", "content": "Say something about the sea."}])
print(json.dumps(rss_mb()))
"""


def spec_with(model: str, n_ctx: int, threads: int = 1):
    return parse_spec({"task": "t", "strategy": "vote", "rounds": 1, "experts": [
        {"name": "a", "model": model, "persona": "p", "n_ctx": n_ctx, "threads": threads}]}, "test")


@pytest.mark.parametrize("model", ["smollm2", "gemma3", "qwen-coder-0.5b", "qwen-coder-1.5b"])
def test_a_ranks_request_covers_what_it_really_uses(model):
    """Not by much more either: the weights are counted once (the mapped file), with no repacked copy of them."""
    try:
        resolve_model(model, Path("."))
    except Exception:
        pytest.skip(f"bundled model {model} is not installed (or SWARM_HPC_SKIP_MODELS skips it)")
    n_ctx = 2048
    used = json.loads(subprocess.run([sys.executable, "-c", PROBE, model, str(n_ctx)], capture_output=True, text=True,
                                     check=True, timeout=120).stdout)
    asked = rank_memory_mb(spec_with(model, n_ctx).experts[0], Path("."))
    assert used <= asked <= 1.5 * used, (used, asked)


def test_the_request_grows_with_the_context_and_is_split_over_the_cpus():
    small, big = (rank_memory_mb(spec_with("smollm2", n).experts[0], Path(".")) for n in (512, 8192))
    assert big > small
    assert job_mem_per_cpu(spec_with("smollm2", 8192, threads=2), Path("."), 2) == f"{-(-big // 2)}M"
