"""Every example spec in jobs/examples/ runs for real on the bundled models (SmolLM2, Gemma 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, messages, run_dir_from

from swarm_hpc.core.spec import load_spec

EXAMPLES = sorted((ROOT / "jobs" / "examples").glob("*.toml"))


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_on_real_models(example: Path, tmp_path, cli):
    spec = load_spec(example)
    res = cli("run", example, "--out", tmp_path / "runs", timeout=900)
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    recs = messages(run_dir)
    replies = [r for r in recs if r["role"] == "expert"]
    # every expert replied in every round (a tiny base model may now and then say nothing: status "empty", or
    # only repeat the task, a peer or itself: "echo", "repetitive"), and what was said comes with real llama.cpp
    # counts
    said = ("ok", "echo", "repetitive")
    for rnd in range(1, spec.rounds + 1):
        replied = {r["expert"] for r in replies if r["round"] == rnd and r["status"] in (*said, "empty")}
        assert replied == set(spec.expert_names), (rnd, replied)
        assert any(r["status"] in said for r in replies if r["round"] == rnd)
    assert all(r["completion_tokens"] > 0 and r["tok_s"] > 0 and r["content"] for r in replies if r["status"] in said)
    final = [r for r in recs if r["role"] == "final"]
    assert len(final) == 1 and final[0]["content"].strip()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert "== final answer" in res.out
