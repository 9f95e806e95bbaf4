"""A service folder: what `swarm-hpc serve` hands to rank 0, and what rank 0 says back once it listens.

    <out>/serve-<YYYYmmdd-HHMMSS>-<spec>-<4 hex>/   (a SLURM service job: <out>/slurm-<jobid>-<spec>/)
        spec.json        the validated spec (the snapshot a run directory has)
        serve.json       how to serve: host, port, queue and request bounds (ServeConfig), written by the CLI
        api-key          the generated API key, mode 0600 (not written when SWARM_HPC_API_KEY is set)
        service.json     written by rank 0 once it listens: url, key file, node, pid, status (ServiceInfo);
                         `swarm-hpc status` and the CLI read it
        requests/        one ordinary run directory per request (`swarm-hpc show` reads them)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from pydantic import BaseModel, Field

from swarm_hpc.atomic import atomic_write_json

CONFIG = "serve.json"
INFO = "service.json"
KEY_FILE = "api-key"
REQUESTS = "requests"
KEY_ENV = "SWARM_HPC_API_KEY"
LOCALHOST = "127.0.0.1"
NODE_ADDRESS = "node"   # host: the node's own address (a SLURM service job: what the cluster can reach)


class ServeConfig(BaseModel):
    """serve.json: what the CLI decided, read by rank 0."""

    model: str                                   # the swarm's model id: the spec file's name without .toml
    host: str = LOCALHOST
    port: int = Field(default=8000, ge=0, le=65535)      # 0: any free port (service.json says which)
    queue: int = Field(default=8, ge=1, le=10_000)       # requests that may wait; one more is 429
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_messages: int = Field(default=64, ge=1)
    max_tokens: int = Field(default=4096, ge=1)          # the most a request may ask for (experts keep their own cap too)


class ServiceInfo(BaseModel):
    """service.json: where the running service listens."""

    url: str
    key_file: str | None                         # None: the key is $SWARM_HPC_API_KEY
    node: str
    pid: int
    status: str                                  # listening | stopped | cancelled
    started: float
    models: list[str]
    job_id: str | None = None


def write_key(folder: Path) -> Path | None:
    """The API key file (mode 0600 from the start, never readable by others), or None when $SWARM_HPC_API_KEY
    is set. A key file already there (a requeued job) is kept."""
    if os.environ.get(KEY_ENV):
        return None
    path = folder / KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def read_key(folder: Path) -> str:
    """The key a request must bring: $SWARM_HPC_API_KEY, else the key file's."""
    key = os.environ.get(KEY_ENV)
    if key:
        return key
    return (folder / KEY_FILE).read_text(encoding="ascii").strip()


def write_config(folder: Path, config: ServeConfig) -> None:
    atomic_write_json(folder / CONFIG, config.model_dump(mode="json"))


def read_config(folder: Path) -> ServeConfig:
    return ServeConfig.model_validate_json((folder / CONFIG).read_text(encoding="utf-8"))


def write_info(folder: Path, info: ServiceInfo) -> None:
    atomic_write_json(folder / INFO, info.model_dump(mode="json"))


def read_info(folder: Path) -> ServiceInfo | None:
    try:
        return ServiceInfo.model_validate(json.loads((Path(folder) / INFO).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def bind_host(host: str) -> str:
    """The address to listen on: `node` is this node's own address (SLURMD_NODENAME's, else the host name's), so
    the rest of the cluster can reach a service job; anything else as given."""
    if host != NODE_ADDRESS:
        return host
    name = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return LOCALHOST


def url_host(host: str) -> str:
    """The host part of the service's URL: a wildcard address is the node's name."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def folder_for(base: Path, stem: str) -> Path:
    """A new service folder's path (made with the spec snapshot by core/rundir.create_run_dir)."""
    return base / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{stem}-{secrets.token_hex(2)}"
