"""An eval's folder and its plan: which questions, which arms, where each answer's run directory is.

OUT/
  spec.json            the spec snapshot (the experts every arm uses), as in a run directory
  eval.json            the plan: the questions (with their answers) and the arms, fixed when the eval starts
  runs/<question>/<arm>/   one ordinary run directory per question and arm (transcript.jsonl, final.md, ...)
  results.json, results.md, accuracy.png   written from the run directories when the eval ends

A killed eval run again on the same folder skips every finished question-arm run directory and resumes the
one it was in; the plan must then be the same (a changed one is one line, not a mixed result).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.core.recorder import SPEC_SNAPSHOT
from swarm_hpc.core.rundir import create_run_dir, load_snapshot
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.errors import UserError, regular_file
from swarm_hpc.eval.arms import Arm, parse_arms
from swarm_hpc.eval.questions import Question, load_questions

PLAN = "eval.json"
RUNS = "runs"


@dataclass(frozen=True)
class Plan:
    questions_from: str
    questions: list[Question]
    arms: list[Arm]

    def as_json(self) -> dict:
        return {"questions_from": self.questions_from, "arms": [asdict(a) for a in self.arms],
                "questions": [q.model_dump() for q in self.questions]}

    def run_dir(self, out: Path, index: int, arm: Arm) -> Path:
        q = self.questions[index]
        return Path(out) / RUNS / f"{index:04d}-{re.sub(r'[^A-Za-z0-9._-]', '-', q.id)[:40]}" / arm.slug

    def shard(self, k: int, n: int) -> list[int]:
        """The question indices of shard k of n (every n-th question, so shards take about as long)."""
        return list(range(k, len(self.questions), n))


def load_plan(out: Path) -> Plan:
    path = regular_file(Path(out) / PLAN, str(out), "the eval plan")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Plan(data["questions_from"], [Question(**q) for q in data["questions"]],
                    [Arm(**a) for a in data["arms"]])
    except (ValueError, KeyError, TypeError):
        raise UserError(str(path), "is not an eval plan written by swarm-hpc",
                        "start the eval in a new folder (--out)") from None


def save_plan(out: Path, plan: Plan) -> None:
    """Write the plan, or check that a resumed eval's plan is the same."""
    path = Path(out) / PLAN
    if path.exists():
        old = load_plan(out)
        if old.as_json() != plan.as_json():
            raise UserError(str(path), "this folder holds an eval of other questions or arms",
                            "give a new --out folder, or the same --questions and --arms as before")
        return
    atomic_write_json(path, plan.as_json())


def prepare(out: Path, spec: SwarmSpec, spec_path: Path, questions_from: str, arms: str, limit: int | None) -> Plan:
    """Check everything, then make (or reopen) the eval folder with its spec snapshot and plan."""
    questions = load_questions(questions_from)[:limit]
    plan = Plan(questions_from, questions, parse_arms(arms, spec))
    out = Path(out)
    if (out / SPEC_SNAPSHOT).exists():
        old, _ = load_snapshot(out)
        if old != spec:
            raise UserError(str(spec_path), f"differs from the spec the eval in {out} started with",
                            "give a new --out folder, or the same spec as before")
    elif out.exists() and any(out.iterdir()):
        raise UserError(str(out), "is a folder that holds no eval", "give a new or empty --out folder")
    else:
        if out.exists():
            out.rmdir()
        create_run_dir(out, spec, spec_path)
    save_plan(out, plan)
    return plan
