"""The federated run directory, written by rank 0 only:

    spec.json          the validated spec (clients as run)
    data/              client-K.npz (client rank K's shard), test.npz (the server's held-out test set)
    centralised.json   the same model trained on all the clients' data at once, on the same test set
    rounds.jsonl       one record per finished round, appended, flushed and fsync'd
    checkpoint.npz     the global model (and the strategy's state) after the last finished round, atomic
    summary.json       rounds, final_accuracy, centralised_accuracy, ... (atomic, after every round)
    accuracy.png       accuracy per round, with the centralised line

A round's record is fsync'd before its checkpoint is replaced; on resume, records after the checkpoint's round
are dropped and that round is run again (clients draw the same minibatches: the round is in their seed)."""

from __future__ import annotations

import fcntl
import io
import json
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from swarm_hpc.atomic import atomic_write_bytes, atomic_write_json
from swarm_hpc.core.routing import ROUTER_FILE
from swarm_hpc.errors import UserError
from swarm_hpc.fed.data import Meta

ROUNDS, CHECKPOINT, SUMMARY, CENTRAL, SPEC, PNG, LOCK = ("rounds.jsonl", "checkpoint.npz", "summary.json",
                                                        "centralised.json", "spec.json", "accuracy.png", ".lock")
MODEL = ROUTER_FILE   # the trained model, written when the run completes (a router's is a swarm's [router])


def lock(run_dir: Path) -> IO[bytes]:
    """Rank 0's hold on the run directory for the whole job (flock, let go when the process ends, even by
    SIGKILL): a second `--resume` of a run still going is one line, never a second writer."""
    f = open(Path(run_dir) / LOCK, "ab")  # noqa: SIM115  (held open: the lock is the open file)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(str(run_dir), "another job is running this run right now",
                        "wait for it to end (or end it), then resume") from None
    return f


def shard_path(run_dir: Path, client: int) -> Path:
    return Path(run_dir) / "data" / f"client-{client}.npz"


def test_path(run_dir: Path) -> Path:
    return Path(run_dir) / "data" / "test.npz"


def append_round(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / ROUNDS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """Finished rounds' records (a torn last line is not a record)."""
    path = Path(run_dir) / ROUNDS
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if isinstance(rec, dict):
            out.append(rec)
    return out


def keep_rounds_upto(run_dir: Path, last: int) -> None:
    """rounds.jsonl without the records after round `last` (written before a crash, after the checkpoint)."""
    recs = [r for r in read_rounds(run_dir) if r.get("round", 0) <= last]
    atomic_write_bytes(Path(run_dir) / ROUNDS, "".join(json.dumps(r) + "\n" for r in recs).encode())


def save_checkpoint(run_dir: Path, round_: int, params: np.ndarray, state: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {"round": np.int64(round_), "params": params, **state}
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buf.getvalue())


def save_model(run_dir: Path, params: list[np.ndarray], meta: Meta) -> Path:
    """The trained model (MODEL): its arrays p0, p1, ... and what it means: the class names, the feature count
    and, for the router, the embedding model its features come from (read by fed/router.py)."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {f"p{i}": p for i, p in enumerate(params)}
    np.savez(buf, **arrays, classes=np.array(meta.classes), features=np.int64(meta.features),
             dataset=np.array(meta.dataset), embedding_model=np.array(meta.embedding_model or ""))
    path = Path(run_dir) / MODEL
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(run_dir: Path) -> tuple[int, np.ndarray, dict[str, np.ndarray]] | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            state = {k: np.asarray(z[k]) for k in z.files if k not in ("round", "params")}
            return int(z["round"]), np.asarray(z["params"], np.float64), state
    except (OSError, ValueError, KeyError) as e:
        raise UserError(str(path), f"checkpoint cannot be read ({e})", "start a new run") from None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, summary)
