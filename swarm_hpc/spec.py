"""The swarm spec: a TOML file validated into typed, frozen objects.

Shape (see README "Spec reference" and jobs/examples/):

    task = "..."               # what the swarm works on
    strategy = "debate"        # debate | vote | moa | round-robin
    rounds = 2
    round_timeout = 120        # seconds a round may take; late experts are marked, never waited on
    [defaults]                 # any expert field, applied to every expert that does not set it
    [[experts]]                # one table per expert: name, model, persona, ...
    [slurm]                    # resources when the spec runs as a SLURM job (see swarm_hpc/slurm)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from .errors import UserError
from .tomlfile import STRICT, read_toml, validate_model

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
STRATEGIES = ("debate", "vote", "moa", "round-robin")

EXPERT_DEFAULTS: dict[str, Any] = {
    "model": "smollm2",
    "n_ctx": 2048,
    "threads": 1,
    "temperature": 0.7,
    "seed": 1,
    "max_tokens": 128,
}


class ExpertSpec(BaseModel):
    """One llama.cpp expert: hosted by one MPI rank."""

    model_config = STRICT

    name: str = Field(json_schema_extra={"fix": "a short name: a letter, then letters, digits, - or _"})
    model: str = Field(json_schema_extra={"fix": "a bundled model name (see `swarm-hpc models`) or a GGUF path"})
    persona: str = Field(json_schema_extra={"fix": "the expert's system prompt, e.g. persona = \"You are a careful physicist.\""})
    n_ctx: int = Field(ge=256, le=131072, json_schema_extra={"fix": "a multiple of 256, e.g. 2048"})
    threads: int = Field(ge=1, le=256, json_schema_extra={"fix": "llama.cpp threads, usually 1 to the node's cores"})
    temperature: float = Field(ge=0.0, le=5.0, json_schema_extra={"fix": "0 for greedy, 0.7 is typical"})
    seed: int = Field(ge=0, json_schema_extra={"fix": "a non-negative integer"})
    max_tokens: int = Field(ge=1, le=32768, json_schema_extra={"fix": "tokens one turn may generate, e.g. 128"})
    chat_format: Literal["plain", "chatml"] | None = Field(default=None, json_schema_extra={"fix": "leave it out to use the model's own chat template, or \"plain\" (a Question/Answer transcript, for base models) or \"chatml\""})
    role: Literal["expert", "synthesizer"] = Field(default="expert", json_schema_extra={"fix": "\"expert\" or \"synthesizer\""})

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid expert name (a letter, then up to 31 letters, digits, - or _)")
        return v

    @field_validator("n_ctx")
    @classmethod
    def _n_ctx(cls, v: int) -> int:
        if v % 256:
            raise ValueError(f"n_ctx {v} is not a multiple of 256 (llama.cpp pads it and the buffers break)")
        return v

    @field_validator("persona", "model")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v


class SlurmSpec(BaseModel):
    """SLURM resources for `swarm-hpc render/submit` (all optional)."""

    model_config = STRICT

    partition: str | None = None
    nodes: int | None = Field(default=None, ge=1)
    ntasks_per_node: int | None = Field(default=None, ge=1)
    mem_per_cpu: str | None = Field(default=None, pattern=r"^\d+[KMGT]?$", json_schema_extra={"fix": "e.g. \"1G\" or \"900M\""})
    time: str = Field(default="00:30:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$", json_schema_extra={"fix": "SLURM time such as \"00:30:00\" or \"1-00:00:00\""})
    job_name: str | None = None
    requeue: bool = True
    mpi: str = Field(default="pmix", json_schema_extra={"fix": "the srun --mpi plugin: \"pmix\" for Open MPI, \"pmi2\" for MPICH"})
    extra: list[str] = Field(default_factory=list, json_schema_extra={"fix": "extra #SBATCH options, e.g. [\"--exclusive\"]"})


class SwarmSpec(BaseModel):
    """A whole swarm: the task, the experts, how they talk and where results go."""

    model_config = STRICT

    task: str = Field(min_length=1, json_schema_extra={"fix": "task = \"the question the swarm works on\""})
    strategy: Literal["debate", "vote", "moa", "round-robin"] = Field(json_schema_extra={"fix": "one of " + ", ".join(STRATEGIES)})
    rounds: int = Field(ge=1, le=100, json_schema_extra={"fix": "rounds = 2"})
    round_timeout: float = Field(default=300.0, gt=0, json_schema_extra={"fix": "seconds a round may take, e.g. 120"})
    rank0_hosts_expert: bool = Field(default=True, json_schema_extra={"fix": "true: rank 0 also hosts the first expert; false: rank 0 only coordinates"})
    output_dir: str = Field(default="runs", json_schema_extra={"fix": "a folder for run directories"})
    synthesizer: str | None = Field(default=None, json_schema_extra={"fix": "the name of the expert who writes the final answer"})
    experts: list[ExpertSpec] = Field(json_schema_extra={"fix": "add at least one [[experts]] table"})
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        """Merge `[defaults]` (and the built-in defaults) into each expert table."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        user_defaults = data.pop("defaults", {})
        if not isinstance(user_defaults, dict):
            raise ValueError("`defaults` must be a table of expert fields")
        unknown = set(user_defaults) - set(ExpertSpec.model_fields)
        if unknown:
            raise ValueError(f"`defaults` has unknown field {sorted(unknown)[0]!r}; it takes expert fields: "
                             + ", ".join(ExpertSpec.model_fields))
        experts = data.get("experts")
        if isinstance(experts, list):
            data["experts"] = [{**EXPERT_DEFAULTS, **user_defaults, **e} if isinstance(e, dict) else e
                               for e in experts]
        return data

    @field_validator("experts")
    @classmethod
    def _experts(cls, v: list[ExpertSpec]) -> list[ExpertSpec]:
        if not v:
            raise ValueError("the swarm has zero experts")
        seen: set[str] = set()
        for e in v:
            if e.name in seen:
                raise ValueError(f"two experts are named {e.name!r}; names must be unique")
            seen.add(e.name)
        return v

    @model_validator(mode="after")
    def _synth(self, info: ValidationInfo) -> SwarmSpec:
        names = [e.name for e in self.experts]
        if self.synthesizer is not None and self.synthesizer not in names:
            raise ValueError(f"synthesizer {self.synthesizer!r} is not one of the experts ({', '.join(names)})")
        return self

    # --- derived facts -------------------------------------------------------------------------------------

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def expert(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def synthesizer_name(self) -> str:
        """Who writes the final answer: `synthesizer`, else the expert with role "synthesizer", else the first."""
        if self.synthesizer:
            return self.synthesizer
        for e in self.experts:
            if e.role == "synthesizer":
                return e.name
        return self.experts[0].name

    @property
    def ranks_needed(self) -> int:
        return len(self.experts) if self.rank0_hosts_expert else len(self.experts) + 1


def parse_spec(data: dict[str, Any], where: str) -> SwarmSpec:
    return validate_model(data, SwarmSpec, where)


def load_spec(path: str | Path) -> SwarmSpec:
    """Read and validate a spec file (structure only; `check_models` checks the files it names)."""
    path = Path(path)
    if path.suffix != ".toml":
        raise UserError(str(path), "a swarm spec must be a .toml file", "give the path of a spec such as jobs/examples/debate.toml")
    return parse_spec(read_toml(path), str(path))
