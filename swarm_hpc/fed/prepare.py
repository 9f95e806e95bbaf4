"""A new federated run directory: the spec snapshot, the data shards (one file per client, the server's test set)
and the centralised baseline (the same model and optimiser on all the clients' data pooled, same test set)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import numpy as np

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.core.tomlfile import validate_model
from swarm_hpc.errors import UserError
from swarm_hpc.fed import data, model, router_records
from swarm_hpc.fed.record import CENTRAL, SPEC, shard_path, test_path
from swarm_hpc.fed.spec import FedSpec


def planned_run_dir(spec: FedSpec, spec_path: Path, out: Path | None) -> Path:
    """The run directory `new_run_dir` would make, named but not made (`fed submit --dry-run`)."""
    base = Path(out) if out else Path(spec.output_dir)
    base = base if base.is_absolute() else Path.cwd() / base
    return base / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec_path.stem}-{secrets.token_hex(2)}"


def load_data(spec: FedSpec, spec_path: Path) -> tuple[data.Shard, data.Shard, list[data.Shard], data.Meta]:
    """The spec's data set: (train, test, one shard per client, meta). Router records that name their nodes are
    split by node (as many nodes as clients); everything else by a Dirichlet draw per class."""
    if spec.dataset == "digits":
        train, test = data.train_test(data.load_digits(), spec.test_fraction, spec.seed)
        return train, test, data.dirichlet_split(train, spec.clients, spec.dirichlet_alpha, spec.seed), \
            data.Meta("digits", data.DIGITS, train.x.shape[1])
    assert spec.records is not None
    where = str(spec_path)
    path = Path(spec.records).expanduser()
    path = path if path.is_absolute() else Path(spec_path).parent / path
    records = router_records.read_records(path)
    if records.nodes is not None and len(set(records.nodes)) != spec.clients:
        raise UserError(where, f"{path} has the records of {len(set(records.nodes))} nodes for {spec.clients} "
                        "clients", f"set clients = {len(set(records.nodes))} (one client per node)", "clients")
    full, groups = router_records.embedded(records, spec.embedding_model, Path(spec_path).parent, where)
    mask = data.test_mask(full.y, spec.test_fraction, spec.seed)
    train, test = data.Shard(full.x[~mask], full.y[~mask]), data.Shard(full.x[mask], full.y[mask])
    shards = (data.split_by_group(train, groups[~mask]) if groups is not None
              else data.dirichlet_split(train, spec.clients, spec.dirichlet_alpha, spec.seed))
    return train, test, shards, data.Meta("router", records.classes, full.x.shape[1], spec.embedding_model)


def new_run_dir(spec: FedSpec, spec_path: Path, out: Path | None) -> Path:
    run_dir = planned_run_dir(spec, spec_path, out)
    train, test, shards, meta = load_data(spec, spec_path)
    empty = [k for k, shard in enumerate(shards, 1) if len(shard) == 0]
    if empty:  # checked before anything is written
        raise UserError(str(spec_path), f"the split leaves client(s) {', '.join(map(str, empty[:5]))} without data "
                        f"({spec.clients} clients, {len(train)} training examples, alpha {spec.dirichlet_alpha:g})",
                        "use fewer clients or a larger dirichlet_alpha", "clients")
    try:
        (run_dir / "data").mkdir(parents=True)
    except OSError as e:
        raise UserError(str(spec_path), f"cannot create the run directory {str(run_dir)!r}: {e.strerror}",
                        "give a writable folder with --out", "output_dir") from None
    atomic_write_json(run_dir / SPEC, {"spec_path": str(Path(spec_path).resolve()), "spec": spec.model_dump(mode="json")})
    for k, shard in enumerate(shards, 1):
        data.write_shard(shard_path(run_dir, k), shard)
    data.write_shard(test_path(run_dir), test)
    data.write_meta(run_dir, meta)
    atomic_write_json(run_dir / CENTRAL, centralised(spec, train, test, len(meta.classes)))
    return run_dir


def centralised(spec: FedSpec, train: data.Shard, test: data.Shard, n_classes: int) -> dict[str, float | int]:
    """The baseline: the same model and SGD settings, `centralised_epochs` over the pooled data (a fixed budget,
    so that "rounds to reach the centralised accuracy" does not move with the number of rounds)."""
    params = model.init_params(spec.model, train.x.shape[1], n_classes, spec.hidden, spec.seed)
    epochs = spec.centralised_epochs
    t0 = time.monotonic()
    params = model.sgd(params, train.x, train.y, epochs=epochs, batch_size=spec.batch_size, lr=spec.lr,
                       rng=np.random.default_rng(spec.seed))
    loss, acc = model.loss_and_accuracy(params, test.x, test.y)
    return {"accuracy": acc, "loss": loss, "epochs": epochs, "train_examples": len(train),
            "test_examples": len(test), "seconds": round(time.monotonic() - t0, 3)}


def load_snapshot(run_dir: Path) -> FedSpec:
    path = Path(run_dir) / SPEC
    fix = "give a folder made by `swarm-hpc fed run`"
    try:
        snap = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(str(run_dir), "is not a federated run directory (no spec.json)", fix) from None
    except (OSError, ValueError) as e:
        raise UserError(str(path), f"cannot be read ({e})", fix) from None
    if not isinstance(snap, dict) or not isinstance(snap.get("spec"), dict):
        raise UserError(str(path), "is not a federated spec snapshot", fix)
    return validate_model(snap["spec"], FedSpec, str(path))
