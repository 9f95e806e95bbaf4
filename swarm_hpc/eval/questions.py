"""The questions an eval asks: a JSON Lines file, or a procedural set from reasoning-gym.

QUESTIONS.jsonl has one object a line: `question` (text) and `answer` (the exact answer: a number or a short
string), optionally `id` and `kind`. `rg:TASK[:N[:SEED]]` generates N (default 50) questions of a
reasoning-gym task with seed SEED (default 1); reasoning-gym's own checker then grades them too.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarm_hpc.errors import UserError, regular_file

RG_DEFAULT_N, RG_DEFAULT_SEED = 50, 1


class Question(BaseModel):
    """One question, its exact answer, and where it came from."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    kind: str = ""
    rg: dict[str, Any] | None = None   # reasoning-gym: {"task", "size", "seed", "index"} to re-create its checker


FIXES = {
    "question": 'add "question": "the text the swarm answers"',
    "answer": 'add "answer": the exact answer, a number or a short string',
    "id": '"id" is optional: a string or a number, unique in the file',
    "kind": '"kind" is optional: a string',
}


def parse_line(text: str, where: str, lineno: int) -> Question:
    """One JSONL line as a Question; anything wrong is one line naming the file, the line and the fix."""
    at = f"{where}:{lineno}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(at, f"is not valid JSON ({e.msg})", "one JSON object per line") from None
    if not isinstance(data, dict):
        raise UserError(at, "is not a JSON object", 'write {"question": "...", "answer": "..."}')
    unknown = sorted(set(data) - set(FIXES))
    if unknown:
        raise UserError(at, f"unknown field {unknown[0]!r}", "the fields are question, answer, id and kind")
    for key in ("question", "answer"):
        if key not in data:
            raise UserError(at, f"field {key!r} is missing", FIXES[key])
    answer, qid = data["answer"], data.get("id", lineno)
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise UserError(at, "field 'answer' must be a number or a string", FIXES["answer"])
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise UserError(at, "field 'id' must be a string or a number", FIXES["id"])
    try:
        return Question(id=str(qid), question=data["question"], answer=str(answer).strip(), kind=data.get("kind", ""))
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "question"
        raise UserError(at, f"field {key!r}: {err['msg'].lower()}", FIXES.get(key, "")) from None


def load_jsonl(path: Path) -> list[Question]:
    where = str(path)
    regular_file(path, where, "the questions file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(where, "is not UTF-8 text", "save the questions as UTF-8 JSON Lines") from None
    questions = [parse_line(t, where, i) for i, t in enumerate(lines, 1) if t.strip()]
    if not questions:
        raise UserError(where, "has no questions", 'one {"question": ..., "answer": ...} object a line')
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise UserError(where, f"two questions have the id {q.id!r}", "make every id unique")
        seen.add(q.id)
    return questions


def load_reasoning_gym(arg: str) -> list[Question]:
    """`rg:TASK[:N[:SEED]]`: N questions of a reasoning-gym task."""
    parts = arg.split(":")
    fix = "write rg:TASK[:N[:SEED]], e.g. rg:basic_arithmetic:50:1"
    if len(parts) < 2 or len(parts) > 4 or not parts[1]:
        raise UserError(arg, "is not a reasoning-gym question set", fix)
    try:
        size = int(parts[2]) if len(parts) > 2 else RG_DEFAULT_N
        seed = int(parts[3]) if len(parts) > 3 else RG_DEFAULT_SEED
    except ValueError:
        raise UserError(arg, "N and SEED must be whole numbers", fix) from None
    if size < 1:
        raise UserError(arg, "N must be at least 1", fix)
    task = parts[1]
    data = rg_dataset(task, size, seed, arg)
    return [Question(id=f"{task}-{i}", question=str(e["question"]), answer=str(e["answer"]).strip(), kind=task,
                     rg={"task": task, "size": size, "seed": seed, "index": i})
            for i, e in enumerate(data)]


def rg_dataset(task: str, size: int, seed: int, where: str) -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise UserError(where, "needs the reasoning-gym package",
                        "pip install 'swarm-hpc[eval]' (or bash install.sh --eval)") from None
    names = sorted(reasoning_gym.factory.DATASETS)
    if task not in names:
        close = difflib.get_close_matches(task, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see reasoning_gym.factory.DATASETS"
        raise UserError(where, f"reasoning-gym has no task {task!r}", hint)
    return reasoning_gym.create_dataset(task, size=size, seed=seed)


def load_questions(arg: str) -> list[Question]:
    return load_reasoning_gym(arg) if arg.startswith("rg:") else load_jsonl(Path(arg))
