"""A client written the way Flower's NumPyClient examples are (flwr.client.NumPyClient's three methods, float32
arrays, its own metric names, its own numpy training), with no swarm_hpc import: a stand-in for "Flower client
code". `SWARM_HPC_FED_CLIENT_WRAPPER=flower_style:wrap` puts it on every client rank, on that rank's shard."""

from __future__ import annotations

import numpy as np


class FlowerStyleClient:  # class FlowerStyleClient(fl.client.NumPyClient) in a Flower project
    def __init__(self, x, y):
        self.x, self.y = x.astype(np.float32), y
        self.weights = [np.zeros((x.shape[1], 10), np.float32), np.zeros(10, np.float32)]

    def get_parameters(self, config):
        return self.weights

    def _probs(self, parameters):
        z = self.x @ parameters[0] + parameters[1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def fit(self, parameters, config):
        w, b = (np.asarray(p, np.float32) for p in parameters)
        for _ in range(5):  # five full-batch gradient steps
            d = self._probs([w, b])
            d[np.arange(len(self.y)), self.y] -= 1
            w, b = w - 0.5 * self.x.T @ d / len(self.y), b - 0.5 * d.mean(axis=0)
        return [w, b], len(self.x), {"acc": float(np.mean(self._probs([w, b]).argmax(1) == self.y))}

    def evaluate(self, parameters, config):
        p = self._probs([np.asarray(a, np.float32) for a in parameters])
        loss = float(-np.mean(np.log(p[np.arange(len(self.y)), self.y] + 1e-7)))
        return loss, len(self.x), {"accuracy": float(np.mean(p.argmax(1) == self.y))}


def wrap(client, rank: int):
    return FlowerStyleClient(client.shard.x, client.shard.y)
