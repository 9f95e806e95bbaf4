"""Model switching and routing: an expert rank that serves several GGUF models within a memory budget, and
keyword routing of a task to the experts whose skills match. Real models (smollm2 + gemma3) for the slow
tests, measured from /proc; spec errors and routing rules are fast."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, messages, run_dir_from

from swarm_hpc.core.routing import route
from swarm_hpc.core.spec import parse_spec
from swarm_hpc.errors import UserError
from swarm_hpc.executor import LocalExecutor
from swarm_hpc.experts.memory import rss_mb

SCENARIOS = ROOT / "tests" / "mpi_scenarios.py"
NAMES = {"smollm2": "Smollm2", "gemma3": "Gemma 3"}  # general.name inside each GGUF starts so


def base_spec(**top) -> dict:
    return {"task": "What is 12 times 3?", "strategy": "debate", "rounds": 1,
            "experts": [{"name": "calc", "persona": "p", "skills": ["math"], "models": ["gemma3"]},
                        {"name": "poet", "persona": "p", "skills": ["poetry"]}], **top}


MATH = {"skill": "math", "keywords": ["times", "sum", "+"], "model": "gemma3"}
POETRY = {"skill": "poetry", "keywords": ["poem", "rhyme"]}


# --- spec and routing rules (fast) ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, field, words", [
    ({"routes": [{"skill": "code", "keywords": ["x"]}]}, "routes", "no expert has that skill"),
    ({"routes": [{"skill": "poetry", "keywords": ["x"], "model": "gemma3"}]}, "routes", "does not serve model 'gemma3'"),
    ({"routes": [{"skill": "math", "keywords": []}]}, "routes[0].keywords", "at least 1 item"),
    ({"routes": [{"skill": "math", "keywords": ["x"], "models": "y"}]}, "routes[0].models", "did you mean `model`"),
    ({"engine": "crew"}, "engine", "'native' or 'autogen'"),
    ({"autogen": {"stop": "x"}}, "autogen.stop", "stop_text"),
])
def test_bad_routing_and_engine_fields_are_one_line_errors(change, field, words):
    with pytest.raises(UserError) as e:
        parse_spec(base_spec(**change), "s.toml")
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"s.toml: {field}: ") and words in line and "(fix: " in line


@pytest.mark.parametrize("expert, field, words", [
    ({"skills": ["Math"]}, "experts[0].skills", "not a valid skill"),
    ({"models": ["gemma3", "gemma3"]}, "experts[0].models", "twice"),
    ({"memory_budget_mb": 3}, "experts[0].memory_budget_mb", "greater than or equal to 16"),
])
def test_bad_switching_fields_are_one_line_errors(expert, field, words):
    spec = base_spec()
    spec["experts"][0] = {**spec["experts"][0], **expert}
    with pytest.raises(UserError) as e:
        parse_spec(spec, "s.toml")
    assert str(e.value).startswith(f"s.toml: {field}: ") and words in str(e.value)


def test_autogen_engine_needs_identifier_names():
    spec = base_spec(engine="autogen")
    spec["experts"][1]["name"] = "old-poet"
    with pytest.raises(UserError, match=r"^s.toml: engine: .*'old-poet' is not one: use _ instead of -"):
        parse_spec(spec, "s.toml")


def test_routing_rules_pick_experts_and_model_and_say_why():
    spec = parse_spec(base_spec(routes=[POETRY, MATH]), "s.toml")
    r = route(spec, "What is 12 TIMES 3?")
    assert (r.experts, r.model, r.skill, r.rule, r.keywords) == (["calc"], "gemma3", "math", 2, ["times"])
    assert r.reason == "route 2 matched keyword 'times': skill 'math' -> calc with model gemma3"
    assert route(spec, "Write a poem about 2 + 2").experts == ["poet"]  # ties go to the first rule
    assert route(spec, "Write a poem, a rhyme, about 2 + 2").skill == "poetry"  # more keywords win
    assert route(spec, "sometimes") .experts == ["calc", "poet"]  # whole words only: no rule matched
    assert route(spec, "sometimes").reason.startswith("no route's keywords")
    assert route(spec, "1+1").skill == "math"  # a symbol matches anywhere


def test_a_budget_too_small_for_a_model_is_a_user_error(tmp_path):
    from swarm_hpc.experts.preflight import check_switching

    spec = base_spec()
    spec["experts"][0]["memory_budget_mb"] = 200
    with pytest.raises(UserError) as e:
        check_switching(parse_spec(spec, "s.toml"), tmp_path, "s.toml")
    line = str(e.value)
    assert line.startswith("s.toml: experts[0].memory_budget_mb: memory_budget_mb 200 cannot hold model 'gemma3'")
    assert "MB weights" in line and "raise memory_budget_mb to at least" in line


# --- switching on real models (slow) ---------------------------------------------------------------------------

def switch_spec(tmp_path: Path, budget: int) -> Path:
    path = tmp_path / f"switch-{budget}.toml"
    path.write_text(f'''task = "t"
strategy = "debate"
rounds = 1
rank0_hosts_expert = false

[[experts]]
name = "switcher"
model = "smollm2"
models = ["gemma3"]
memory_budget_mb = {budget}
persona = "You are a careful calculator."
temperature = 0.0
max_tokens = 24
n_ctx = 2048
''')
    return path


def run_switching(tmp_path: Path, budget: int, models: list[str]) -> tuple[dict, dict[str, float]]:
    """Run the `switching` scenario; sample the expert rank's RSS from /proc all along."""
    out, pids = tmp_path / "out.json", tmp_path / "pids.json"
    ex = LocalExecutor()
    env = {**ex.env(), "SCENARIO_PIDS": str(pids), "SCENARIO_MODELS": ",".join(models)}
    proc = subprocess.Popen([ex.mpiexec, "-n", "2", sys.executable, str(SCENARIOS), "switching",
                             str(switch_spec(tmp_path, budget)), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[float] = []

    def sample() -> None:
        pid = None
        while proc.poll() is None and pid is None:
            try:  # the file may exist before its text is written
                pid = json.loads(pids.read_text())[1]
            except (FileNotFoundError, ValueError):
                time.sleep(0.01)
        if pid is None:
            return
        while proc.poll() is None:
            rss = rss_mb(pid)
            if rss:
                samples.append(rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    _, err = proc.communicate(timeout=300)
    t.join()
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.read_text()), {"max_rss_mb": max(samples), "samples": len(samples)}


@pytest.mark.slow
def test_switching_within_a_tight_budget_unloads_and_keeps_to_it(tmp_path):
    budget = 420  # holds smollm2 (~165 MB) or gemma3 (~340 MB), never both
    order = ["smollm2", "gemma3", "smollm2", "gemma3"]
    out, mem = run_switching(tmp_path, budget, order)
    turns = out["turns"]
    for t in turns:  # the model asked for answered: the rank reports the name inside the GGUF that generated
        sw = t["info"]["switch"]
        assert t["info"]["model"] == t["asked"] == sw["model"] and sw["model_name"].startswith(NAMES[t["asked"]])
        assert t["content"] and t["completion_tokens"] > 0
        assert sw["loaded"] == [t["asked"]]  # the other model had to go
        assert not sw["over_budget"] and sw["peak_models_mb"] <= budget
    assert [t["info"]["switch"]["switched"] for t in turns] == [False, True, True, True]
    assert [t["info"]["switch"]["unloaded"] for t in turns] == [[], ["smollm2"], ["gemma3"], ["smollm2"]]
    baseline = turns[0]["info"]["switch"]["baseline_mb"]
    # measured from outside: the rank's resident memory never went above its baseline plus the budget
    assert mem["samples"] > 50 and mem["max_rss_mb"] - baseline <= budget
    g = [t["info"]["switch"] for t in turns if t["asked"] == "gemma3"]
    s = [t["info"]["switch"] for t in turns if t["asked"] == "smollm2"]
    print(f"\nswitching (budget {budget} MB): gemma3 load {g[0]['load_seconds']:.2f}s + unload "
          f"{g[0]['unload_seconds']:.3f}s, smollm2 reload {s[1]['load_seconds']:.2f}s; models took "
          f"{max(t['info']['switch']['peak_models_mb'] for t in turns):.0f} MB at most, rank RSS max "
          f"{mem['max_rss_mb']:.0f} MB over baseline {baseline:.0f} MB ({mem['samples']} samples)")
    assert 0 < s[1]["load_seconds"] < 10 and 0 < g[0]["load_seconds"] < 20


@pytest.mark.slow
def test_a_budget_that_holds_both_models_switches_back_for_free(tmp_path):
    out, mem = run_switching(tmp_path, 700, ["gemma3", "smollm2", "gemma3"])
    sw = [t["info"]["switch"] for t in out["turns"]]
    assert [s["switched"] for s in sw] == [True, False, False] and all(s["unloaded"] == [] for s in sw)
    assert sw[-1]["loaded"] == ["smollm2", "gemma3"] and sw[-1]["load_seconds"] == 0.0
    assert mem["max_rss_mb"] - sw[0]["baseline_mb"] <= 700
    assert out["turns"][0]["content"] == out["turns"][2]["content"]  # greedy: the same model, the same answer


@pytest.mark.slow
def test_a_routed_run_sends_the_task_to_the_skilled_experts_with_their_model(tmp_path, cli):
    spec = tmp_path / "routed.toml"
    spec.write_text('''task = "What is 12 times 3?"
strategy = "debate"
rounds = 1
round_timeout = 120

[defaults]
n_ctx = 1024
max_tokens = 24
temperature = 0.0

[[routes]]
skill = "poetry"
keywords = ["poem", "rhyme"]

[[routes]]
skill = "math"
keywords = ["times", "sum", "plus"]
model = "gemma3"

[[experts]]
name = "calc"
persona = "You are a careful calculator."
skills = ["math"]
models = ["gemma3"]
memory_budget_mb = 500

[[experts]]
name = "poet"
persona = "You are a poet."
skills = ["poetry"]

[[experts]]
name = "teacher"
model = "gemma3"
persona = "You are a math teacher."
skills = ["math", "teaching"]
''')
    res = cli("run", spec, "--out", tmp_path / "runs", timeout=600)
    assert res.rc == 0, res.err
    assert "routing: route 2 matched keyword 'times': skill 'math' -> calc, teacher with model gemma3" in res.out
    recs = messages(run_dir_from(res.out))
    task = [r for r in recs if r["role"] == "task"][0]
    assert task["route"]["experts"] == ["calc", "teacher"] and task["route"]["keywords"] == ["times"]
    replies = [r for r in recs if r["role"] == "expert"]
    assert {r["expert"] for r in replies} == {"calc", "teacher"}  # the poet was not asked
    assert all(r["model"] == "gemma3" and "skill 'math'" in r["route_reason"] for r in replies)
    calc = [r for r in replies if r["expert"] == "calc"][0]
    # calc loaded the routed model first (no switch needed), and its rank says which weights answered
    assert calc["switch"]["model_name"].startswith("Gemma 3") and calc["switch"]["switched"] is False
    assert calc["switch"]["loaded"] == ["gemma3"]
