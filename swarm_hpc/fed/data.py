"""A federated run's data: examples as feature vectors with integer classes, a seeded held-out test set and a
non-IID split of the rest into client shards (a Dirichlet(alpha) draw per class, or the records' own nodes).
Data sets: scikit-learn's digits (shipped inside the package, no download), and the router's records
(router_records.py: requests embedded with MiniLM, labelled with the skill that should take them).

Shards are files: `data/client-K.npz` is read by client rank K only; `data/test.npz` by the server only;
`data/meta.json` names the classes and the number of features."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from swarm_hpc.atomic import atomic_write_bytes
from swarm_hpc.errors import UserError

DIGITS = [str(d) for d in range(10)]
META = "meta.json"


@dataclass(frozen=True)
class Shard:
    x: np.ndarray  # (n, features) float64 (digits: 64 pixels scaled to 0..1)
    y: np.ndarray  # (n,) int64 class numbers

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Meta:
    """What the ranks need to know of the data set to build the model: its class names and feature count, and
    for the router the embedding model that made the features."""

    dataset: str
    classes: list[str]
    features: int
    embedding_model: str | None = None


def write_meta(run_dir: Path, meta: Meta) -> None:
    atomic_write_bytes(Path(run_dir) / "data" / META, json.dumps(asdict(meta), indent=1).encode())


def read_meta(run_dir: Path) -> Meta:
    path = Path(run_dir) / "data" / META
    try:
        return Meta(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:  # a run made before meta.json: digits
        return Meta("digits", DIGITS, 64)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(str(path), f"cannot be read ({e})", "start a new run") from None


def load_digits() -> Shard:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise UserError("dataset digits", "scikit-learn is not installed",
                        "pip install 'swarm-hpc[fed]' (or scikit-learn)") from None
    d = sk_digits()
    return Shard(np.asarray(d.data, dtype=np.float64) / 16.0, np.asarray(d.target, dtype=np.int64))


def test_mask(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Which examples are held out: a seeded draw, stratified by class (so every class is in the test set)."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: max(1, round(len(idx) * test_fraction))].tolist())
    mask = np.zeros(len(y), bool)
    mask[test_idx] = True
    return mask


def train_test(data: Shard, test_fraction: float, seed: int) -> tuple[Shard, Shard]:
    mask = test_mask(data.y, test_fraction, seed)
    return Shard(data.x[~mask], data.y[~mask]), Shard(data.x[mask], data.y[mask])


def dirichlet_split(data: Shard, clients: int, alpha: float, seed: int, min_size: int = 10) -> list[Shard]:
    """Each class's examples go to the clients in proportions drawn from Dirichlet(alpha) (seeded): small alpha,
    few classes per client. Redrawn (up to 100 times) until every client has `min_size` examples."""
    rng = np.random.default_rng(seed + 1)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(data.y):
            idx = np.flatnonzero(data.y == c)
            rng.shuffle(idx)
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min(min_size, len(data) // clients):
            break
    rows = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    return [Shard(data.x[r], data.y[r]) for r in rows]


def split_by_group(data: Shard, groups: np.ndarray) -> list[Shard]:
    """One shard per distinct group (a record's node), in sorted group order."""
    return [Shard(data.x[groups == g], data.y[groups == g]) for g in np.unique(groups)]


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
