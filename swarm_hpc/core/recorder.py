"""The run directory's records, written by one `Recorder` per run (both engines use it).

One writer per run: the Recorder holds the run directory's writer lock (an flock on .writer.lock, which the
kernel releases when the process ends, however it ends) from open() to close(); a second process that would
write the same run stops with one line instead.

transcript.jsonl holds one JSON object per line: `MessageRecord`s (the task, each reply, each private note,
the final answer) and, closing each step, a `StepEnd`. A step's records and its StepEnd are written with one
write() and fsync'd, so a crash loses at most the step in flight; on resume, anything after the last StepEnd
(a torn line) is cut off. summary.json (progress and totals) is rewritten atomically once per step, final.md
once at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from swarm_hpc.atomic import atomic_write, atomic_write_json
from swarm_hpc.core import repetition, report
from swarm_hpc.core.dialogue import LATE, OK, Final, Step, generation_status
from swarm_hpc.core.routing import Route
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.turns import TurnResult
from swarm_hpc.errors import UserError
from swarm_hpc.procs import ancestors, run_processes

TRANSCRIPT = "transcript.jsonl"
SUMMARY = "summary.json"
FINAL = "final.md"
SPEC_SNAPSHOT = "spec.json"
WRITER_LOCK = ".writer.lock"
LOCK_WAIT = 5.0   # seconds a second writer waits for the first to let go before it gives up


@dataclass
class MessageRecord:
    """One message: a line of transcript.jsonl with "type": "message"."""

    id: str             # r<round>.<expert>; r<round>.<expert>><peer> for a private note; "final"
    round: int          # 0 for the task, rounds + 1 for the final answer
    step_label: str
    rank: int           # the rank that hosted the expert (0 for the coordinator)
    node: str
    expert: str
    model: str          # the model that answered (as the spec names it)
    role: str           # task | user | expert | direct | final
    content: str
    to: str | None = None           # the addressee of a private note
    status: str = OK                # ok | empty | late | error | echo | repetitive (core/repetition.py)
    saw: list[str] = field(default_factory=list)   # ids of the messages that were in the expert's prompt
    time: float = 0.0               # Unix time it was recorded
    # present where they apply: error; a reply's Generation.metrics() (prompt_tokens, completion_tokens, tok_s,
    # seconds, finish_reason, ...); `switch` (what serving the model cost, swarm_hpc/experts/switching.py);
    # `memory` (what the expert's memory did that turn: context resizes, a fold; swarm_hpc/experts/llama.py);
    # `retrieved` (task: each expert's retrieved passages, [knowledge]) and `passages` / `passages_cut` (replies:
    # the passages in the prompt, numbered as the expert saw them, and those that did not fit; core/passages.py);
    # `route` (task) / `route_reason` (replies) when the spec routes; `method` (final); the AutoGen engine's
    # engine, stream_chunks, call_seconds, speakers; `repetition` (an echo or repetitive reply: kind, score,
    # reason, and `of`, the id of what an echo copies: repetition.Verdict.as_record())
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", **asdict(self)}
        out.pop("extra")
        out.update({k: v for k, v in self.extra.items() if v is not None})
        return out


@dataclass
class StepEnd:
    """Closes a step: a line of transcript.jsonl with "type": "step_end"."""

    step: int
    round: int
    label: str
    wall_s: float | None = None             # the step's wall time on rank 0
    slowest_expert_s: float | None = None
    answered: int | None = None             # replies that came in time, of `turns`
    turns: int | None = None
    completion_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # the AutoGen engine: engine, parallelism, stopped, ...

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return {"type": "step_end", **out, **self.extra}


# --- files --------------------------------------------------------------------------------------------------------

def lock_run(run_dir: Path, wait: float = LOCK_WAIT) -> IO[str]:
    """Take the run's writer lock, held until the returned file is closed (or the process ends); a UserError when
    another process still holds it after `wait` seconds (the ranks of a run that was just killed take a moment
    to end)."""
    f = open(Path(run_dir) / WRITER_LOCK, "a")  # noqa: SIM115  (held open: the lock lives as long as the file)
    give_up = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= give_up:
                break
            time.sleep(0.1)
    f.close()
    others = sorted(set(run_processes(run_dir)) - ancestors())
    who = f" (pid {', '.join(map(str, others[:4]))} on this node)" if others else ""
    raise UserError(str(run_dir), f"another swarm-hpc process is writing this run{who}",
                    "let it finish (or stop it: `swarm-hpc cancel JOBID`, or end its mpiexec), then resume")


STOPPED_STATUSES = ("cancelled", "stopped", "requeued")   # summary statuses of a run that ended before its end


def mark_status(run_dir: Path, status: str) -> None:
    """Say in summary.json why a run ended before its final answer (one of STOPPED_STATUSES): `cancelled`
    (SIGTERM: scancel), `stopped` (asked to stop; `--resume` continues it), `requeued` (stopped before the time
    limit; the job continues it when SLURM starts it again). Only the summary's status changes, under the writer
    lock; a complete run stays complete, and a run that another process writes is left alone."""
    try:
        lock = lock_run(run_dir, wait=1.0)
    except (UserError, OSError):
        return
    try:
        path = Path(run_dir) / SUMMARY
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
        if not isinstance(summary, dict) or summary.get("status") == "complete":
            return
        atomic_write_json(path, {**summary, "status": status, "run_dir": summary.get("run_dir", str(run_dir)),
                                 "updated": time.time()})
    finally:
        lock.close()


def is_complete(run_dir: Path) -> bool:
    """Whether the run's transcript holds its final answer."""
    return any(r.get("role") == "final" for r in read_records(run_dir))


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


def finished_steps(run_dir: Path) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """(message records, step_end) of each finished step, in order; an unfinished step's records are left out."""
    steps: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for rec in read_records(run_dir):
        if rec.get("type") == "step_end":
            steps.append((current, rec))
            current = []
        else:
            current.append(rec)
    return steps


def truncate_to_finished(run_dir: Path) -> None:
    """Cut transcript.jsonl after its last step_end (before appending on resume). Only a torn last line may be
    cut: a damaged line before it (a crash cannot make one) is a UserError, and nothing is cut."""
    path = Path(run_dir) / TRANSCRIPT
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    keep = pos = 0
    for number, line in enumerate(lines, 1):
        pos += len(line)
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a record")
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number < len(lines):
                raise UserError(str(path), f"line {number} of {len(lines)} is damaged (not a JSON record), so "
                                "the steps after it cannot be trusted", f"restore the file from a copy, or keep only "
                                f"what comes before line {number} (`head -n {number - 1}`) and resume") from None
            break
        if rec.get("type") == "step_end" and line.endswith(b"\n"):
            keep = pos
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())


# --- the recorder -------------------------------------------------------------------------------------------------

class Recorder:
    """Writes one run's directory: records built from the engine's results, the transcript, the summary."""

    def __init__(self, run_dir: Path, spec: SwarmSpec, ranks: list[Any], node: str, route: Route | None = None,
                 stale: Callable[[], int] = lambda: 0, labels: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.spec = spec                  # the spec of the experts that take part (routing may narrow it)
        self.ranks = ranks                # every rank's RankInfo
        self.where = {name: i for i in ranks for name in (getattr(i, "batch", ()) or [i.expert]) if name}
        self.node = node                  # rank 0's node
        self.route = route                # the task's route, when the spec has [[routes]]
        self.stale = stale                # how many replies came too late, so far
        self.labels = dict(labels or {})  # engine-specific summary fields
        self.steps: list[dict[str, Any]] = []
        self.switches: list[dict[str, Any]] = []
        self.started = time.time()
        self._transcript: IO[str] | None = None
        self._lock: IO[str] | None = None

    # --- resuming -----------------------------------------------------------------------------------------------

    def open(self, resume: bool) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """Take the writer lock and start appending; on resume, first cut a torn step and return the finished ones
        (but a final answer)."""
        self._lock = lock_run(self.run_dir)
        done = []
        if resume:
            truncate_to_finished(self.run_dir)
            done = [(recs, end) for recs, end in finished_steps(self.run_dir)
                    if not any(r.get("role") == "final" for r in recs)]
        self._transcript = open(self.run_dir / TRANSCRIPT, "a", encoding="utf-8")  # noqa: SIM115  (for the whole run)
        return done

    def close(self) -> None:
        for f in (self._transcript, self._lock):
            if f is not None:
                f.close()

    # --- records ------------------------------------------------------------------------------------------------

    def model_of(self, expert: str) -> str:
        return self.spec.expert(expert).model if expert in self.spec.expert_names else ""

    def message(self, step: Step, expert: str, role: str, content: str, *, round_: int | None = None,
                id_: str | None = None, rank: int | None = None, node: str | None = None, **fields: Any) -> MessageRecord:
        """A record of anything said; `fields` are MessageRecord fields or extras."""
        info = self.where.get(expert)
        known = {k: fields.pop(k) for k in ("to", "status", "saw", "model") if k in fields}
        return MessageRecord(
            id=id_ or f"r{step.round}.{expert}.{role}", round=step.round if round_ is None else round_,
            step_label=step.label, rank=rank if rank is not None else (info.rank if info else 0),
            node=node or (info.node if info else self.node), expert=expert,
            model=known.pop("model", None) or self.model_of(expert), role=role, content=content,
            time=round(time.time(), 3), extra=fields, **known)

    def task(self, step: Step) -> MessageRecord:
        rec = self.message(step, "coordinator", "task", self.spec.task, round_=0)
        if self.route is not None:
            rec.extra["route"] = self.route.as_record()
        return rec

    def reply(self, step: Step, expert: str, res: TurnResult | None, saw: list[str], status: str | None = None,
              error: str | None = None, refs: Mapping[str, str] | None = None, **extra: Any) -> MessageRecord:
        """An expert's reply (or its absence: late); `status` overrides the one its generation implies. A reply
        that would be ok is judged first (repetition.judge): a loop is `repetitive`, one that only repeats the
        task or `refs` ({id: text}: what it was shown, its own previous answer) is an `echo`."""
        rid = f"r{step.round}.{expert}"
        route: dict[str, Any] = {"route_reason": self.route.reason} if self.route is not None else {}
        if res is None:
            return self.message(step, expert, "expert", "", status=status or LATE, saw=saw, id_=rid, **route,
                                error=error or f"no reply within round_timeout={self.spec.round_timeout}s")
        g = res.generation
        if g.switch:
            self.switches.append({"expert": expert, **g.switch})
        status = status or generation_status(g)
        verdict = repetition.judge(g.content, self.spec.task, refs) if status == OK else None
        return self.message(step, expert, "expert", g.content, status=verdict.status if verdict else status, saw=saw,
                            id_=rid, rank=res.rank, node=res.node, model=g.model or None, error=g.error or error,
                            **g.metrics(), **extra, switch=g.switch, memory=g.memory, **(g.passages.as_record() if g.passages else {}),
                            **route,
                            repetition=verdict.as_record() if verdict else None)

    # --- writing ------------------------------------------------------------------------------------------------

    def write_step(self, records: list[MessageRecord], end: StepEnd) -> None:
        self._append(records, end)
        self.steps.append(end.as_json())
        self.write_summary("running", None)

    def _append(self, records: list[MessageRecord], end: StepEnd) -> None:
        """A step's records and its StepEnd, in one write, fsync'd."""
        assert self._transcript is not None, "open() first"
        lines = [json.dumps(r.as_json(), ensure_ascii=False) for r in records]
        self._transcript.write("\n".join([*lines, json.dumps(end.as_json(), ensure_ascii=False)]) + "\n")
        self._transcript.flush()
        os.fsync(self._transcript.fileno())

    def finish(self, step_no: int, final: Final) -> None:
        """The final answer: its record, final.md, the complete summary."""
        last_round = max([self.spec.rounds] + [s["round"] for s in self.steps])
        rec = self.message(Step(last_round + 1, "final", []), final.by, "final", final.content, id_="final",
                           method=final.method)
        self._append([rec], StepEnd(step_no, last_round + 1, "final answer"))
        atomic_write(self.run_dir / FINAL, report.final_markdown(self.spec, final))
        self.write_summary("complete", final)

    def write_summary(self, status: str, final: Final | None) -> None:
        spec = self.spec
        tokens = sum(s.get("completion_tokens", 0) for s in self.steps)
        summary = {
            "status": status,
            "run_dir": str(self.run_dir),
            "task": spec.task,
            "strategy": spec.strategy,
            "rounds": spec.rounds,
            "round": min(max((s["round"] for s in self.steps), default=0), spec.rounds),
            "final_step_done": any(s["round"] > spec.rounds for s in self.steps),
            "started": self.started,
            "updated": time.time(),
            "experts": [{"name": n, "model": self.model_of(n), **({"rank": i.rank, "node": i.node,
                         "load_seconds": round(i.load_seconds, 3),
                         **({"batch": list(i.batch)} if getattr(i, "batch", ()) else {})} if (i := self.where.get(n)) else {})}
                        for n in spec.expert_names],
            "ranks": [asdict(i) for i in self.ranks],
            "completion_tokens": tokens,
            "swarm_tok_s": round(tokens / max(sum(s.get("wall_s", 0.0) for s in self.steps), 1e-9), 2),
            "steps": self.steps,
            "stale_replies": self.stale(),
            "final": None if final is None else {"content": final.content, "by": final.by, "method": final.method},
            "route": None if self.route is None else self.route.as_record(),
            "switches": self._switch_totals(),
            **self.labels,
        }
        atomic_write_json(self.run_dir / SUMMARY, summary)

    def _switch_totals(self) -> dict[str, dict[str, Any]]:
        per: dict[str, dict[str, Any]] = {}
        for s in self.switches:
            p = per.setdefault(s["expert"], {"loads": 0, "load_seconds": 0.0, "peak_models_mb": 0.0,
                                             "budget_mb": s.get("budget_mb"), "over_budget": False})
            p["loads"] += int(s["switched"])
            p["load_seconds"] = round(p["load_seconds"] + s["load_seconds"], 4)
            p["peak_models_mb"] = max(p["peak_models_mb"], s["peak_models_mb"])
            p["over_budget"] = p["over_budget"] or s["over_budget"]
        return per
