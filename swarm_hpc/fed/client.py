"""The client interface, in the shape of Flower's `NumPyClient` (flwr.client.NumPyClient), without Flower:

    get_parameters(config) -> list[np.ndarray]
    fit(parameters, config) -> (parameters, num_examples, metrics)
    evaluate(parameters, config) -> (loss, num_examples, metrics)

so a Flower client class runs on an MPI rank unchanged (its `context`, `to_client()` and gRPC are not used).
`DigitsClient` is the demo's: a numpy model trained on its own shard, which never leaves its rank.
`SWARM_HPC_FED_CLIENT_WRAPPER=module:function` wraps every client a rank builds (`function(client, rank)`
returns a client): how the tests inject faults from outside the product.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from swarm_hpc.fed import model
from swarm_hpc.fed.data import Shard

Config = dict[str, Any]
Metrics = dict[str, float]


@runtime_checkable
class NumPyClient(Protocol):
    def get_parameters(self, config: Config) -> list[np.ndarray]: ...

    def fit(self, parameters: list[np.ndarray], config: Config) -> tuple[list[np.ndarray], int, Metrics]: ...

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, Metrics]: ...


class DigitsClient:
    """A numpy softmax regression or MLP on one client's shard; stateless between rounds (resumable)."""

    def __init__(self, shard: Shard, initial: list[np.ndarray], seed: int):
        self.shard = shard
        self.initial = initial
        self.seed = seed

    def get_parameters(self, config: Config) -> list[np.ndarray]:
        return [p.copy() for p in self.initial]

    def fit(self, parameters: list[np.ndarray], config: Config) -> tuple[list[np.ndarray], int, Metrics]:
        # the round is in the seed: a round run again after a resume draws the same minibatches
        rng = np.random.default_rng([self.seed, int(config.get("client", 0)), int(config.get("round", 0))])
        mu = float(config.get("proximal_mu", 0.0))
        new = model.sgd(parameters, self.shard.x, self.shard.y, epochs=int(config["epochs"]),
                        batch_size=int(config["batch_size"]), lr=float(config["lr"]), rng=rng,
                        anchor=parameters if mu > 0 else None, mu=mu)
        loss, acc = model.loss_and_accuracy(new, self.shard.x, self.shard.y)
        return new, len(self.shard), {"train_loss": loss, "train_accuracy": acc}

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, Metrics]:
        loss, acc = model.loss_and_accuracy(parameters, self.shard.x, self.shard.y)
        return loss, len(self.shard), {"accuracy": acc}


def wrapped(client: NumPyClient, rank: int) -> NumPyClient:
    wrapper = os.environ.get("SWARM_HPC_FED_CLIENT_WRAPPER", "")
    if not wrapper:
        return client
    module, _, function = wrapper.partition(":")
    out: NumPyClient = getattr(importlib.import_module(module), function)(client, rank)
    return out
