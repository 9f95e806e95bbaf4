"""The swarm spec: a TOML file validated into typed, frozen objects.

Shape (see README "Spec reference" and jobs/examples/):

    task = "..."               # what the swarm works on
    strategy = "debate"        # debate | vote | moa | round-robin
    rounds = 2
    round_timeout = 120        # seconds a round may take; late experts are marked, never waited on
    [defaults]                 # any expert field, applied to every expert that does not set it
    [[experts]]                # one table per expert: name, model, persona, ...
    [slurm]                    # resources when the spec runs as a SLURM job (see swarm_hpc/slurm)
    engine = "autogen"         # optional: rank 0 runs an AutoGen AgentChat team (swarm_hpc/autogen) instead
    [autogen]                  # options of that team (stop_text, stream, instruction)
    [[routes]]                 # optional keyword rules: a task about a skill goes to the experts that have it
    [router]                   # optional: a learned router (swarm-hpc fed, dataset "router") before the rules
    [memory]                   # optional: compression, dynamic context, the blackboard, a store (swarm_hpc/memory)
    [knowledge]                # optional: retrieval indexes the experts read (swarm_hpc/knowledge)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from swarm_hpc.core.tomlfile import STRICT, read_toml, validate_model
from swarm_hpc.errors import UserError

# a spec's values keep their TOML types: `rounds = "2"` or `rank0_hosts_expert = "yes"` is an error, not a guess
TYPED = ConfigDict(**STRICT, strict=True)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
STRATEGIES = ("debate", "vote", "moa", "round-robin", "self-consistency", "verify", "program")
SKILL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

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

    model_config = TYPED

    name: str = Field(json_schema_extra={"fix": "a short name: a letter, then letters, digits, - or _"})
    model: str = Field(json_schema_extra={"fix": "a bundled model name (see `swarm-hpc models`) or a GGUF path"})
    fallback: list[str] = Field(default_factory=list, json_schema_extra={"fix": "models to run instead, first one installed wins, when `model` is a bundled model that is not installed here, e.g. fallback = [\"smollm2\"]"})
    persona: str = Field(json_schema_extra={"fix": "the expert's system prompt, e.g. persona = \"You are a careful physicist.\""})
    n_ctx: int = Field(ge=256, le=131072, json_schema_extra={"fix": "a multiple of 256, e.g. 2048"})
    threads: int = Field(ge=1, le=256, json_schema_extra={"fix": "llama.cpp threads, usually 1 to the node's cores"})
    temperature: float = Field(ge=0.0, le=5.0, json_schema_extra={"fix": "0 for greedy, 0.7 is typical"})
    seed: int = Field(ge=0, json_schema_extra={"fix": "a non-negative integer"})
    max_tokens: int = Field(ge=1, le=32768, json_schema_extra={"fix": "tokens one turn may generate, e.g. 128"})
    chat_format: Literal["plain", "chatml"] | None = Field(default=None, json_schema_extra={"fix": "leave it out to use the model's own chat template, or \"plain\" (a Question/Answer transcript, for base models) or \"chatml\""})
    role: Literal["expert", "synthesizer"] = Field(default="expert", json_schema_extra={"fix": "\"expert\" or \"synthesizer\""})
    # model switching and routing (swarm_hpc/experts/switching.py, swarm_hpc/core/routing.py)
    models: list[str] = Field(default_factory=list, json_schema_extra={"fix": "more models this expert can switch to, e.g. models = [\"smollm2\", \"gemma3\"] (bundled names or GGUF paths)"})
    memory_budget_mb: int | None = Field(default=None, ge=16, le=1_048_576, json_schema_extra={"fix": "the memory in MB the expert's loaded models may take together on its rank, e.g. 600"})
    skills: list[str] = Field(default_factory=list, json_schema_extra={"fix": "lower-case skill words that [[routes]] name, e.g. skills = [\"math\", \"code\"]"})
    collection: str | None = Field(default=None, json_schema_extra={"fix": "the name of a collection in [knowledge.collections] this expert reads instead of [knowledge] index, e.g. collection = \"hardware\""})

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

    @field_validator("models", "fallback")
    @classmethod
    def _models(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if any(not m.strip() for m in v):
            raise ValueError(f"a model name in `{info.field_name}` is empty")
        if len(set(v)) != len(v):
            raise ValueError(f"`{info.field_name}` names a model twice")
        return v

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: list[str]) -> list[str]:
        for skill in v:
            if not SKILL_RE.match(skill):
                raise ValueError(f"{skill!r} is not a valid skill (a lower-case letter, then up to 31 lower-case letters, digits, - or _)")
        return v

    @property
    def served_models(self) -> list[str]:
        """Every model this expert can answer with: `model` (loaded first) and then `models`."""
        return [self.model] + [m for m in self.models if m != self.model]

    @property
    def switches_models(self) -> bool:
        return len(self.served_models) > 1 or self.memory_budget_mb is not None


class SlurmSpec(BaseModel):
    """SLURM resources for `swarm-hpc render/submit` (all optional)."""

    model_config = TYPED

    partition: str | None = None
    nodes: int | None = Field(default=None, ge=1)
    ntasks_per_node: int | None = Field(default=None, ge=1)
    mem_per_cpu: str | None = Field(default=None, pattern=r"^\d+[KMGT]?$", json_schema_extra={"fix": "e.g. \"1G\" or \"900M\""})
    time: str = Field(default="00:30:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$", json_schema_extra={"fix": "SLURM time such as \"00:30:00\" or \"1-00:00:00\""})
    job_name: str | None = None
    requeue: bool = True
    mpi: str = Field(default="pmix", json_schema_extra={"fix": "the srun --mpi plugin: \"pmix\" for Open MPI, \"pmi2\" for MPICH"})
    extra: list[str] = Field(default_factory=list, json_schema_extra={"fix": "extra #SBATCH options, e.g. [\"--exclusive\"]"})


class RouteSpec(BaseModel):
    """A keyword rule: a request that mentions one of `keywords` goes to the experts with `skill`."""

    model_config = TYPED

    skill: str = Field(json_schema_extra={"fix": "a skill that some expert lists in its `skills`, e.g. skill = \"math\""})
    keywords: list[str] = Field(min_length=1, json_schema_extra={"fix": "words that mark such a request, e.g. keywords = [\"sum\", \"integral\"]"})
    model: str | None = Field(default=None, json_schema_extra={"fix": "the model the chosen experts answer with; each of them must list it in `model` or `models`"})

    @field_validator("skill")
    @classmethod
    def _skill(cls, v: str) -> str:
        if not SKILL_RE.match(v):
            raise ValueError(f"{v!r} is not a valid skill (a lower-case letter, then up to 31 lower-case letters, digits, - or _)")
        return v

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        if any(not k.strip() for k in v):
            raise ValueError("a keyword is empty")
        return v


class AutogenSpec(BaseModel):
    """Options of the AutoGen team that rank 0 runs when `engine = "autogen"`."""

    model_config = TYPED

    stop_text: str | None = Field(default=None, min_length=1, json_schema_extra={"fix": "a word whose mention by any expert ends the conversation after that round, e.g. \"TERMINATE\""})
    stream: bool = Field(default=True, json_schema_extra={"fix": "true: the experts stream their tokens back over MPI as they generate"})
    instruction: str = Field(default="Answer in two or three sentences.", json_schema_extra={"fix": "the line added to every request, e.g. \"Answer in one sentence.\""})


MEMORY_POLICIES = ("drop-oldest", "compress", "blackboard")


class MemorySpec(BaseModel):
    """What the experts keep when their history outgrows their context, and what outlives the run."""

    model_config = TYPED

    policy: Literal["drop-oldest", "compress", "blackboard"] = Field(default="drop-oldest", json_schema_extra={"fix": "\"drop-oldest\" (older turns are left out), \"compress\" (folded into a summary and key facts) or \"blackboard\" (compress, and a shared blackboard on rank 0)"})
    summary_tokens: int = Field(default=96, ge=16, le=1024, json_schema_extra={"fix": "the rolling summary's length in tokens, e.g. 96"})
    facts_tokens: int = Field(default=160, ge=0, le=4096, json_schema_extra={"fix": "tokens of key facts kept verbatim, e.g. 160"})
    remind_facts: int = Field(default=2, ge=0, le=16, json_schema_extra={"fix": "how many key facts are restated beside the newest message, e.g. 2 (0: none)"})
    n_ctx_max: int | None = Field(default=None, ge=256, le=131072, json_schema_extra={"fix": "the largest context an expert may grow to, a multiple of 256, e.g. 4096"})
    context_budget_mb: float | None = Field(default=None, gt=0, le=1_048_576, json_schema_extra={"fix": "the most memory (MB) an expert's KV cache may take, e.g. 256"})
    blackboard_tokens: int = Field(default=256, ge=32, le=8192, json_schema_extra={"fix": "the blackboard's budget in tokens, e.g. 256"})
    store: str | None = Field(default=None, min_length=1, json_schema_extra={"fix": "a folder for facts that outlive the run, e.g. store = \"memory\" (relative to the spec's folder)"})
    recall: int = Field(default=5, ge=0, le=100, json_schema_extra={"fix": "how many facts from the store go into the experts' prompts, e.g. 5"})
    retriever: Literal["embedding", "bm25"] = Field(default="embedding", json_schema_extra={"fix": "\"embedding\" (the facts nearest the task in meaning, by the bundled minilm; BM25 where it is not installed) or \"bm25\" (the facts that share the most words with the task)"})
    learn: bool = Field(default=True, json_schema_extra={"fix": "true: the final answer (and the blackboard) are added to the store at the end of a run"})

    @field_validator("n_ctx_max")
    @classmethod
    def _n_ctx_max(cls, v: int | None) -> int | None:
        if v is not None and v % 256:
            raise ValueError(f"n_ctx_max {v} is not a multiple of 256 (contexts grow in steps of 256)")
        return v

    @property
    def compresses(self) -> bool:
        return self.policy in ("compress", "blackboard")

    def store_path(self, spec_dir: Path) -> Path | None:
        """The store's folder (a relative path starts at the spec's folder), or None without one."""
        if self.store is None:
            return None
        path = Path(self.store).expanduser()
        return path if path.is_absolute() else Path(spec_dir) / path


class KnowledgeSpec(BaseModel):
    """Retrieval: the indexes (made by `swarm-hpc index build`) whose passages the experts read, and how many."""

    model_config = TYPED

    index: str | None = Field(default=None, min_length=1, json_schema_extra={"fix": "an index folder made by `swarm-hpc index build DIR --out PATH`, e.g. index = \"docs.index\" (relative to the spec's folder)"})
    collections: dict[str, str] = Field(default_factory=dict, json_schema_extra={"fix": "named indexes that experts choose with `collection`, e.g. [knowledge.collections] hardware = \"hw.index\""})
    top_k: int = Field(default=4, ge=1, le=50, json_schema_extra={"fix": "how many passages an expert is given, e.g. top_k = 4"})
    min_score: float = Field(default=0.0, ge=-1.0, le=1.0, json_schema_extra={"fix": "the lowest cosine similarity a passage may have to be given, from -1 to 1, e.g. 0.2"})

    @field_validator("collections")
    @classmethod
    def _collections(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not NAME_RE.match(name):
                raise ValueError(f"collection name {name!r} is not a letter followed by up to 31 letters, digits, - or _")
            if not path.strip():
                raise ValueError(f"collection {name!r} has an empty index path")
        return v

    @property
    def enabled(self) -> bool:
        return self.index is not None or bool(self.collections)

    def index_for(self, expert: ExpertSpec) -> str | None:
        """The index an expert reads: its collection's, else the default `index` (None: it reads nothing)."""
        return self.collections[expert.collection] if expert.collection is not None else self.index

    def index_paths(self, spec_dir: Path) -> dict[str, Path]:
        """{collection name (\"\" for `index`): folder}, relative paths starting at the spec's folder."""
        named = {"": self.index} if self.index is not None else {}
        out = {}
        for name, ref in {**named, **self.collections}.items():
            path = Path(ref).expanduser()
            out[name] = path if path.is_absolute() else Path(spec_dir) / path
        return out


class RouterSpec(BaseModel):
    """A learned router (trained by `swarm-hpc fed run` on router records): it gives a request a skill, and the
    experts with that skill answer; below `min_confidence`, the [[routes]] keyword rules decide as before."""

    model_config = TYPED

    model: str = Field(min_length=1, json_schema_extra={"fix": "the model.npz of a federated router run, or its run directory, e.g. model = \"runs/fed-router/model.npz\" (relative to the spec's folder)"})
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0, json_schema_extra={"fix": "the lowest probability at which the router's choice counts, from 0 to 1, e.g. 0.5"})


class SwarmSpec(BaseModel):
    """A whole swarm: the task, the experts, how they talk and where results go."""

    model_config = TYPED

    task: str = Field(min_length=1, json_schema_extra={"fix": "task = \"the question the swarm works on\""})
    strategy: Literal["debate", "vote", "moa", "round-robin", "self-consistency", "verify", "program"] = Field(json_schema_extra={"fix": "one of " + ", ".join(STRATEGIES)})
    rounds: int = Field(ge=1, le=100, json_schema_extra={"fix": "rounds = 2"})
    round_timeout: float = Field(default=300.0, gt=0, le=86400, json_schema_extra={"fix": "seconds a round may take, e.g. 120 (at most a day: 86400)"})
    rank0_hosts_expert: bool = Field(default=True, json_schema_extra={"fix": "true: rank 0 also hosts the first expert; false: rank 0 only coordinates"})
    output_dir: str = Field(default="runs", json_schema_extra={"fix": "a folder for run directories"})
    synthesizer: str | None = Field(default=None, json_schema_extra={"fix": "the name of the expert who writes the final answer"})
    final: Literal["synthesis", "vote"] = Field(default="synthesis", json_schema_extra={"fix": "\"synthesis\" (the synthesizer writes the final answer) or \"vote\" (the last round's answers are voted on)"})
    instruction: str | None = Field(default=None, min_length=1, json_schema_extra={"fix": "the line that asks each expert for its answer, e.g. \"Think step by step, then end with a line 'Answer: <your answer>'.\""})
    experts: list[ExpertSpec] = Field(json_schema_extra={"fix": "add at least one [[experts]] table"})
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    engine: Literal["native", "autogen"] = Field(default="native", json_schema_extra={"fix": "\"native\" (the strategy loop) or \"autogen\" (an AutoGen AgentChat team on rank 0)"})
    autogen: AutogenSpec = Field(default_factory=AutogenSpec)
    routes: list[RouteSpec] = Field(default_factory=list, json_schema_extra={"fix": "each route's skill must be in some expert's `skills`, and its model in the `model` or `models` of every expert with that skill"})
    router: RouterSpec | None = Field(default=None, json_schema_extra={"fix": "a [router] table with model = \"PATH\" (a trained router)"})
    memory: MemorySpec = Field(default_factory=MemorySpec)
    knowledge: KnowledgeSpec = Field(default_factory=KnowledgeSpec, validate_default=True)
    batch_experts: bool | None = Field(default=None, json_schema_extra={"fix": "true: experts that use the same model share a rank and generate as one batch; false: one expert per rank; leave it out for automatic (batched on one node, one per rank when [slurm] sets nodes or ntasks_per_node)"})

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

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str, info: ValidationInfo) -> str:
        if v == "autogen":
            for e in info.data.get("experts") or []:
                if not e.name.isidentifier():
                    raise ValueError(f"engine \"autogen\" needs expert names that are Python identifiers (AutoGen "
                                     f"agent names), and {e.name!r} is not one: use _ instead of -")
        return v

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[RouteSpec], info: ValidationInfo) -> list[RouteSpec]:
        experts = info.data.get("experts")
        if not experts:
            return v
        for i, r in enumerate(v):
            skilled = [e for e in experts if r.skill in e.skills]
            if not skilled:
                raise ValueError(f"route {i + 1} (skill {r.skill!r}): no expert has that skill; add it to some "
                                 "expert's `skills`")
            if r.model is not None:
                lacking = [e.name for e in skilled if r.model not in e.served_models]
                if lacking:
                    raise ValueError(f"route {i + 1} (skill {r.skill!r}): expert {lacking[0]!r} has the skill but does "
                                     f"not serve model {r.model!r}; add it to that expert's `models`")
        return v

    @field_validator("knowledge")
    @classmethod
    def _knowledge(cls, v: KnowledgeSpec, info: ValidationInfo) -> KnowledgeSpec:
        for e in info.data.get("experts") or []:
            if e.collection is None:
                continue
            if not v.collections:
                raise ValueError(f"expert {e.name!r} reads collection {e.collection!r}, but there is no "
                                 "[knowledge.collections] table; add one that names it, e.g. "
                                 f"[knowledge.collections] {e.collection} = \"{e.collection}.index\"")
            if e.collection not in v.collections:
                raise ValueError(f"expert {e.name!r} reads collection {e.collection!r}, which "
                                 f"[knowledge.collections] does not name (it names {', '.join(v.collections)})")
        return v

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
    def batches(self) -> bool:
        """Whether experts that share a model share a rank: `batch_experts`, or by default when the swarm runs on
        one node and [slurm] does not place the tasks itself (across nodes, one expert per rank spreads them over
        the boards)."""
        if self.batch_experts is not None:
            return self.batch_experts
        return (self.slurm.nodes or 1) == 1 and self.slurm.ntasks_per_node is None

    def rank_groups(self) -> list[list[str]]:
        """The experts each expert rank hosts, in rank order (rank 0's first when it hosts one). Experts with the
        same model and chat format share a rank and decode as one batch (swarm_hpc/experts/group.py) when
        `batches`; the first expert stays alone on rank 0, and so do experts that switch models. With a growing
        context (memory.n_ctx_max) every expert keeps its own rank."""
        experts = list(self.experts)
        groups: list[list[str]] = []
        if self.rank0_hosts_expert:
            groups.append([experts.pop(0).name])
        if not self.batches or self.memory.n_ctx_max is not None:
            return groups + [[e.name] for e in experts]
        shared: dict[tuple[str, str | None], list[str]] = {}
        for e in experts:
            if e.switches_models:
                groups.append([e.name])
            else:
                key = (e.model, e.chat_format)
                if key not in shared:
                    shared[key] = []
                    groups.append(shared[key])
                shared[key].append(e.name)
        return groups

    def rank_threads(self, group: list[str]) -> int:
        """llama.cpp threads of the rank that hosts `group`: its experts' together (a batch uses them all)."""
        return sum(self.expert(n).threads for n in group)

    @property
    def ranks_needed(self) -> int:
        return len(self.rank_groups()) + (0 if self.rank0_hosts_expert else 1)


def parse_spec(data: dict[str, Any], where: str) -> SwarmSpec:
    return validate_model(data, SwarmSpec, where)


def load_spec(path: str | Path) -> SwarmSpec:
    """Read and validate a spec file (structure only; `check_models` checks the files it names)."""
    path = Path(path)
    if path.suffix != ".toml":
        raise UserError(str(path), "a swarm spec must be a .toml file", "give the path of a spec such as jobs/examples/debate.toml")
    return parse_spec(read_toml(path), str(path))
