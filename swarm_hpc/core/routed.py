"""A native run with routing and model switching: rank 0's `Run`, narrowed to the experts that the spec's
[[routes]] choose for the task, asking them for the routed model, and recording who was chosen and why.

Transcript additions (extra fields; `swarm-hpc show` ignores what it does not know):
- the task record: `route` ({experts, model, skill, rule, keywords, reason});
- each reply: `route_reason`, `model` (the model that really answered, as the rank reports it) and, for an
  expert that serves several models, `switch` (swarm_hpc/switching.py: load/unload seconds, memory, budget);
- summary.json: `route`, and `switches` (loads, load seconds, peak memory per expert).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from swarm_hpc.core import report
from swarm_hpc.core.native import Run
from swarm_hpc.core.dialogue import Reply, Step
from swarm_hpc.mpi.exchange import RankInfo, TurnResult
from swarm_hpc.core.routing import Route, route, routed_spec
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies import Strategy
from swarm_hpc.core.recorder import SUMMARY, atomic_write_json


def narrowed(spec: SwarmSpec, r: Route) -> SwarmSpec:
    """The spec of the chosen experts, each with the model it answers with."""
    sub = routed_spec(spec, r)
    if r.model is None:
        return sub
    experts = [e.model_copy(update={"model": r.model}) if e.name in r.experts else e for e in sub.experts]
    return sub.model_copy(update={"experts": experts})


def needs_routing(spec: SwarmSpec) -> bool:
    return bool(spec.routes) or any(e.switches_models for e in spec.experts)


class RoutedRun(Run):
    """`Run` on the routed experts; replies carry the model that answered and what switching it cost."""

    def __init__(self, spec: SwarmSpec, run_dir: Path, exchange: Any, infos: list[RankInfo],
                 say: Callable[[str], None] = report.say, strategy: Strategy | None = None):
        self.full_spec = spec
        self.route = route(spec, spec.task)
        self.switches: list[dict[str, Any]] = []
        super().__init__(narrowed(spec, self.route), run_dir, exchange, infos, say=say, strategy=strategy)
        if self.route.model and hasattr(exchange, "models"):
            exchange.models = {n: self.route.model for n in self.route.experts}
        if spec.routes:
            say(f"routing: {self.route.reason}")

    def _record(self, step: Step, expert: str, role: str, content: str, **kw: Any) -> dict[str, Any]:
        rec = super()._record(step, expert, role, content, **kw)
        if not self.full_spec.routes:
            return rec
        if role == "task":
            rec["route"] = self.route.as_record()
        elif role == "expert":
            rec["route_reason"] = self.route.reason
        return rec

    def _info_fields(self, expert: str, info: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if info.get("model"):
            out["model"] = info["model"]
        if info.get("switch"):
            out["switch"] = info["switch"]
            self.switches.append({"expert": expert, **info["switch"]})
        return out

    def _take(self, step: Step, expert: str, saw: list[str], res: TurnResult | None) -> tuple[Reply, list[dict[str, Any]]]:
        reply, recs = super()._take(step, expert, saw, res)
        if res is not None and getattr(res, "info", None):
            recs[0].update(self._info_fields(expert, res.info))
        return reply, recs

    def _summary_extra(self) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for s in self.switches:
            p = per.setdefault(s["expert"], {"loads": 0, "load_seconds": 0.0, "peak_models_mb": 0.0,
                                             "budget_mb": s.get("budget_mb"), "over_budget": False})
            p["loads"] += int(s["switched"])
            p["load_seconds"] = round(p["load_seconds"] + s["load_seconds"], 4)
            p["peak_models_mb"] = max(p["peak_models_mb"], s["peak_models_mb"])
            p["over_budget"] = p["over_budget"] or s["over_budget"]
        return {"route": self.route.as_record() if self.full_spec.routes else None, "switches": per}

    def _write_summary(self, status: str, final: Any) -> None:
        super()._write_summary(status, final)
        path = self.run_dir / SUMMARY
        summary = json.loads(path.read_text(encoding="utf-8"))
        summary.update(self._summary_extra())
        atomic_write_json(path, summary)
