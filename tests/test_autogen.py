"""AutoGen AgentChat on real MPI ranks (mpiexec + mpi4py) with tiny real GGUF models: the MPIExpertClient,
the ParallelConversation team, and `engine = "autogen"` runs through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, crash_after_first_round, expert, messages, run_dir_from
from tinygguf import write_tiny_gguf

pytest.importorskip("autogen_agentchat")

from autogen_core.models import AssistantMessage, SystemMessage, UserMessage

from swarm_hpc.autogen.prompts import to_chat
from swarm_hpc.executor import LocalExecutor

SCENARIOS = ROOT / "tests" / "mpi_scenarios.py"


def run_scenario(name: str, spec: Path, np: int, tmp_path: Path, env: dict | None = None, timeout: float = 120) -> dict:
    out = tmp_path / f"{name}.json"
    ex = LocalExecutor()
    cmd = [ex.mpiexec, "-n", str(np), sys.executable, str(SCENARIOS), name, str(spec), str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env={**ex.env(), **(env or {})}, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("agmodels")
    return {"paris": write_tiny_gguf(d / "paris.gguf", "Paris is the capital."),
            "done": write_tiny_gguf(d / "done.gguf", "DONE here."),
            "rome": write_tiny_gguf(d / "rome.gguf", "Rome is the answer."),
            "loop": write_tiny_gguf(d / "loop.gguf", "la li lo", loop=True)}


@pytest.fixture(scope="module")
def four(models, tmp_path_factory) -> Path:
    """alice (rank 0's own expert, in a thread), bob, carol and dave (never stops by itself) on ranks 1-3."""
    d = tmp_path_factory.mktemp("agspec")
    lines = ['task = "What is the capital of France?"', 'strategy = "debate"', "rounds = 2", "round_timeout = 20"]
    for name, model, extra in (("alice", models["paris"], ""), ("bob", models["done"], ""),
                               ("carol", models["rome"], ""), ("dave", models["loop"], "max_tokens = 4000\nn_ctx = 4608")):
        lines += ["[[experts]]", f'name = "{name}"', f'model = "{model}"', f'persona = "You are {name}."',
                  "temperature = 0.0", extra or "max_tokens = 24\nn_ctx = 512"]
    path = d / "four.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompt_carries_speaker_names_and_alternates():
    chat = to_chat([SystemMessage(content="You are alice."), UserMessage(content="Task: X", source="user"),
                    AssistantMessage(content="Mine.", source="alice"), UserMessage(content="Yes.", source="bob"),
                    UserMessage(content="", source="carol"), AssistantMessage(content="Hi.", source="dave")],
                   "alice", instruction="Answer briefly.")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user"]
    assert chat.messages[1]["content"] == "Task: X"
    assert chat.messages[3]["content"] == "[bob] Yes.\n\n[carol] (no answer)\n\n[dave] Hi.\n\nAnswer briefly."
    assert chat.sources == ["user", "bob", "carol", "dave"]


def test_client_create_usage_tokens_and_streaming(four, tmp_path):
    out = run_scenario("client_basics", four, 4, tmp_path)
    c = out["create"]
    assert c["content"] == "Paris is the capital." and c["finish_reason"] == "stop"
    # llama.cpp's own counts; rank 0 counts the same prompt with the model's tokenizer and template
    assert c["usage"]["completion_tokens"] == 4 and c["usage"]["prompt_tokens"] == c["counted"] > 0
    assert c["remaining"] == c["n_ctx"] - c["counted"]
    assert c["total"] == {"prompt_tokens": 2 * c["counted"], "completion_tokens": 8} == c["actual"]
    assert c["sent"][-1] == {"role": "user", "content": "What is the capital of France?\n\n[bob] Rome, surely."}
    assert c["sources"] == ["user", "bob"] and c["rank"] == 0
    s = out["stream"]
    # real streaming: the first chunk comes long before the reply (the model generates until the 1.5 s deadline)
    assert s["chunks"] > 10 and s["first_s"] < 0.8 and s["result_s"] > 1.4 and s["last_chunk_s"] > 1.0
    assert s["joined"] == s["content"] and s["content"].startswith("la li lo")
    assert s["finish_reason"] == "length" and s["completion_tokens"] > 10
    assert "not 'gemma3'" in out["unknown_model"] and "expert carol (rank 2)" in out["unknown_model"]


def test_parallel_conversation_rounds_termination_and_what_agents_saw(four, tmp_path):
    out = run_scenario("team_rounds", four, 4, tmp_path)
    t = out["terminated"]
    # bob says DONE in round 1: the round still completes (termination is checked over the whole round)
    assert t["messages"][0] == ["user", "What is the capital of France?"]
    assert sorted(t["messages"][1:]) == [["alice", "Paris is the capital."], ["bob", "DONE here."],
                                         ["carol", "Rome is the answer."]]
    assert "DONE" in t["stop_reason"]
    assert out["first_team_calls"] == {"alice": 1, "bob": 1, "carol": 1}
    r = out["two_rounds"]
    assert len(r["messages"]) == 1 + 6 and "Maximum number of turns 2" in r["stop_reason"]
    assert [m[0] for m in r["messages"][1:4]].count("alice") == 1  # each agent once per round
    sent = r["alice_round2_sent"]
    # round 2: alice sees her own answer as hers, and both peers' round-1 answers, by name
    assert sent[2] == {"role": "assistant", "content": "Paris is the capital."}
    assert "[bob] DONE here." in sent[3]["content"] and "[carol] Rome is the answer." in sent[3]["content"]
    assert "[alice]" not in sent[3]["content"] and r["alice_calls"] == 2 and r["bob_chunks"] >= 2


def test_cancellation_stops_a_round_and_the_expert(four, tmp_path):
    out = run_scenario("cancel_round", four, 4, tmp_path)
    assert out["outcome"] == "cancelled" and out["cancel_s"] < 2.5
    # dave's rank dropped the 30 s turn at once: a new 1 s request is answered in about a second
    assert out["next_request_s"] < 2.5 and out["next_finish_reason"] == "length"
    assert out["stale_replies"] >= 1  # the cancelled turn's reply came back and was dropped


@pytest.fixture(scope="module")
def stalled(models, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("agstall")
    # one rank per expert: each is stalled or stopped on its own rank (tests/expert_faults.py)
    lines = ['task = "t"', 'strategy = "debate"', "rounds = 1", "round_timeout = 20", "batch_experts = false"]
    for name in ("s1", "s2", "s3", "hung"):
        lines += ["[[experts]]", f'name = "{name}"', f'model = "{models["paris"]}"', f'persona = "You are {name}."',
                  "temperature = 0.0", "max_tokens = 24", "n_ctx = 512"]
    path = d / "stalled.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


STALL = 1.5


def test_experts_generate_at_the_same_time_and_a_hung_one_times_out(stalled, tmp_path):
    # `hung` is really hung: its rank stops itself (SIGSTOP) when its first turn comes, and never answers again
    t0 = time.monotonic()
    out = run_scenario("concurrency", stalled, 4, tmp_path,
                       env={"SWARM_HPC_TEST_STALL": f"s1:{STALL},s2:{STALL},s3:{STALL}", "SWARM_HPC_TEST_STOP": "hung"})
    took = time.monotonic() - t0
    p = out["parallel"]
    assert p["answers"] == 3 and sorted(p["ranks"]) == [0, 1, 2]
    assert all(s >= STALL for s in p["call_s"])
    # three experts that each take 1.5 s finish a round in about 1.5 s, not 4.5 s
    ratio = p["wall_s"] / max(p["call_s"])
    print(f"\nconcurrency: round of 3 took {p['wall_s']:.2f} s, slowest expert {max(p['call_s']):.2f} s, "
          f"sum {sum(p['call_s']):.2f} s (ratio {ratio:.2f})")
    assert p["wall_s"] < 1.6 * STALL and ratio < 1.3
    h = out["hung_client"]
    assert h["outcome"] == "timeout" and "hung" in h["error"] and 2.3 < h["s"] < 4.0  # 1.5 s + 1 s grace
    t = out["hung_team"]
    assert t["hung_status"] == "late" and t["s"] < 4.0
    assert ["s1", "Paris is the capital."] in t["messages"] and ["hung", ""] in t["messages"]
    # closing the session does not wait on the stopped rank (it did for 30 s): 2 s, then the job ends at exit
    assert out["unresponsive"] == [3] and out["close"]["delivered"] is False and out["close"]["s"] < 10, out["close"]
    assert took < 60, took


# --- engine = "autogen" through the CLI -------------------------------------------------------------------------

def by_round(recs: list[dict]) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for r in recs:
        if r["role"] == "expert":
            out.setdefault(r["round"], {})[r["expert"]] = r
    return out


def test_autogen_engine_run_writes_the_native_run_directory(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"]), expert("carol", tiny["paris"])],
                      rounds=2, synthesizer="bob", engine="autogen", rank0_hosts_expert=False)
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    assert "engine autogen (ParallelConversation team)" in res.out and "== final answer" in res.out
    run_dir = run_dir_from(res.out)
    recs = messages(run_dir)
    rounds = by_round(recs)
    assert set(rounds[1]) == set(rounds[2]) == {"alice", "bob", "carol"}
    # alice and carol share a model: one rank, one batch (each streams and answers on its own)
    assert {n: r["rank"] for n, r in rounds[1].items()} == {"alice": 1, "carol": 1, "bob": 2}
    assert all(r["status"] == "ok" and r["engine"] == "autogen" and r["stream_chunks"] >= 1 for r in rounds[1].values())
    assert rounds[1]["bob"]["content"] == "Rome is the answer." and rounds[1]["bob"]["completion_tokens"] == 4
    assert set(rounds[2]["alice"]["saw"]) == {"r1.bob", "r1.carol"} and rounds[1]["alice"]["saw"] == []
    assert rounds[2]["alice"]["speakers"] == ["bob", "carol", "user"]
    final = [r for r in recs if r["role"] == "final"]
    assert final[0]["content"] == "Rome is the answer." and final[0]["expert"] == "bob"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["engine"] == "autogen" and summary["round"] == 2
    assert "Rome is the answer." in (run_dir / "final.md").read_text()
    shown = cli("show", run_dir)
    assert shown.rc == 0 and "autogen ParallelConversation run: complete" in shown.out


def test_autogen_engine_stop_text_ends_after_the_round(write_spec, tiny, tmp_path, cli):
    done = write_tiny_gguf(tmp_path / "done.gguf", "DONE here.")
    spec = tmp_path / "stop.toml"
    spec.write_text(write_spec([expert("alice", tiny["paris"]), expert("bob", done)], rounds=4,
                               engine="autogen").read_text() + '\n[autogen]\nstop_text = "DONE"\nstream = false\n')
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    rounds = by_round(messages(run_dir))
    assert set(rounds) == {1, 5}  # round 1, then the synthesis (rounds + 1)
    ends = [json.loads(l) for l in (run_dir / "transcript.jsonl").read_text().splitlines()]
    assert [e["stopped"] for e in ends if e["type"] == "step_end" and e["label"] == "round 1"] == [True]
    assert rounds[1]["alice"]["stream_chunks"] == 0


def test_autogen_engine_marks_an_echo_of_the_round_before(write_spec, tiny, tmp_path, cli):
    """bob's model says the same fourteen words every time: an answer in round 1, an echo of it in round 2; his
    synthesis may repeat an answer (it is judged against the task only)."""
    words = "Rome was not built in one day, so give every board its own model."
    said = write_tiny_gguf(tmp_path / "said.gguf", words)
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", said)], rounds=2, engine="autogen",
                      synthesizer="bob")
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    rounds = by_round(messages(run_dir_from(res.out)))
    assert rounds[1]["bob"]["status"] == "ok" and rounds[1]["alice"]["status"] == "ok"
    assert rounds[2]["bob"]["status"] == "echo" and rounds[2]["bob"]["repetition"]["of"] == "r1.bob"
    assert rounds[2]["alice"]["status"] == "ok"  # "Paris is the capital." again: too short to be an echo
    assert rounds[3]["bob"]["status"] == "ok" and rounds[3]["bob"]["content"] == words


def test_autogen_engine_marks_a_hung_expert_late_and_goes_on(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=1, round_timeout=1.5,
                      engine="autogen", synthesizer="alice")
    t0 = time.monotonic()
    res = cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_TEST_STALL": "bob:30"}, timeout=120)
    assert res.rc == 0, res.err
    assert time.monotonic() - t0 < 30  # the stalled rank was told to drop its turn, and stopped when asked
    rounds = by_round(messages(run_dir_from(res.out)))
    assert rounds[1]["bob"]["status"] == "late" and "round_timeout" in rounds[1]["bob"]["error"]
    assert rounds[1]["alice"]["status"] == "ok" and "LATE" in res.out
    assert rounds[2]["alice"]["saw"] == ["r1.alice"]  # the synthesis saw the one answer that came


def test_autogen_engine_resumes_after_a_crash(write_spec, tiny, tmp_path):
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"])], rounds=3, engine="autogen")
    run_dir = crash_after_first_round(spec, tmp_path / "runs", {"SWARM_HPC_TEST_STALL": "bob:3"})
    before = by_round(messages(run_dir))
    assert set(before) == {1}
    res = subprocess.run([sys.executable, "-m", "swarm_hpc", "run", "--resume", str(run_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "round 1: replayed from the transcript" in res.stdout
    rounds = by_round(messages(run_dir))
    assert set(rounds) == {1, 2, 3, 4}
    assert rounds[1]["alice"]["time"] == before[1]["alice"]["time"]
    # the replayed round is in the agents' model contexts: round 2 shows round 1's answers
    assert "r1.bob" in rounds[2]["alice"]["saw"] and rounds[2]["alice"]["prompt_tokens"] > rounds[1]["alice"]["prompt_tokens"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_autogen_engine_as_a_slurm_job(local_slurm, write_spec, tiny, tmp_path):
    """The same entry point under srun: rank 0 of the job runs the AutoGen team, the template is unchanged."""
    from conftest import run_cli

    env = {**local_slurm.env, "SWARM_HPC_STATE": str(tmp_path / "state")}
    spec = write_spec([expert("alice", tiny["paris"]), expert("bob", tiny["rome"]), expert("carol", tiny["paris"])],
                      rounds=2, engine="autogen", synthesizer="alice")
    res = run_cli("submit", spec, "--out", tmp_path / "runs", "--wait", "--json", "--timeout", "180", env=env,
                  timeout=240)
    assert res.rc == 0, (res.out, res.err)
    info = json.loads(res.out)
    assert info["state"] == "COMPLETED"
    run_dir = Path(info["run_dir"])
    rounds = by_round(messages(run_dir))
    assert set(rounds[2]) == {"alice", "bob", "carol"} and {r["node"] for r in rounds[1].values()} == {"n1"}
    assert all(r["engine"] == "autogen" for r in rounds[1].values())
    assert json.loads((run_dir / "summary.json").read_text())["engine"] == "autogen"
