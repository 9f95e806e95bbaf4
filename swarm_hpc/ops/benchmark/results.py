"""The typed records that cross process boundaries: what `measure` returns and what each task writes (JSON)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarm_hpc.ops.benchmark.config import ModelRun

OK = "ok"
ERROR = "error"


@dataclass(frozen=True)
class RepResult:
    """One repetition: a fresh load, one prompt, one generation."""

    load_s: float
    prompt_tokens: int        # tokens llama.cpp evaluated for the prompt
    prompt_tok_s: float
    gen_tokens: int           # tokens llama.cpp evaluated while generating
    gen_tok_s: float


@dataclass(frozen=True)
class ProbeAnswer:
    question: str
    expected: list[str]
    answer: str
    correct: bool


@dataclass(frozen=True)
class Measurement:
    """What one model process measured (measure.py)."""

    reps: list[RepResult]
    probe: list[ProbeAnswer]
    n_ctx: int                # the context size llama.cpp used
    chat_format: str          # the template the probe used: "model", "plain" or "chatml"
    arch: str                 # general.architecture of the GGUF
    peak_rss_bytes: int       # VmHWM of the model process
    seconds: float

    @property
    def probe_accuracy(self) -> float:
        return sum(a.correct for a in self.probe) / len(self.probe) if self.probe else 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        return cls(reps=[RepResult(**r) for r in d["reps"]], probe=[ProbeAnswer(**p) for p in d["probe"]],
                   **{k: v for k, v in d.items() if k not in ("reps", "probe")})


@dataclass(frozen=True)
class ModelResult:
    """One task's result: one model on one node, measured or failed. Written as raw/<index>-<name>-<node>.json."""

    index: int
    run: ModelRun
    node: str
    status: str               # ok | error
    error: str = ""
    model_path: str = ""
    model_bytes: int = 0
    bandwidth_bytes_s: float = 0.0     # the node's copy bandwidth, measured with `run.threads` threads
    measurement: Measurement | None = None
    max_rss_bytes: int = 0             # the model process's ru_maxrss (seen by its parent, also after a crash)
    seconds: float = 0.0
    started: str = ""
    cpu: str = ""
    slurm_job: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.measurement is not None:
            d["measurement"]["probe_accuracy"] = self.measurement.probe_accuracy
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        d = dict(d)
        d["run"] = ModelRun.from_dict(d["run"])
        m = d.get("measurement")
        if m is not None:
            m = {k: v for k, v in m.items() if k != "probe_accuracy"}
            d["measurement"] = Measurement.from_dict(m)
        return cls(**d)

    @classmethod
    def read(cls, path: Path) -> ModelResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    # --- derived figures -----------------------------------------------------------------------------------

    def values(self, key: str) -> list[float]:
        if self.measurement is None:
            return []
        return [float(getattr(r, key)) for r in self.measurement.reps]

    @property
    def bandwidth_ratio(self) -> list[float]:
        """Per repetition: generation tok/s x model bytes / bandwidth (1.0 = the memory-bandwidth bound)."""
        if not self.bandwidth_bytes_s:
            return []
        return [v * self.model_bytes / self.bandwidth_bytes_s for v in self.values("gen_tok_s")]

    @property
    def peak_bytes(self) -> int:
        if self.measurement is not None and self.measurement.peak_rss_bytes:
            return self.measurement.peak_rss_bytes
        return self.max_rss_bytes


@dataclass(frozen=True)
class Stat:
    """Median and spread of a few repetitions."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    @property
    def spread_pct(self) -> float:
        """Half the range, as a percentage of the median."""
        return 50.0 * (self.max - self.min) / self.median if self.median else 0.0
