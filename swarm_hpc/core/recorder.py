"""The run directory's records: transcript.jsonl (appended per step), summary.json and final.md (atomic).

transcript.jsonl holds one JSON object per line:
- {"type": "message", ...}: one message (the task, an expert's reply, a directed message, the final answer)
  with round, step, rank, node, expert, model, role, content, to, prompt/completion tokens, seconds, tok_s,
  status and `saw` (the ids of the messages that were in the expert's prompt).
- {"type": "step_end", "step": k, ...}: closes step k. A step's records and its step_end are written with
  one write() and fsync'd, so a crash loses at most the step in flight; on resume, anything after the last
  step_end (a torn line) is cut off.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TRANSCRIPT = "transcript.jsonl"
SUMMARY = "summary.json"
FINAL = "final.md"
SPEC_SNAPSHOT = "spec.json"


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temp file in the same folder, fsync'd, then renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class TranscriptWriter:
    """Appends whole steps to transcript.jsonl."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / TRANSCRIPT
        self._f = open(self.path, "a", encoding="utf-8")

    def write_step(self, records: Iterable[dict[str, Any]], step_end: dict[str, Any]) -> None:
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        lines.append(json.dumps({"type": "step_end", **step_end}, ensure_ascii=False))
        self._f.write("\n".join(lines) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete record of a transcript (a torn last line is skipped)."""
    path = Path(run_dir) / TRANSCRIPT
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def finished_steps(run_dir: Path) -> list[list[dict[str, Any]]]:
    """The records of each finished step, in order; records of an unfinished step are not included."""
    steps: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for rec in read_records(run_dir):
        if rec.get("type") == "step_end":
            steps.append(current)
            current = []
        else:
            current.append(rec)
    return steps


def truncate_to_finished(run_dir: Path) -> int:
    """Cut transcript.jsonl after its last step_end (before appending on resume); returns the steps kept."""
    path = Path(run_dir) / TRANSCRIPT
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = 0
    pos = 0
    steps = 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if rec.get("type") == "step_end" and line.endswith(b"\n"):
            keep = pos
            steps += 1
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return steps
