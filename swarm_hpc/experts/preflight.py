"""Checks a spec against the files it names, before anything is launched or written.

- an expert whose `model` is a bundled model not installed here gets the first installed of its `fallback`
  models (the spec returned says which: it is the one to snapshot and run);
- every expert's model resolves to a real GGUF file (bundled name or path) that has a chat template, unless
  the expert sets `chat_format`;
- every expert's n_ctx holds its system prompt plus one turn (`max_tokens`), counted with the model's own
  tokenizer (a vocabulary-only load: milliseconds, no weights read);
- an expert that serves several models (`models`): each one resolves, has a chat template, and fits
  `memory_budget_mb`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from swarm_hpc.core.routing import router_file
from swarm_hpc.core.spec import ExpertSpec, SwarmSpec
from swarm_hpc.errors import UserError
from swarm_hpc.experts.llama import vocab_model
from swarm_hpc.experts.models import ResolvedModel, resolve_model, settle_models
from swarm_hpc.experts.switching import estimate_footprint
from swarm_hpc.memory.store import Store

# what the opening turn adds around the persona: chat markers, swarm rules, the task, the instruction
_OPENING_OVERHEAD = 96
# A rank's memory, for the SLURM job's request (`rank_memory_mb`): the footprint estimate of its models (weights =
# the GGUF file, KV cache at n_ctx, buffers; experts/switching.py) plus the runtime. Experts use the weights in
# place from the mapped file (no repacked private copy: experts/llama.py `load_llama`), so ranks on one node that
# run the same file share its pages, and the kernel (and the job's cgroup) counts them once per node. Each rank's
# request still counts the file whole, as a rank alone on its node needs it: with several ranks of one model on a
# node the job asks for (ranks - 1) x the file more than it uses ([slurm] mem_per_cpu can say less). Measured
# here (RSS after a completion, n_ctx 2048, no MPI; bench/results/weights.json): SmolLM2 Q4_1 233 MB for a 94 MB
# file, Gemma 3 270M 412/241, Qwen2.5-Coder 0.5B 637/469, 1.5B 1284/1066 (of which 199 MB the rank's own: KV
# cache 56 MB, buffers, runtime); the estimate plus the runtime is 311, 502, 690 and 1319 MB.
RUNTIME_MB = 128      # Python, mpi4py, llama.cpp before any model: 45-70 MB measured, twice that for the heap


def check_spec_files(spec: SwarmSpec, base_dir: Path, where: str) -> SwarmSpec:
    """Settle fallbacks, then resolve and check every expert's model; `base_dir` is where relative model paths
    start. Returns the spec to run (with the models chosen)."""
    spec = settle_models(spec, base_dir, where)
    resolved: dict[str, ResolvedModel] = {}
    for i, e in enumerate(spec.experts):
        resolved[e.name] = resolve_model(e.model, base_dir, where, f"experts[{i}].model")
    for i, e in enumerate(spec.experts):
        m = resolved[e.name]
        llm = _vocab(m, where, f"experts[{i}].model")
        fmt = e.chat_format or m.chat_format
        if fmt is None and not llm.metadata.get("tokenizer.chat_template"):
            raise UserError(where, f"model {e.model!r} has no chat template", "set chat_format = \"plain\" for a base "
                            "model, or \"chatml\"", f"experts[{i}].chat_format")
        persona = len(llm.tokenize(e.persona.encode("utf-8"), add_bos=True, special=True))
        task = len(llm.tokenize(spec.task.encode("utf-8"), add_bos=False, special=True))
        need = persona + task + _OPENING_OVERHEAD + e.max_tokens
        if need > e.n_ctx:
            fit = -(-need // 256) * 256
            raise UserError(where, f"n_ctx {e.n_ctx} is too small for the persona ({persona} tokens), the task "
                            f"({task}) and max_tokens ({e.max_tokens})",
                            f"set n_ctx to at least {fit}, or shorten the persona or max_tokens", f"experts[{i}].n_ctx")
    check_switching(spec, base_dir, where)
    if spec.router is not None and not router_file(spec.router.model, base_dir).is_file():
        raise UserError(where, f"router model {str(router_file(spec.router.model, base_dir))!r} not found",
                        "train one with `swarm-hpc fed run` (dataset = \"router\") and give its model.npz",
                        "router.model")
    store = spec.memory.store_path(base_dir)
    if store is not None:
        Store(store, where, "memory.store").close()
    return spec


def check_switching(spec: SwarmSpec, base_dir: Path, where: str) -> None:
    """Experts that serve several models: every model in `models` resolves to a GGUF file with a chat template
    (or chat_format), and each one fits `memory_budget_mb`."""
    for i, e in enumerate(spec.experts):
        if not e.switches_models:
            continue
        for ref in e.served_models:
            fld = f"experts[{i}].models" if ref != e.model else f"experts[{i}].model"
            m = resolve_model(ref, base_dir, where, fld)
            fmt = e.chat_format if ref == e.model and e.chat_format else m.chat_format
            if fmt is None and not _vocab(m, where, fld).metadata.get("tokenizer.chat_template"):
                raise UserError(where, f"model {ref!r} has no chat template", "serve a chat model, or give this expert "
                                "that model as its `model` with chat_format = \"plain\"", fld)
            if e.memory_budget_mb is not None:
                fp = estimate_footprint(m, e.n_ctx)
                if fp.estimate_mb > e.memory_budget_mb:
                    raise UserError(where, f"memory_budget_mb {e.memory_budget_mb} cannot hold model {ref!r} "
                                    f"({fp.describe()} at n_ctx {e.n_ctx})",
                                    f"raise memory_budget_mb to at least {int(fp.estimate_mb) + 1}, or lower n_ctx",
                                    f"experts[{i}].memory_budget_mb")


def rank_memory_mb(expert: ExpertSpec, base_dir: Path, where: str = "spec") -> int:
    """The memory a rank hosting `expert` needs (MB): its models at its n_ctx, or its `memory_budget_mb` when it
    switches models within one, plus the runtime."""
    if expert.memory_budget_mb is not None:
        models_mb = float(expert.memory_budget_mb)
    else:
        models_mb = 0.0
        for ref in expert.served_models:
            fp = estimate_footprint(resolve_model(ref, base_dir, where), expert.n_ctx)
            models_mb += fp.estimate_mb
    return math.ceil(models_mb + RUNTIME_MB)


def group_memory_mb(spec: SwarmSpec, names: list[str], base_dir: Path, where: str = "spec") -> int:
    """The memory a rank hosting experts `names` needs (MB): one expert as rank_memory_mb says; a group (one model,
    one batch: swarm_hpc/experts/group.py) the weights and buffers once and a KV cache per member at the largest
    member's n_ctx, plus one for the model's own context when old turns are folded into summaries."""
    experts = [spec.expert(n) for n in names]
    if len(experts) == 1:
        return rank_memory_mb(experts[0], base_dir, where)
    fp = estimate_footprint(resolve_model(experts[0].model, base_dir, where), max(e.n_ctx for e in experts))
    contexts = len(experts) + (1 if spec.memory.compresses else 0)
    return math.ceil(fp.weights_mb + fp.buffers_mb + contexts * fp.kv_mb + RUNTIME_MB)


def job_mem_per_cpu(spec: SwarmSpec, base_dir: Path, cpus_per_task: int, where: str = "spec") -> str:
    """sbatch's --mem-per-cpu for the swarm: the neediest rank's memory over the CPUs each rank gets (every rank
    gets the same request, so any rank can host any expert or group). An expert with `fallback` counts the model
    it would run here (the job's node decides again, from what it has installed)."""
    spec = settle_models(spec, base_dir, where, quiet=True)
    need = max(group_memory_mb(spec, g, base_dir, where) for g in spec.rank_groups())
    return f"{math.ceil(need / max(cpus_per_task, 1))}M"


def _vocab(m: ResolvedModel, where: str, field: str) -> Any:
    try:
        return vocab_model(m.path)
    except Exception as e:
        raise UserError(where, f"llama.cpp cannot load {str(m.path)!r} ({type(e).__name__})",
                        "check that it is a complete GGUF model file (re-copy or re-convert it)", field) from None
