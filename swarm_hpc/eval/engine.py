"""The eval on rank 0: every question of its shard, every arm, each as an ordinary run with its own run
directory (swarm_hpc/eval/plan.py), over the one Exchange the ranks share. The experts load once for the
whole eval. A finished question-arm run is skipped, an unfinished one resumed, so a killed eval loses at most
the step in flight."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.core import report
from swarm_hpc.core.native import NativeRun, StepRunner
from swarm_hpc.core.passages import Reader
from swarm_hpc.core.recorder import SPEC_SNAPSHOT, TRANSCRIPT, Recorder, is_complete
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.eval.plan import Plan
from swarm_hpc.eval.results import outcome
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor


def write_snapshot(run_dir: Path, spec: SwarmSpec, origin: dict[str, Any]) -> None:
    """The question-arm run's own spec.json (as `swarm-hpc run` writes it), so each folder reads on its own."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / SPEC_SNAPSHOT).exists():
        atomic_write_json(run_dir / SPEC_SNAPSHOT, {**origin, "spec": spec.model_dump(mode="json")})


class EvalRun:
    def __init__(self, out: Path, plan: Plan, spec: SwarmSpec, runner: StepRunner,
                 recorder: Callable[[Path, SwarmSpec], Recorder], say: Callable[[str], None] = report.say,
                 reader: Reader | None = None, recall: RetrieverFor = LexicalRetriever):
        self.out = Path(out)
        self.plan = plan
        self.spec = spec
        self.runner = runner
        self.recorder = recorder   # makes the Recorder of one question-arm run directory
        self.say = say
        self.reader = reader       # the spec's [knowledge]: the experts read passages for each question
        self.recall = recall       # ranks the memory store's facts for each question (by meaning, from rank.py)

    def execute(self, shard: tuple[int, int] = (0, 1)) -> None:
        origin = json.loads((self.out / SPEC_SNAPSHOT).read_text(encoding="utf-8"))
        origin.pop("spec", None)
        indices = self.plan.shard(*shard)
        right = {a.name: 0 for a in self.plan.arms}
        for n, i in enumerate(indices, 1):
            q = self.plan.questions[i]
            t0, marks = time.perf_counter(), []
            for arm in self.plan.arms:
                run_dir = self.plan.run_dir(self.out, i, arm)
                if not is_complete(run_dir):
                    spec = arm.spec(self.spec, q.question)
                    write_snapshot(run_dir, spec, origin)
                    resume = (run_dir / TRANSCRIPT).exists()
                    NativeRun(arm.strategy(spec), self.recorder(run_dir, spec), self.runner,
                              say=lambda line: None, reader=self.reader, recall=self.recall).execute(resume=resume)
                ok = outcome(run_dir, q, arm.own_reply, checked=arm.checked).correct
                right[arm.name] += ok
                marks.append(f"{arm.name} {'✓' if ok else '✗'}")
            so_far = ", ".join(f"{a} {k}/{n}" for a, k in right.items())
            self.say(f"question {n}/{len(indices)} [{q.id}] {time.perf_counter() - t0:.1f}s: "
                     f"{' '.join(marks)} | correct so far: {so_far}")
