"""Server strategies on flat float64 vectors: FedAvg (the mean of the clients' parameters weighted by their
number of examples), FedProx (FedAvg's mean; the clients add a proximal term, through the fit config) and
FedAdam (Reddi et al. 2021: the weighted mean minus the global model is a pseudo-gradient for Adam on the
server). `check_update` rejects an update before it can be averaged in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarm_hpc.fed.spec import FedSpec


def check_update(vec: np.ndarray, n_params: int, num_examples: float) -> str | None:
    """Why an update must not be averaged in, or None."""
    if vec.shape != (n_params,):
        return f"parameter shape mismatch: {vec.shape[0] if vec.ndim == 1 else vec.shape} numbers, {n_params} expected"
    if not np.isfinite(num_examples) or num_examples <= 0 or num_examples != int(num_examples):
        return f"num_examples is {num_examples!r}, not a positive integer"
    bad = int(np.count_nonzero(~np.isfinite(vec)))
    if bad:
        return f"{bad} NaN/inf value(s) in the update"
    return None


def weighted_mean(updates: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """sum(n_k * w_k) / sum(n_k), in the order given (the server gives them by rank)."""
    total = sum(n for _, n in updates)
    acc = np.zeros_like(updates[0][0])
    for vec, n in updates:
        acc += n * vec
    return acc / total


@dataclass
class Strategy:
    name: str
    proximal_mu: float = 0.0
    server_lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)

    def fit_config(self) -> dict[str, Any]:
        return {"proximal_mu": self.proximal_mu if self.name == "fedprox" else 0.0}

    def aggregate(self, current: np.ndarray, updates: list[tuple[np.ndarray, int]]) -> np.ndarray:
        """The new global model; `current` when nobody took part."""
        if not updates:
            return current
        avg = weighted_mean(updates)
        if self.name != "fedadam":
            return avg
        delta = avg - current
        self.m = delta * (1 - self.beta1) if self.m is None else self.beta1 * self.m + (1 - self.beta1) * delta
        d2 = delta * delta
        self.v = d2 * (1 - self.beta2) if self.v is None else self.beta2 * self.v + (1 - self.beta2) * d2
        return current + self.server_lr * self.m / (np.sqrt(self.v) + self.tau)

    def state(self) -> dict[str, np.ndarray]:
        return {k: a for k, a in (("adam_m", self.m), ("adam_v", self.v)) if a is not None}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.m, self.v = state.get("adam_m"), state.get("adam_v")


def from_spec(spec: FedSpec) -> Strategy:
    return Strategy(spec.strategy, proximal_mu=spec.proximal_mu, server_lr=spec.server_lr)


def fit_config(spec: FedSpec, round_: int, client: int) -> dict[str, Any]:
    """What a client's fit() and evaluate() are given (Flower's `config`): the same on every rank, so nothing
    of it needs to travel."""
    return {"round": round_, "client": client, "epochs": spec.local_epochs, "batch_size": spec.batch_size,
            "lr": spec.lr, **from_spec(spec).fit_config()}
