"""The run directory as the Recorder writes it, without any rank: typed records, one summary per step, resume."""

from __future__ import annotations

import json

from swarm_hpc.core.dialogue import Final, Step, Turn
from swarm_hpc.core.recorder import Recorder, StepEnd, read_records
from swarm_hpc.core.routing import task_route
from swarm_hpc.core.spec import parse_spec
from swarm_hpc.core.turns import Generation, TurnResult
from swarm_hpc.mpi.protocol import RankInfo

SPEC = parse_spec({"task": "What is 2+2?", "strategy": "debate", "rounds": 1,
                   "routes": [{"skill": "math", "keywords": ["2+2"]}],
                   "experts": [{"name": "a", "persona": "p", "skills": ["math"]},
                               {"name": "b", "persona": "p", "skills": ["math"]}]}, "t")
RANKS = [RankInfo(0, "n0", 10, "a", "/m/a.gguf", 0.1), RankInfo(1, "n1", 11, "b", "/m/b.gguf", 0.2)]


def test_a_step_is_written_once_with_typed_records_and_the_summary(tmp_path):
    writes = []
    rec = Recorder(tmp_path, SPEC, RANKS, "n0", route=task_route(SPEC), stale=lambda: 7)
    rec.write_summary = lambda status, final, _w=rec.write_summary: (writes.append(status), _w(status, final))[1]
    assert rec.open(resume=False) == []
    step = Step(1, "round 1", [Turn("a", []), Turn("b", [])])
    g = Generation("Four.", "stop", prompt_tokens=9, completion_tokens=2, gen_seconds=0.1, seconds=0.2, model="smollm2",
                   switch={"switched": True, "load_seconds": 0.5, "peak_models_mb": 100.0, "over_budget": False})
    records = [rec.task(step), rec.reply(step, "a", TurnResult(1, "a", 0, "n0", g), saw=[]),
               rec.reply(step, "b", None, saw=["r1.a"])]
    rec.write_step(records, StepEnd(1, 1, "round 1", wall_s=0.25, answered=1, turns=2, completion_tokens=2))
    rec.finish(2, Final("Four.", "a", "synthesis by a"))
    rec.close()
    assert writes == ["running", "complete"]  # one summary per step
    lines = read_records(tmp_path)
    task, a, b, end, final, final_end = lines
    assert task["role"] == "task" and task["route"]["skill"] == "math" and task["round"] == 0
    assert a["id"] == "r1.a" and a["status"] == "ok" and a["tok_s"] == 20.0 and a["model"] == "smollm2"
    assert a["switch"]["switched"] and a["route_reason"].startswith("route 1") and a["rank"] == 0
    assert b["status"] == "late" and b["rank"] == 1 and b["node"] == "n1" and "round_timeout" in b["error"]
    assert "switch" not in b and b["saw"] == ["r1.a"]
    assert end == {"type": "step_end", "step": 1, "round": 1, "label": "round 1", "wall_s": 0.25, "answered": 1,
                   "turns": 2, "completion_tokens": 2}
    assert final["role"] == "final" and final["method"] == "synthesis by a" and final_end["label"] == "final answer"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stale_replies"] == 7
    assert summary["switches"]["a"]["loads"] == 1 and summary["route"]["experts"] == ["a", "b"]
    assert (tmp_path / "final.md").read_text().count("Four.") >= 1


def test_resume_cuts_a_torn_step_and_leaves_out_the_final_answer(tmp_path):
    rec = Recorder(tmp_path, SPEC, RANKS, "n0")
    rec.open(resume=False)
    step = Step(1, "round 1", [])
    rec.write_step([rec.task(step)], StepEnd(1, 1, "round 1"))
    rec.close()
    with open(tmp_path / "transcript.jsonl", "a") as f:
        f.write('{"type": "message", "torn')
    again = Recorder(tmp_path, SPEC, RANKS, "n0")
    done = again.open(resume=True)
    again.close()
    assert [end["step"] for _, end in done] == [1]
    assert (tmp_path / "transcript.jsonl").read_text().endswith('"label": "round 1"}\n')
    assert len(read_records(tmp_path)) == 2


def test_a_loop_or_an_echo_is_recorded_as_such_not_as_ok(tmp_path):
    """The recorder judges each reply that would be ok (swarm_hpc/core/repetition.py): against the task always,
    and against `refs`, what the expert was shown and its own previous answer."""
    rec = Recorder(tmp_path, SPEC, RANKS, "n0")
    step = Step(2, "round 2", [])
    said = lambda text, reason="stop": TurnResult(1, "a", 0, "n0", Generation(text, reason, completion_tokens=5))
    peer = "Two and two make four, because addition of equal pairs doubles the number two."
    loop = rec.reply(step, "a", said("four " * 40, "length"), saw=[])
    echo_task = rec.reply(step, "a", said("What is 2+2? What is 2+2?"), saw=[])
    echo_peer = rec.reply(step, "a", said("Two and two make four, because addition of equal pairs doubles the number two!"),
                          saw=["r1.b"], refs={"r1.b": peer})
    assert loop.status == "repetitive" and loop.extra["repetition"]["kind"] == "repetitive"
    assert loop.as_json()["repetition"]["score"] > 0.95 and loop.as_json()["finish_reason"] == "length"
    assert echo_task.status == "echo" and echo_task.extra["repetition"]["of"] == "task"
    assert echo_peer.status == "echo" and echo_peer.as_json()["repetition"]["of"] == "r1.b"
    assert echo_peer.extra["repetition"]["reason"] == "echo: 100% of its words are copied from r1.b"
    # not flagged: a real answer that quotes the peer, a short answer said again, and what is not ok anyway
    quoting = rec.reply(step, "a", said("b says two and two make four; I add that 2+2 is 4 in every base above 4."),
                        saw=["r1.b"], refs={"r1.b": peer})
    again = rec.reply(step, "a", said("Four."), saw=[], refs={"r1.a": "Four."})
    failed = rec.reply(step, "a", TurnResult(1, "a", 0, "n0", Generation("four " * 40, "error", error="boom")), saw=[])
    forced = rec.reply(step, "a", said("four " * 40), saw=[], status="error", error="cancelled")
    assert [r.status for r in (quoting, again, failed, forced)] == ["ok", "ok", "error", "error"]
    assert "repetition" not in quoting.as_json() and "repetition" not in failed.as_json()
