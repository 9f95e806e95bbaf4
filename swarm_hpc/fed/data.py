"""The demo's data: scikit-learn's digits (shipped inside the package, no download), a seeded held-out test set
and a non-IID split of the rest into client shards by a Dirichlet(alpha) draw per class.

Shards are files: `data/client-K.npz` is read by client rank K only; `data/test.npz` by the server only."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swarm_hpc.atomic import atomic_write_bytes
from swarm_hpc.errors import UserError

N_CLASSES = 10


@dataclass(frozen=True)
class Shard:
    x: np.ndarray  # (n, 64) float64, scaled to 0..1
    y: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.y)


def load_digits() -> Shard:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise UserError("dataset digits", "scikit-learn is not installed",
                        "pip install 'swarm-hpc[fed]' (or scikit-learn)") from None
    d = sk_digits()
    return Shard(np.asarray(d.data, dtype=np.float64) / 16.0, np.asarray(d.target, dtype=np.int64))


def train_test(data: Shard, test_fraction: float, seed: int) -> tuple[Shard, Shard]:
    """A seeded split, stratified by class (so every class is in the test set)."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(data.y == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: max(1, round(len(idx) * test_fraction))].tolist())
    mask = np.zeros(len(data), bool)
    mask[test_idx] = True
    return Shard(data.x[~mask], data.y[~mask]), Shard(data.x[mask], data.y[mask])


def dirichlet_split(data: Shard, clients: int, alpha: float, seed: int, min_size: int = 10) -> list[Shard]:
    """Each class's examples go to the clients in proportions drawn from Dirichlet(alpha) (seeded): small alpha,
    few classes per client. Redrawn (up to 100 times) until every client has `min_size` examples."""
    rng = np.random.default_rng(seed + 1)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in range(N_CLASSES):
            idx = np.flatnonzero(data.y == c)
            rng.shuffle(idx)
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min(min_size, len(data) // clients):
            break
    rows = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    return [Shard(data.x[r], data.y[r]) for r in rows]


def write_shard(path: Path, shard: Shard) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=shard.x, y=shard.y)
    atomic_write_bytes(path, buf.getvalue())


def read_shard(path: Path) -> Shard:
    """A shard file; missing or damaged is a UserError naming it."""
    try:
        with np.load(path) as z:
            x, y = np.asarray(z["x"], np.float64), np.asarray(z["y"], np.int64)
    except FileNotFoundError:
        raise UserError(str(path), "data shard is missing", "restore it, or start a new run") from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(str(path), f"data shard cannot be read ({e})", "restore it, or start a new run") from None
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise UserError(str(path), f"data shard has shapes x{x.shape} y{y.shape}", "restore it, or start a new run")
    return Shard(x, y)
