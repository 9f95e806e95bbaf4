"""Model switching: one expert rank serves several GGUF models within a memory budget.

An expert with `models = [...]` (besides its `model`) keeps a pool of loaded llama.cpp models. A request names
the model it wants (`TurnRequest.model`); the pool loads it if needed, first unloading the least recently
used models until the new one fits in `memory_budget_mb`. Memory is what the kernel says the rank holds:
resident memory (/proc/self/status VmRSS) above what the rank held before any model was loaded.

How much a model will take is estimated before its first load from its GGUF header (weights = the file,
the KV cache for n_ctx, buffers that grow with the vocabulary), and measured at each load after that.
Every turn reports what it cost (`SwitchReport`): which model answered (and the name inside its file), load
and unload seconds, what was unloaded, RSS/PSS and whether the budget held.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_hpc.core.passages import Passage
from swarm_hpc.core.spec import ExpertSpec
from swarm_hpc.core.turns import Generation, Sampling, failed
from swarm_hpc.experts.ggufmeta import kv_cache_bytes, read_metadata
from swarm_hpc.experts.interface import Messages
from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.memory import malloc_trim, pss_mb, rss_mb
from swarm_hpc.experts.models import ResolvedModel, expert_model

MB = 2**20
BUFFERS_FIXED_MB = 32.0          # llama.cpp's compute buffers, batch and output arrays ...
BUFFER_BYTES_PER_VOCAB = 256     # ... and the part that grows with the vocabulary (logits)
MEASURED_MARGIN = 1.05           # a model measured once is taken as 5% bigger next time


@dataclass(frozen=True)
class Footprint:
    """How much memory a model takes on a rank, estimated from its file or measured at a load."""

    model: str
    weights_mb: float
    kv_mb: float
    buffers_mb: float
    measured_mb: float | None = None

    @property
    def estimate_mb(self) -> float:
        return self.weights_mb + self.kv_mb + self.buffers_mb

    @property
    def need_mb(self) -> float:
        """What the pool makes room for before loading it."""
        return self.measured_mb * MEASURED_MARGIN if self.measured_mb is not None else self.estimate_mb

    def describe(self) -> str:
        return (f"about {self.estimate_mb:.0f} MB: {self.weights_mb:.0f} MB weights, {self.kv_mb:.0f} MB KV cache, "
                f"{self.buffers_mb:.0f} MB buffers")


def estimate_footprint(model: ResolvedModel, n_ctx: int) -> Footprint:
    meta = read_metadata(model.path)
    arch = meta.get("general.architecture", "llama")
    n_vocab = int(meta.get("tokenizer.ggml.tokens") or meta.get(f"{arch}.vocab_size") or 32000)
    return Footprint(model.ref, model.path.stat().st_size / MB, kv_cache_bytes(meta, n_ctx) / MB,
                     BUFFERS_FIXED_MB + n_vocab * BUFFER_BYTES_PER_VOCAB / MB)


@dataclass(frozen=True)
class SwitchReport:
    """What one request cost in model switching; added to the transcript record of the reply."""

    model: str                    # the model that answered (as the spec names it)
    model_file: str               # its GGUF file
    model_name: str               # general.name inside that file: which weights really answered
    switched: bool                # the model was loaded for this request
    load_seconds: float
    unload_seconds: float
    unloaded: list[str]           # models unloaded to make room, least recently used first
    loaded: list[str]             # models loaded after the request, least recently used first
    rss_mb: float                 # the rank's resident memory after the turn
    pss_mb: float
    baseline_mb: float            # the rank's resident memory before any model was loaded
    models_mb: float              # rss_mb above baseline_mb
    peak_models_mb: float         # the most models_mb seen on this rank so far (sampled around loads and turns)
    budget_mb: float | None
    over_budget: bool

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ModelPool:
    """The loaded models of one expert rank, least recently used first."""

    def __init__(self, models: dict[str, ResolvedModel], n_ctx: int, budget_mb: float | None,
                 make: Callable[[ResolvedModel], LlamaExpert]):
        import llama_cpp  # noqa: F401  (the library's own memory belongs to the baseline, not to a model)

        self.models = models
        self.n_ctx = n_ctx
        self.budget_mb = budget_mb
        self.make = make
        self.footprints = {ref: estimate_footprint(m, n_ctx) for ref, m in models.items()}
        self.loaded: OrderedDict[str, LlamaExpert] = OrderedDict()
        self.names: dict[str, str] = {}
        gc.collect()
        malloc_trim()
        self.baseline_mb = rss_mb()
        self.peak_mb = 0.0
        self.loads = 0

    def models_mb(self) -> float:
        used = rss_mb() - self.baseline_mb
        self.peak_mb = max(self.peak_mb, used)
        return used

    def _unload(self, ref: str) -> None:
        expert = self.loaded.pop(ref)
        expert.llm.close()
        del expert
        gc.collect()
        malloc_trim()

    def get(self, ref: str) -> tuple[LlamaExpert, dict[str, Any]]:
        """The expert for model `ref`, loading it (and unloading others to make room) if needed."""
        if ref not in self.models:
            raise KeyError(f"this expert does not serve model {ref!r} (it serves {', '.join(self.models)})")
        if ref in self.loaded:
            self.loaded.move_to_end(ref)
            return self.loaded[ref], {"switched": False, "load_seconds": 0.0, "unload_seconds": 0.0, "unloaded": []}
        fp = self.footprints[ref]
        if self.budget_mb is not None and fp.need_mb > self.budget_mb:
            raise MemoryError(f"model {ref!r} needs {fp.describe()}, more than memory_budget_mb={self.budget_mb:g}")
        unloaded: list[str] = []
        t0 = time.perf_counter()
        while self.loaded and self.budget_mb is not None and self.models_mb() + fp.need_mb > self.budget_mb:
            victim = next(iter(self.loaded))
            self._unload(victim)
            unloaded.append(victim)
        unload_s = time.perf_counter() - t0
        before = self.models_mb()
        t0 = time.perf_counter()
        expert = self.make(self.models[ref])
        load_s = time.perf_counter() - t0
        self.loads += 1
        self.footprints[ref] = dataclasses.replace(fp, measured_mb=max(self.models_mb() - before, fp.measured_mb or 0.0))
        self.loaded[ref] = expert
        self.names[ref] = str(expert.llm.metadata.get("general.name", ""))
        return expert, {"switched": True, "load_seconds": load_s, "unload_seconds": unload_s, "unloaded": unloaded}

    def report(self, ref: str, cost: dict[str, Any]) -> SwitchReport:
        used = self.models_mb()
        return SwitchReport(
            model=ref, model_file=str(self.models[ref].path), model_name=self.names.get(ref, ""),
            switched=cost["switched"], load_seconds=round(cost["load_seconds"], 4),
            unload_seconds=round(cost["unload_seconds"], 4), unloaded=cost["unloaded"], loaded=list(self.loaded),
            rss_mb=round(rss_mb(), 1), pss_mb=round(pss_mb(), 1), baseline_mb=round(self.baseline_mb, 1),
            models_mb=round(used, 1),
            peak_models_mb=round(self.peak_mb, 1), budget_mb=self.budget_mb,
            over_budget=self.budget_mb is not None and self.peak_mb > self.budget_mb)


class PooledExpert:
    """An expert that serves several models within a memory budget (the `Expert` interface)."""

    def __init__(self, name: str, models: dict[str, ResolvedModel], *, n_ctx: int, threads: int,
                 temperature: float, seed: int, max_tokens: int, budget_mb: float | None):
        self.name = name
        self.default = next(iter(models))

        def make(model: ResolvedModel) -> LlamaExpert:
            return LlamaExpert(name, model, n_ctx=n_ctx, threads=threads, temperature=temperature, seed=seed,
                               max_tokens=max_tokens)

        self.pool = ModelPool(models, n_ctx, budget_mb, make)
        t0 = time.perf_counter()
        self.pool.get(self.default)
        self.load_seconds = time.perf_counter() - t0

    @property
    def model_path(self) -> Path:
        """The model loaded first (the expert's `model`)."""
        return self.pool.models[self.default].path

    def answer(self, messages: Messages, *, deadline: float | None = None, model: str | None = None,
               on_text: Callable[[str], None] | None = None,
               cancelled: Callable[[], bool] | None = None, sampling: Sampling | None = None,
               passages: Sequence[Passage] = ()) -> Generation:
        ref = model or self.default
        t0 = time.perf_counter()
        try:
            expert, cost = self.pool.get(ref)
        except (KeyError, MemoryError) as e:
            msg = e.args[0] if e.args else str(e)
            return failed(f"{type(e).__name__}: {msg}", time.perf_counter() - t0, ref)
        gen = expert.answer(messages, deadline=deadline, on_text=on_text, cancelled=cancelled, sampling=sampling,
                            passages=passages)
        return dataclasses.replace(gen, switch=self.pool.report(ref, cost).as_record())


def served_models(expert: ExpertSpec, spec_dir: Path, where: str = "spec", field: str = "model") -> dict[str, ResolvedModel]:
    """{model ref: resolved GGUF} for every model an expert serves, its `model` first."""
    return {ref: expert_model(expert, spec_dir, ref, where, field) for ref in expert.served_models}
