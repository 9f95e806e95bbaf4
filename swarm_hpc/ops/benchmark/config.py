"""The benchmark file (bench/models.toml): which models to test and how, validated into typed, frozen objects.

Shape (every top-level setting is optional; a [[models]] table may override threads, n_ctx, chat_format):

    reps = 3                 # repetitions per model: median and spread
    threads = 1              # llama.cpp threads (prompt and generation); under SLURM, cpus-per-task
    n_ctx = 2048             # context size, a multiple of 256
    prompt_tokens = 128      # prompt length for the prompt-processing speed
    max_tokens = 64          # tokens generated per repetition
    [[models]]
    model = "smollm2"        # a bundled name or a GGUF path relative to this file's folder
    [slurm]                  # resources of each array task (all optional)

A model that cannot be found or loaded is not an error of the file: it is measured as failed and reported,
the others still run. Everything else wrong in the file is one UserError line.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from swarm_hpc.core.tomlfile import STRICT, load_toml_model
from swarm_hpc.errors import UserError
from swarm_hpc.experts.models import BUNDLED

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _ctx_multiple(v: int | None) -> int | None:
    if v is not None and v % 256:
        raise ValueError(f"n_ctx {v} is not a multiple of 256 (llama.cpp pads it and the buffers break)")
    return v


class ModelEntry(BaseModel):
    """One [[models]] table."""

    model_config = STRICT

    model: str = Field(min_length=1, json_schema_extra={"fix": "a bundled model name (smollm2, gemma3) or a GGUF path relative to the file's folder"})
    name: str | None = Field(default=None, json_schema_extra={"fix": "a short label: letters, digits, ., - or _ (default: the bundled name or the file's stem)"})
    threads: int | None = Field(default=None, ge=1, le=256, json_schema_extra={"fix": "llama.cpp threads, 1 to the node's cores"})
    n_ctx: int | None = Field(default=None, ge=256, le=131072, json_schema_extra={"fix": "a multiple of 256, e.g. 2048"})
    chat_format: Literal["plain", "chatml"] | None = Field(default=None, json_schema_extra={"fix": "leave it out (the model's own template; \"plain\" when it has none), or \"plain\" or \"chatml\""})

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid name (a letter or digit, then up to 63 letters, digits, ., - or _)")
        return v

    @field_validator("n_ctx")
    @classmethod
    def _n_ctx(cls, v: int | None) -> int | None:
        return _ctx_multiple(v)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.model in BUNDLED:
            return self.model
        stem = Path(self.model).stem or "model"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:64] or "model"


class BenchSlurm(BaseModel):
    """Resources of each SLURM array task (one model on one node)."""

    model_config = STRICT

    partition: str | None = Field(default=None, json_schema_extra={"fix": "a partition that `sinfo` lists"})
    time: str = Field(default="00:30:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$", json_schema_extra={"fix": "SLURM time such as \"00:30:00\""})
    mem: str | None = Field(default=None, pattern=r"^\d+[KMGT]?$", json_schema_extra={"fix": "memory per task, e.g. \"4G\""})
    exclusive: bool = Field(default=True, json_schema_extra={"fix": "true: a task has its node to itself, so models do not slow each other down"})
    job_name: str = Field(default="bench", pattern=r"^[A-Za-z0-9._-]{1,64}$", json_schema_extra={"fix": "letters, digits, ., - or _"})
    extra: list[str] = Field(default_factory=list, json_schema_extra={"fix": "extra #SBATCH options, e.g. [\"--account=lab\"]"})


class BenchConfig(BaseModel):
    """The whole benchmark file."""

    model_config = STRICT

    reps: int = Field(default=3, ge=1, le=100, json_schema_extra={"fix": "repetitions per model, e.g. 3"})
    threads: int = Field(default=1, ge=1, le=256, json_schema_extra={"fix": "llama.cpp threads, 1 to the node's cores"})
    n_ctx: int = Field(default=2048, ge=256, le=131072, json_schema_extra={"fix": "a multiple of 256, e.g. 2048"})
    prompt_tokens: int = Field(default=128, ge=8, le=16384, json_schema_extra={"fix": "prompt length for the prompt speed, e.g. 128"})
    max_tokens: int = Field(default=64, ge=4, le=8192, json_schema_extra={"fix": "tokens generated per repetition, e.g. 64"})
    probe_max_tokens: int = Field(default=24, ge=4, le=256, json_schema_extra={"fix": "tokens an answer of the quality probe may take, e.g. 24"})
    bandwidth_mb: int = Field(default=256, ge=16, le=65536, json_schema_extra={"fix": "size of the copied array for the bandwidth measurement, larger than the last-level cache, e.g. 256"})
    timeout: float = Field(default=900.0, gt=0, json_schema_extra={"fix": "seconds one model may take in all, e.g. 900"})
    output_dir: str = Field(default="results", min_length=1, json_schema_extra={"fix": "a folder for run directories, relative to this file's folder"})
    models: list[ModelEntry] = Field(json_schema_extra={"fix": "add at least one [[models]] table with `model = \"smollm2\"`"})
    slurm: BenchSlurm = Field(default_factory=BenchSlurm)

    @field_validator("n_ctx")
    @classmethod
    def _n_ctx(cls, v: int) -> int | None:
        return _ctx_multiple(v)

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[ModelEntry]) -> list[ModelEntry]:
        if not v:
            raise ValueError("the list of models is empty")
        seen: set[str] = set()
        for m in v:
            if m.label in seen:
                raise ValueError(f"two models are named {m.label!r}; give one of them a distinct `name`")
            seen.add(m.label)
        return v


@dataclass(frozen=True)
class ModelRun:
    """One model's effective settings (the file's defaults with its own overrides applied)."""

    name: str
    model: str                 # as written in the file
    threads: int
    n_ctx: int
    chat_format: str | None
    reps: int
    prompt_tokens: int
    max_tokens: int
    probe_max_tokens: int
    bandwidth_mb: int
    timeout: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRun:
        return cls(**d)


def model_runs(cfg: BenchConfig) -> list[ModelRun]:
    return [ModelRun(name=m.label, model=m.model, threads=m.threads or cfg.threads, n_ctx=m.n_ctx or cfg.n_ctx,
                     chat_format=m.chat_format, reps=cfg.reps, prompt_tokens=cfg.prompt_tokens,
                     max_tokens=cfg.max_tokens, probe_max_tokens=cfg.probe_max_tokens,
                     bandwidth_mb=cfg.bandwidth_mb, timeout=cfg.timeout)
            for m in cfg.models]


def load_config(path: Path, reps: int | None = None) -> BenchConfig:
    """Read and validate a benchmark file; `reps` (from the command line) overrides the file's."""
    path = Path(path)
    if path.suffix != ".toml":
        raise UserError(str(path), "a benchmark file must be a .toml file", "give the path of a file such as bench/models.toml")
    cfg = load_toml_model(path, BenchConfig)
    if reps is not None:
        cfg = cfg.model_copy(update={"reps": reps})
    need = cfg.prompt_tokens + cfg.max_tokens
    for i, m in enumerate(cfg.models):
        n_ctx = m.n_ctx or cfg.n_ctx
        if n_ctx < need:
            field = f"models[{i}].n_ctx" if m.n_ctx else "n_ctx"
            raise UserError(str(path), f"n_ctx {n_ctx} of {m.label!r} does not hold prompt_tokens + max_tokens = {need}",
                            f"set n_ctx to at least {-(-need // 256) * 256}, or lower prompt_tokens or max_tokens", field)
    return cfg
