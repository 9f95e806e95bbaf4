"""Retrieved passages in the conversation, without MPI or llama.cpp: how many fit an expert's budget, how they are
shown, and that the native engine sends them with every turn of every strategy and replays them on resume."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from swarm_hpc.core.dialogue import Turn
from swarm_hpc.core.native import NativeRun
from swarm_hpc.core.passages import HEADER, Given, Passage, fit_passages, passage_budget, render, with_passages
from swarm_hpc.core.recorder import Recorder, read_records, truncate_to_finished
from swarm_hpc.core.report import render_transcript
from swarm_hpc.core.spec import STRATEGIES, ExpertSpec, parse_spec
from swarm_hpc.core.strategies import get_strategy
from swarm_hpc.core.turns import Generation, TurnResult

A = Passage("#0", "docs/a.md", 0.91, "The Zorblax cluster has 48 nodes.")
B = Passage("#7", "docs/b.md", 0.72, "Each node draws\n  350 W at full load. " * 10)   # long
C = Passage("#3", "docs/c.md", 0.55, "Jobs are queued by Quibble.")
HW = Passage("hw#2", "hw/p.md", 0.8, "Power is 48 V.")
READS = {"alice": (A, C), "bob": (HW,), "carol": ()}


def chars(text: str) -> int:
    return len(text)


def test_passages_fit_best_first_and_a_long_one_is_cut_for_a_shorter_one():
    budget = chars("\n\n" + render([A, C])) + 5
    got = fit_passages([A, B, C], chars, budget)
    assert got.given == (A, C) and got.cut == (B,)
    block = render(got.given)
    assert block.startswith(HEADER) and "cite" in HEADER
    assert "[1] (docs/a.md) The Zorblax cluster has 48 nodes." in block and "[2] (docs/c.md) Jobs are" in block
    assert got.as_record() == {"passages": [{"n": 1, "id": "#0", "source": "docs/a.md", "score": 0.91},
                                            {"n": 2, "id": "#3", "source": "docs/c.md", "score": 0.55}],
                               "passages_cut": ["#7"]}


def test_no_room_gives_nothing_and_all_fitting_cuts_nothing():
    assert fit_passages([A, B], chars, 0) == Given((), (A, B))
    assert fit_passages([A, B, C], chars, 10**6) == Given((A, B, C), ())
    assert "passages_cut" not in fit_passages([A], chars, 10**6).as_record()
    assert "\n" not in render([B]).split("\n", 1)[1]   # a passage is one line: its number stays in front of it


def test_budget_is_a_share_of_n_ctx_and_never_the_conversations_room():
    assert passage_budget(2048, 128, 200) == 1024              # half of n_ctx
    assert passage_budget(512, 128, 300) == 84                  # what the essentials and the answer leave
    assert passage_budget(512, 256, 400) == 0


def test_passages_go_at_the_end_of_the_system_prompt():
    msgs = [{"role": "system", "content": "You are alice."}, {"role": "user", "content": "Task: x"}]
    out = with_passages(msgs, [A])
    assert out[0]["content"].startswith("You are alice.\n\n" + HEADER) and out[1:] == msgs[1:]
    assert msgs[0]["content"] == "You are alice."     # not changed in place
    assert with_passages(msgs, []) == msgs


# --- the native engine ------------------------------------------------------------------------------------------

class Library:
    """A Reader: alice and bob read different collections, carol none."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def retrieve(self, query: str, experts: Sequence[ExpertSpec]) -> dict[str, list[Passage]]:
        self.queries.append(query)
        return {e.name: list(READS[e.name]) for e in experts if READS[e.name]}


class Runner:
    """A StepRunner that answers every turn at once and keeps the turns it got; on a real expert
    (llama.py `read`) the reply's record says which passages it kept."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []

    def run_step(self, turns: list[Turn], timeout: float, on_result: Callable[[TurnResult], None],
                 model: str | None = None) -> dict[str, TurnResult]:
        self.turns += turns
        out = {}
        for t in turns:
            given = fit_passages(t.passages, chars, 10**6) if t.passages else None
            out[t.expert] = TurnResult(len(self.turns), t.expert, 0, "n0",
                                       Generation(f"{t.expert} says 48 [1].", "stop", completion_tokens=3,
                                                  passages=given))
        return out


def spec_for(strategy: str):
    experts = [{"name": n, "model": "m.gguf", "persona": f"You are {n}.", "n_ctx": 512, "threads": 1,
                "temperature": 0.0, "seed": 1, "max_tokens": 16} for n in ("alice", "bob", "carol")]
    return parse_spec({"task": "How many nodes has Zorblax?", "strategy": strategy, "rounds": 2, "experts": experts},
                      "test")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_turn_of_every_strategy_carries_its_experts_passages(strategy, tmp_path):
    spec = spec_for(strategy)
    runner, library = Runner(), Library()
    NativeRun(get_strategy(strategy)(spec), Recorder(tmp_path, spec, [], "n0"), runner, say=lambda s: None,
              reader=library).execute()
    assert library.queries == [spec.task]     # retrieved once, for the task
    assert runner.turns and all(t.passages == READS[t.expert] for t in runner.turns)
    recs = [r for r in read_records(tmp_path) if r.get("type") == "message"]
    task = recs[0]
    assert task["role"] == "task" and set(task["retrieved"]) == {"alice", "bob"}
    assert task["retrieved"]["alice"][0] == {"id": "#0", "source": "docs/a.md", "score": 0.91,
                                             "text": "The Zorblax cluster has 48 nodes."}
    replies = [r for r in recs if r["role"] == "expert"]
    assert all("passages" not in r for r in replies if r["expert"] == "carol")
    assert all([p["id"] for p in r["passages"]] == ["#0", "#3"] for r in replies if r["expert"] == "alice")
    shown = render_transcript(recs)
    assert "passages for alice: #0 docs/a.md 0.910, #3 docs/c.md 0.550" in shown
    assert "  read [1] docs/a.md 0.910 #0 | [2] docs/c.md 0.550 #3" in shown
    final = next(r for r in recs if r["role"] == "final")
    assert final["expert"] == "alice" or strategy != "debate"   # debate: the first expert's synthesis
    if final["expert"] == "alice":   # "alice says 48 [1].": the source of her [1]
        assert "== final answer" in shown and "  sources: [1] docs/a.md #0" in shown


def test_a_resumed_run_reads_the_passages_its_task_record_lists(tmp_path):
    spec = spec_for("debate")
    NativeRun(get_strategy("debate")(spec), Recorder(tmp_path, spec, [], "n0"), Runner(), say=lambda s: None,
              reader=Library()).execute()
    lines = (tmp_path / "transcript.jsonl").read_text().splitlines(keepends=True)
    first_end = next(i for i, line in enumerate(lines) if '"step_end"' in line)
    (tmp_path / "transcript.jsonl").write_text("".join(lines[:first_end + 1]))
    truncate_to_finished(tmp_path)

    class Refuses:
        def retrieve(self, query: str, experts: Sequence[ExpertSpec]) -> dict[str, list[Passage]]:
            raise AssertionError("a resumed run must not retrieve again")

    runner = Runner()
    NativeRun(get_strategy("debate")(spec), Recorder(tmp_path, spec, [], "n0"), runner, say=lambda s: None,
              reader=Refuses()).execute(resume=True)
    assert runner.turns and all(t.passages == READS[t.expert] for t in runner.turns)
