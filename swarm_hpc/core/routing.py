"""Routing by skill: which experts answer a request, and with which model, from keyword rules in the spec.

    [[routes]]                       # checked against the request's words; no LLM involved
    skill = "math"
    keywords = ["sum", "times", "integral"]
    model = "gemma3"                 # optional: the chosen experts answer with this model (model switching)

    [[experts]]
    skills = ["math"]                # the experts a "math" request goes to

A keyword matches as a whole word (case-insensitive), or anywhere when it is not a word (e.g. "+").
The rule with the most matching keywords wins (the first one on a tie). A request no rule matches goes to
every expert, each with its own model.

    [router]                         # optional: a learned router decides first (swarm_hpc/fed/router.py)
    model = "runs/fed-router/model.npz"
    min_confidence = 0.5             # below it, the keyword rules decide

The learned router is a classifier on MiniLM embeddings of the request, trained federatedly on the nodes' own
records of which skill answered well (`swarm-hpc fed run` with dataset = "router"). A [[routes]] table with
the router's skill still gives the model the chosen experts answer with.

`Route.reason` says in words who was chosen and why; the transcript keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from swarm_hpc.core.spec import SwarmSpec


@dataclass(frozen=True)
class Route:
    experts: list[str]            # who answers, in spec order
    model: str | None             # the model they answer with (None: each its own `model`)
    skill: str | None             # the matched skill (None: no rule matched)
    rule: int | None              # 1-based number of the matched [[routes]] table
    keywords: list[str]           # the rule's keywords found in the request
    reason: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def _matches(keyword: str, text: str) -> bool:
    k = keyword.strip().lower()
    if re.fullmatch(r"[\w\s-]+", k):
        return re.search(r"(?<!\w)" + re.escape(k) + r"(?!\w)", text) is not None
    return k in text


Learned = Callable[[str], tuple[str, float]]   # a learned router: request -> (skill, probability)
ROUTER_FILE = "model.npz"   # what a federated router run leaves in its run directory (swarm_hpc/fed)


def router_file(ref: str, base_dir: Path) -> Path:
    """A [router] model: `ref` is a router's model.npz, or the run directory that holds one."""
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    return path / ROUTER_FILE if path.is_dir() else path


def route(spec: SwarmSpec, request: str, learned: Learned | None = None) -> Route:
    """Choose the experts (and model) for `request`: by the learned router when the spec has one and it is sure
    enough (`[router] min_confidence`) of a skill some expert has; else by the spec's [[routes]] rules."""
    unsure = ""
    if learned is not None and spec.router is not None:
        skill, p = learned(request)
        chosen = [e.name for e in spec.experts if skill in e.skills]
        if p >= spec.router.min_confidence and chosen:
            rule = next((r for r in spec.routes if r.skill == skill), None)
            model = rule.model if rule else None
            return Route(chosen, model, skill, None, [], f"the learned router chose skill {skill!r} (p {p:.2f}) -> "
                         f"{', '.join(chosen)}" + (f" with model {model}" if model else ""))
        unsure = (f"the learned router's skill {skill!r} (p {p:.2f}) " +
                  ("is below min_confidence" if chosen else "is no expert's") + "; ")
    found_route = _by_rules(spec, request)
    return replace(found_route, reason=unsure + found_route.reason) if unsure else found_route


def _by_rules(spec: SwarmSpec, request: str) -> Route:
    everyone = spec.expert_names
    if not spec.routes:
        return Route(everyone, None, None, None, [], "no [[routes]] in the spec: every expert answers")
    text = request.lower()
    best: tuple[int, int] | None = None  # (matches, -index)
    found: list[str] = []
    for i, r in enumerate(spec.routes):
        hits = [k for k in r.keywords if _matches(k, text)]
        if hits and (best is None or (len(hits), -i) > best):
            best, found = (len(hits), -i), hits
    if best is None:
        return Route(everyone, None, None, None, [], "no route's keywords are in the request: every expert answers")
    idx = -best[1]
    r = spec.routes[idx]
    chosen = [e.name for e in spec.experts if r.skill in e.skills]
    quoted = ", ".join(repr(k) for k in found)
    reason = (f"route {idx + 1} matched keyword{'s' if len(found) > 1 else ''} {quoted}: skill {r.skill!r} -> "
              f"{', '.join(chosen)}" + (f" with model {r.model}" if r.model else ""))
    return Route(chosen, r.model, r.skill, idx + 1, found, reason)


def task_route(spec: SwarmSpec, learned: Learned | None = None) -> Route:
    """The route of the spec's own task."""
    return route(spec, spec.task, learned)


def narrowed(spec: SwarmSpec, r: Route) -> SwarmSpec:
    """The spec of the chosen experts (the synthesizer stays only if chosen), each with the model it answers with."""
    if r.experts != spec.expert_names:
        experts = [e for e in spec.experts if e.name in r.experts]
        synth = spec.synthesizer if spec.synthesizer in r.experts else None
        spec = spec.model_copy(update={"experts": experts, "synthesizer": synth, "routes": []})
    if r.model is None:
        return spec
    experts = [e.model_copy(update={"model": r.model}) if e.name in r.experts else e for e in spec.experts]
    return spec.model_copy(update={"experts": experts})
