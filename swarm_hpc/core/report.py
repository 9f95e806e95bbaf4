"""Plain-text views of a run: the live lines rank 0 prints and the `swarm-hpc show` rendering.

Rank 0's output goes through mpiexec or into a SLURM job's log, so it is plain, line-buffered text.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from swarm_hpc.core.dialogue import Final, Step, generation_status
from swarm_hpc.core.spec import SwarmSpec

WIDTH = 100
FLAGGED_SHOWN = 300   # characters of an echo or a loop that `show` prints: enough to recognise it


def say(text: str) -> None:
    print(text, flush=True, file=sys.stdout)


def _indent(text: str) -> str:
    lines = []
    for para in (text or "").splitlines() or [""]:
        lines += textwrap.wrap(para, WIDTH - 4) or [""]
    return "\n".join("  | " + line for line in lines)


def step_header(step: Step) -> str:
    who = ", ".join(t.expert for t in step.turns)
    return f"\n== {step.label} ({who}) =="


def metrics_line(expert: str, model: str, rank: Any, node: Any, m: dict[str, Any], status: str = "ok") -> str:
    where = f"rank {rank} on {node}"
    if status != "ok":
        return f"-- {expert} [{model}, {where}]: {status.upper()}"
    return (f"-- {expert} [{model}, {where}]: {m.get('completion_tokens', 0)} tok, "
            f"{m.get('tok_s', 0):.1f} tok/s, prompt {m.get('prompt_tokens', 0)} tok, {m.get('seconds', 0):.2f} s"
            + (" (stopped at the deadline)" if m.get("finish_reason") == "deadline" else ""))


def reply_block(step: Step, res: Any, model: str) -> str:
    g = res.generation
    status = generation_status(g)
    head = metrics_line(res.expert, model, res.rank, res.node, g.metrics(), status)
    body = g.content if status == "ok" else (g.error or "")
    read = citations(g.passages.as_record()) if g.passages else ""
    return head + "\n" + _indent(body) + (f"\n{read}" if read else "")


def citations(rec: dict[str, Any]) -> str:
    """The passages an expert read in a turn, numbered as it saw them (so its [1], [2] can be looked up), and
    those left out for want of room: `  read [1] docs/a.md 0.812 #3 | [2] ...`; "" when it had none."""
    given, cut = rec.get("passages") or [], rec.get("passages_cut") or []
    if not given and not cut:
        return ""
    parts = [f"[{p['n']}] {p['source']} {p['score']:.3f} {p['id']}" for p in given]
    line = "  read " + (" | ".join(parts) if parts else "no passage (none fit)")
    return line + (f"; left out (no room in n_ctx): {', '.join(cut)}" if cut else "")


def cited(content: str, rec: dict[str, Any]) -> str:
    """The sources of the passages `content` cites ([1], [2]), as numbered in the reply record `rec` whose
    author wrote it: `  sources: [1] docs/a.md #3 | ...`; "" when it cites none of them."""
    numbers = {int(n) for n in re.findall(r"\[(\d+)\]", content)}
    shown = [f"[{p['n']}] {p['source']} {p['id']}" for p in rec.get("passages") or [] if p["n"] in numbers]
    return "  sources: " + " | ".join(shown) if shown else ""


def retrieved_lines(retrieved: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The task record's passages per expert: `  passages for alice: #3 docs/a.md 0.812, ...`."""
    return [f"  passages for {name}: " + (", ".join(f"{p['id']} {p['source']} {p['score']:.3f}" for p in hits)
                                          or "none above min_score")
            for name, hits in retrieved.items()]


def flagged_line(expert: str, status: str, reason: str) -> str:
    return f"-- {expert}: marked {status.upper()} ({reason})"


def late_line(step: Step, expert: str, timeout: float) -> str:
    return f"-- {expert}: LATE (no reply within {timeout:g}s; marked in the transcript, not waited on)"


def replayed_line(k: int, step: Step) -> str:
    return f"== {step.label}: replayed from the transcript (step {k}) =="


def final_block(final: Final, run_dir: Path) -> str:
    return (f"\n== final answer ({final.method}) ==\n{_indent(final.content)}\n\n"
            f"transcript: {run_dir / 'transcript.jsonl'}\nsummary:    {run_dir / 'summary.json'}")


def final_markdown(spec: SwarmSpec, final: Final) -> str:
    return f"# Final answer\n\n**Task:** {spec.task}\n\n{final.content}\n\n_{final.method}_\n"


def render_transcript(records: list[dict[str, Any]]) -> str:
    """The whole conversation, round by round, for `swarm-hpc show`."""
    out: list[str] = []
    label = None
    for r in records:
        if r.get("type") != "message":
            continue
        if r["role"] == "task":
            out.append(f"TASK: {r['content']}")
            out += retrieved_lines(r.get("retrieved") or {})
            continue
        if r["role"] == "final":
            out.append(f"\n== final answer ({r.get('method', '')}) ==\n{_indent(r['content'])}")
            # its [1], [2] are numbered as its author read them in its newest reply
            last = next((x for x in reversed(records) if x.get("role") == "expert" and x.get("expert") == r["expert"]
                         and x.get("passages")), None)
            if last is not None and (sources := cited(r["content"], last)):
                out.append(sources)
            continue
        if r.get("step_label") != label:
            label = r.get("step_label")
            out.append(f"\n== {label} ==")
        if r["role"] == "direct":
            out.append(f"   {r['expert']} -> {r['to']} (private): {r['content']}")
            continue
        out.append(metrics_line(r["expert"], r.get("model", ""), r.get("rank"), r.get("node"), r, r.get("status", "ok")))
        if r.get("status") == "ok":
            out.append(_indent(r["content"]))
        elif r.get("repetition"):  # an echo or a loop: why, and how it began
            content = r["content"]
            out.append("  ! " + r["repetition"].get("reason", "") + "\n"
                       + _indent(content[:FLAGGED_SHOWN] + (" ..." if len(content) > FLAGGED_SHOWN else "")))
        elif r.get("error"):
            out.append("  ! " + r["error"])
        if read := citations(r):
            out.append(read)
    return "\n".join(out)
