"""Faults injected into federated clients from outside the product: `SWARM_HPC_FED_CLIENT_WRAPPER=fed_faults:wrap`
wraps every client a rank builds (swarm_hpc/fed/client.py). Each variable is a comma-separated list:

    SWARM_HPC_FED_TEST_RAISE=RANK:ROUND          fit() raises RuntimeError
    SWARM_HPC_FED_TEST_SLOW=RANK:ROUND:SECONDS   fit() sleeps first
    SWARM_HPC_FED_TEST_STOP=RANK:ROUND           the rank stops itself (SIGSTOP) in fit(): hung for good
    SWARM_HPC_FED_TEST_NAN=RANK:ROUND            fit() returns parameters with a NaN in them
    SWARM_HPC_FED_TEST_SHAPE=RANK:ROUND          fit() returns its last array one number short
    SWARM_HPC_FED_TEST_MODEL=RANK                get_parameters() gives a model one number bigger
    SWARM_HPC_FED_TEST_PAUSE=SECONDS             every fit() sleeps (a run slow enough to kill mid-way)
    SWARM_HPC_FED_TEST_DUMP=DIR                  every round's parameters in (in-R-K.npy) and out (out-R-K.npy, n-R-K)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np


def _pairs(name: str) -> list[list[str]]:
    return [item.split(":") for item in os.environ.get(name, "").split(",") if item]


def _hit(name: str, rank: int, round_: int) -> list[str] | None:
    return next((p for p in _pairs(name) if int(p[0]) == rank and int(p[1]) == round_), None)


class FaultyClient:
    def __init__(self, inner, rank: int):
        self.inner, self.rank = inner, rank

    def get_parameters(self, config):
        params = self.inner.get_parameters(config)
        if any(int(p[0]) == self.rank for p in _pairs("SWARM_HPC_FED_TEST_MODEL")):
            params = [*params[:-1], np.zeros(params[-1].size + 1)]
        return params

    def evaluate(self, parameters, config):
        return self.inner.evaluate(parameters, config)

    def fit(self, parameters, config):
        r = int(config["round"])
        dump = os.environ.get("SWARM_HPC_FED_TEST_DUMP")
        if dump:
            np.save(Path(dump) / f"in-{r}-{self.rank}.npy", np.concatenate([p.ravel() for p in parameters]))
        if os.environ.get("SWARM_HPC_FED_TEST_PAUSE"):
            time.sleep(float(os.environ["SWARM_HPC_FED_TEST_PAUSE"]))
        slow = _hit("SWARM_HPC_FED_TEST_SLOW", self.rank, r)
        if slow:
            time.sleep(float(slow[2]))
        if _hit("SWARM_HPC_FED_TEST_STOP", self.rank, r):
            os.kill(os.getpid(), signal.SIGSTOP)
        if _hit("SWARM_HPC_FED_TEST_RAISE", self.rank, r):
            raise RuntimeError(f"injected fault in round {r}")
        params, n, metrics = self.inner.fit(parameters, config)
        if _hit("SWARM_HPC_FED_TEST_NAN", self.rank, r):
            params[0][0, 0] = np.nan
        if _hit("SWARM_HPC_FED_TEST_SHAPE", self.rank, r):
            params[-1] = params[-1][:-1]
        if dump:
            np.save(Path(dump) / f"out-{r}-{self.rank}.npy", np.concatenate([p.ravel() for p in params]))
            (Path(dump) / f"n-{r}-{self.rank}").write_text(str(n))
        return params, n, metrics


def wrap(client, rank: int):
    return FaultyClient(client, rank)
