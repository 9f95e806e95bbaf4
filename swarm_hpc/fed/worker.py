"""A client rank's loop: wait for a round's global model from rank 0, run the NumPyClient's evaluate() and fit()
on it, send back one flat buffer (header + parameters, wire.py). A rank that fell behind (a slow fit) answers
only the newest round it has been sent; its late replies are drained and ignored by the server. A client that
raises, or returns parameters of other shapes, sends its error instead of parameters: it is left out of that
round and takes part in the next."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from swarm_hpc.doorbell import Backoff, Doorbell
from swarm_hpc.fed import model, wire
from swarm_hpc.fed.client import NumPyClient
from swarm_hpc.fed.spec import FedSpec
from swarm_hpc.fed.strategy import fit_config


def serve(comm: Any, client: NumPyClient, shapes: list[tuple[int, ...]], spec: FedSpec, bell: Doorbell) -> None:
    from mpi4py import MPI

    rank = comm.Get_rank()
    n = sum(int(np.prod(s)) for s in shapes)
    inbox = np.empty(n, np.float64)
    one = np.zeros(1, np.float64)
    status = MPI.Status()
    backoff = Backoff(bell.cap)
    while True:
        while not comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
            if bell.wait(backoff.next()):
                backoff.reset()
        backoff.reset()
        newest: tuple[int, np.ndarray] | None = None
        stop = False
        while comm.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):  # everything queued: answer only the newest
            tag = status.Get_tag()
            if tag == wire.STOP:
                comm.Recv([one, MPI.DOUBLE], source=0, tag=tag)
                stop = True
            else:
                comm.Recv([inbox, MPI.DOUBLE], source=0, tag=tag)
                newest = (wire.round_of(tag), inbox.copy())
        if stop:
            comm.Send([one, MPI.DOUBLE], dest=0, tag=wire.BYE)
            bell.ring(0)
            bell.close()
            return
        if newest is not None:
            r, flat = newest
            out, error = one_round(client, shapes, flat, fit_config(spec, r, rank))
            if error is not None:
                comm.Send([np.frombuffer(error.encode("utf-8", "replace")[:2000], np.uint8), MPI.BYTE],
                          dest=0, tag=wire.error_tag(r))
            comm.Send([out, MPI.DOUBLE], dest=0, tag=wire.model_tag(r))
            bell.ring(0)


def one_round(client: NumPyClient, shapes: list[tuple[int, ...]], flat: np.ndarray,
              config: dict[str, Any]) -> tuple[np.ndarray, str | None]:
    """The reply buffer, and the error text when the client failed (the buffer then carries no parameters)."""
    out = wire.reply(len(flat))
    t0 = time.monotonic()
    try:
        params = model.unflatten(flat, shapes)
        eval_loss, eval_n, eval_metrics = client.evaluate([p.copy() for p in params], config)
        new, num_examples, metrics = client.fit(params, config)
        got = [tuple(np.shape(p)) for p in new]
        if got != shapes:
            out[wire.STATUS] = wire.BAD_SHAPE
            return out, f"fit() returned parameters of shapes {got}, the model's are {shapes}"
        out[wire.HEADER:] = model.flatten(new)
    except Exception as e:
        out[wire.STATUS] = wire.RAISED
        return out, f"{type(e).__name__}: {e}"
    out[wire.STATUS] = wire.OK
    out[wire.NUM_EXAMPLES] = float(num_examples)
    out[wire.FIT_LOSS] = float(metrics.get("train_loss", np.nan))
    out[wire.FIT_ACC] = float(metrics.get("train_accuracy", np.nan))
    out[wire.EVAL_LOSS] = float(eval_loss)
    out[wire.EVAL_ACC] = float(eval_metrics.get("accuracy", np.nan))
    out[wire.EVAL_N] = float(eval_n)
    out[wire.FIT_SECONDS] = time.monotonic() - t0
    return out, None
