"""The federated job's spec: a TOML file validated into `FedSpec` (unknown fields and bad values are one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from swarm_hpc.core.spec import SlurmSpec
from swarm_hpc.core.tomlfile import STRICT, load_toml_model


class FedSpec(BaseModel):
    model_config = STRICT

    name: str = Field("fed", min_length=1, max_length=64)
    dataset: Literal["digits", "router"] = Field("digits", json_schema_extra={
        "fix": "`digits` (scikit-learn's) or `router` (requests and skills from `records`)"})
    records: str | None = Field(None, min_length=1, json_schema_extra={
        "fix": "the router's JSONL records, e.g. records = \"router-records.jsonl\" (relative to the spec's folder)"})
    embedding_model: str = Field("minilm", min_length=1, json_schema_extra={
        "fix": "the frozen embedding model the router learns on: `minilm` or an embedding GGUF path"})
    clients: int = Field(4, ge=1, le=256, json_schema_extra={"fix": "1 to 256 clients (one MPI rank each, plus the server)"})
    rounds: int = Field(30, ge=1, le=100000)
    dirichlet_alpha: float = Field(0.5, gt=0, json_schema_extra={
        "fix": "a positive number: 0.1 is very non-IID (a client sees few classes), 100 nearly IID"})
    seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.25, gt=0, lt=1, json_schema_extra={"fix": "a fraction, e.g. 0.25"})
    model: Literal["softmax", "mlp"] = Field("softmax", json_schema_extra={"fix": "`softmax` or `mlp`"})
    hidden: int = Field(32, ge=1, le=4096, json_schema_extra={"fix": "hidden units of the mlp, e.g. 32"})
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field("fedavg", json_schema_extra={
        "fix": "`fedavg`, `fedprox` (non-IID: a proximal term) or `fedadam` (non-IID: server-side Adam)"})
    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=100000)
    lr: float = Field(0.1, gt=0, le=10, json_schema_extra={"fix": "the clients' SGD step, e.g. 0.1"})
    proximal_mu: float = Field(0.01, ge=0, json_schema_extra={"fix": "FedProx's mu, e.g. 0.01"})
    server_lr: float = Field(0.05, gt=0, le=10, json_schema_extra={"fix": "FedAdam's server step, e.g. 0.05"})
    centralised_epochs: int = Field(100, ge=1, le=100000, json_schema_extra={
        "fix": "epochs of the centralised baseline over all the clients' data, e.g. 100"})
    round_timeout: float = Field(30.0, gt=0, le=86400, json_schema_extra={
        "fix": "seconds a client has to send its update, e.g. 30"})
    output_dir: str = "runs"
    slurm: SlurmSpec = Field(default_factory=SlurmSpec, json_schema_extra={
        "fix": "a [slurm] table as in a swarm spec (partition, nodes, time, mem_per_cpu, ...)"})

    @model_validator(mode="after")
    def _records(self) -> FedSpec:
        if self.dataset == "router" and self.records is None:
            raise ValueError("dataset \"router\" needs `records`, the JSONL file of requests and skills")
        return self

    @property
    def ranks_needed(self) -> int:
        return self.clients + 1


def load_fed_spec(path: Path) -> FedSpec:
    return load_toml_model(Path(path), FedSpec)
