"""The expert a rank hosts, built from the spec: a LlamaExpert, or a PooledExpert when it serves several models;
or an ExpertGroup when several experts share the rank's model (SwarmSpec.rank_groups).

`SWARM_HPC_EXPERT_WRAPPER=module:function` wraps every expert a rank builds: `function(expert)` returns an
object with the same `Expert` interface (for tracing, or the test suite's fault injection); the module must be
importable on every rank.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.experts.group import ExpertGroup, Member
from swarm_hpc.experts.interface import Expert
from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.models import expert_model
from swarm_hpc.experts.switching import PooledExpert, served_models
from swarm_hpc.memory.options import ExpertMemory


def expert_memory(spec: SwarmSpec) -> ExpertMemory:
    m = spec.memory
    return ExpertMemory(policy=m.policy, summary_tokens=m.summary_tokens, facts_tokens=m.facts_tokens,
                        remind_facts=m.remind_facts, n_ctx_max=m.n_ctx_max, budget_mb=m.context_budget_mb)


def build_expert(spec: SwarmSpec, name: str, spec_dir: Path, first: str | None = None) -> Expert:
    """Expert `name` of the spec (`first`: the model to load first, when the expert serves several)."""
    e = spec.expert(name)
    expert: Expert
    if e.switches_models:
        models = served_models(e, spec_dir, field=f"experts.{name}.models")
        if first in models:
            models = {first: models[first], **{k: v for k, v in models.items() if k != first}}
        expert = PooledExpert(name, models, n_ctx=e.n_ctx, threads=e.threads, temperature=e.temperature,
                              seed=e.seed, max_tokens=e.max_tokens, budget_mb=e.memory_budget_mb)
    else:
        expert = LlamaExpert(name, expert_model(e, spec_dir, field=f"experts.{name}.model"), n_ctx=e.n_ctx, threads=e.threads, temperature=e.temperature,
                             seed=e.seed, max_tokens=e.max_tokens, memory=expert_memory(spec))
    wrapper = os.environ.get("SWARM_HPC_EXPERT_WRAPPER", "")
    if wrapper:
        module, _, function = wrapper.partition(":")
        expert = getattr(importlib.import_module(module), function)(expert)
    return expert


def build_group(spec: SwarmSpec, names: list[str], spec_dir: Path) -> ExpertGroup:
    """Experts `names` (one model, one chat format) on one rank, decoding as one batch."""
    experts = [spec.expert(n) for n in names]
    members = [Member(e.name, n_ctx=e.n_ctx, temperature=e.temperature, seed=e.seed, max_tokens=e.max_tokens)
               for e in experts]
    model = expert_model(experts[0], spec_dir, field=f"experts.{names[0]}.model")
    return ExpertGroup(model, members, threads=spec.rank_threads(names), memory=expert_memory(spec))
