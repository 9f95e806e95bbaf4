"""Federated learning (`swarm-hpc fed`): on real mpiexec ranks (server rank 0, client ranks with their own shards),
with faults injected into the clients from outside the product (tests/fed_faults.py); the strategies' arithmetic
in-process."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_dir_from, wait_for

pytest.importorskip("sklearn")

from swarm_hpc.fed import strategy

WRAP = {"SWARM_HPC_FED_CLIENT_WRAPPER": "fed_faults:wrap"}


def fed_spec(tmp_path: Path, **fields) -> Path:
    base = {"name": "t", "clients": 3, "rounds": 3, "dirichlet_alpha": 0.5, "seed": 1, "strategy": "fedavg",
            "round_timeout": 30.0}
    base.update(fields)
    lines = [f"{k} = {json.dumps(v)}" for k, v in base.items()]
    path = tmp_path / "fed.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fed(cli, tmp_path: Path, *args, env=None, timeout=180):
    return cli("fed", *args, env={**WRAP, **(env or {})}, timeout=timeout)


def processes_of(run_dir: Path) -> list[int]:
    """Live processes whose command line names `run_dir` (mpiexec and its ranks)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run_dir).encode() in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except OSError:
            pass
    return out


def rounds(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "rounds.jsonl").read_text().splitlines()]


def checkpoint(run_dir: Path) -> np.ndarray:
    with np.load(run_dir / "checkpoint.npz") as z:
        return np.array(z["params"])


def weighted_mean_by_hand(dump: Path, r: int, ranks: list[int]) -> np.ndarray:
    """sum(n_k w_k) / sum(n_k) over the clients' own outputs, added in rank order, as FedAvg defines it."""
    total, acc = 0, None
    for k in ranks:
        n = int((dump / f"n-{r}-{k}").read_text())
        w = np.load(dump / f"out-{r}-{k}.npy")
        acc = n * w if acc is None else acc + n * w
        total += n
    assert acc is not None
    return acc / total


# --- in-process: the arithmetic -----------------------------------------------------------------------------------


def test_weighted_mean_and_update_checks():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 8.0, -1.0])
    assert np.array_equal(strategy.weighted_mean([(a, 1), (b, 3)]), (1 * a + 3 * b) / 4)
    assert strategy.check_update(a, 3, 10) is None
    assert "NaN" in strategy.check_update(np.array([1.0, np.nan, 0.0]), 3, 10)
    assert "shape mismatch" in strategy.check_update(a[:2], 3, 10)
    assert "positive integer" in strategy.check_update(a, 3, 0)
    adam = strategy.Strategy("fedadam", server_lr=0.1)
    new = adam.aggregate(np.zeros(3), [(a, 1)])
    assert np.all(np.sign(new) == np.sign(a))  # a step towards the clients' mean
    assert set(adam.state()) == {"adam_m", "adam_v"}
    assert np.array_equal(strategy.Strategy("fedavg").aggregate(a, []), a)  # nobody took part: unchanged


# --- real mpiexec ranks -------------------------------------------------------------------------------------------


def test_fedavg_is_the_weighted_mean_and_the_run_directory(tmp_path, cli):
    dump = tmp_path / "dump"
    dump.mkdir()
    res = fed(cli, tmp_path, "run", fed_spec(tmp_path, rounds=2), "--out", tmp_path / "runs",
              env={"SWARM_HPC_FED_TEST_DUMP": str(dump)})
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    # round 2's clients started from round 1's aggregate, and the checkpoint is round 2's: both bit for bit
    for k in (1, 2, 3):
        assert np.array_equal(np.load(dump / f"in-2-{k}.npy"), weighted_mean_by_hand(dump, 1, [1, 2, 3]))
    final = checkpoint(run_dir)
    assert np.array_equal(final, weighted_mean_by_hand(dump, 2, [1, 2, 3]))
    outs = [np.load(dump / f"out-2-{k}.npy") for k in (1, 2, 3)]
    ns = [int((dump / f"n-2-{k}").read_text()) for k in (1, 2, 3)]
    assert np.allclose(final, np.average(outs, axis=0, weights=ns), rtol=1e-13, atol=0)
    assert len(set(ns)) > 1  # non-IID shards of different sizes: the weights matter
    recs = rounds(run_dir)
    assert [r["round"] for r in recs] == [1, 2]
    for r in recs:
        assert r["clients"] == [1, 2, 3] and not r["left_out"] and not r["rejected"]
        assert r["bytes"] == 3 * 650 * 8 + 3 * (8 + 650) * 8 and r["seconds"] > 0
        assert set(r["per_client"]) == {"1", "2", "3"} and r["examples"] == sum(ns)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds"] == 2
    assert 0 <= summary["final_accuracy"] <= 1 and 0.8 <= summary["centralised_accuracy"] <= 1
    assert (run_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # each client's shard is its own file; the server holds only the test set
    sizes = [len(np.load(run_dir / "data" / f"client-{k}.npz")["y"]) for k in (1, 2, 3)]
    assert sizes == ns
    show = fed(cli, tmp_path, "show", run_dir)
    assert show.rc == 0, show.err
    assert "accuracy" in show.out and "client 3" in show.out and "accuracy.png" in show.out


def test_a_client_written_for_flower_runs_unchanged(tmp_path, cli):
    res = cli("fed", "run", fed_spec(tmp_path, rounds=4), "--out", tmp_path / "runs",
              env={"SWARM_HPC_FED_CLIENT_WRAPPER": "flower_style:wrap"}, timeout=180)
    assert res.rc == 0, res.err
    recs = rounds(run_dir_from(res.out))
    assert all(r["clients"] == [1, 2, 3] and not r["rejected"] for r in recs)
    assert recs[-1]["accuracy"] > recs[0]["accuracy"] and recs[-1]["accuracy"] > 0.7
    # its own metric names: what it does not report is null, what it does is there
    assert all(c["train_loss"] is None and 0 <= c["accuracy"] <= 1 for c in recs[-1]["per_client"].values())


def test_a_client_that_raises_or_is_too_slow_is_left_out_and_the_job_goes_on(tmp_path, cli):
    dump = tmp_path / "dump"
    dump.mkdir()
    res = fed(cli, tmp_path, "run", fed_spec(tmp_path, rounds=4, round_timeout=2.0), "--out", tmp_path / "runs",
              env={"SWARM_HPC_FED_TEST_RAISE": "1:2", "SWARM_HPC_FED_TEST_SLOW": "2:3:3.5",
                   "SWARM_HPC_FED_TEST_DUMP": str(dump)})
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    recs = rounds(run_dir)
    assert [r["clients"] for r in recs] == [[1, 2, 3], [2, 3], [1, 3], [1, 2, 3]]
    assert recs[1]["left_out"] == {"1": "raised RuntimeError: injected fault in round 2"}
    assert recs[2]["left_out"] == {"2": "missed the deadline (2 s)"}
    assert 2.0 <= recs[2]["seconds"] < 3.0  # the server did not wait for the slow client
    # what was averaged in is exactly the others' weighted mean
    assert np.array_equal(np.load(dump / "in-3-1.npy"), weighted_mean_by_hand(dump, 2, [2, 3]))
    assert np.array_equal(np.load(dump / "in-4-1.npy"), weighted_mean_by_hand(dump, 3, [1, 3]))
    assert "client 1 left out: raised RuntimeError" in res.out and "client 2 left out: missed" in res.out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def test_a_hung_client_never_holds_up_the_server(tmp_path, cli):
    t0 = time.monotonic()
    res = fed(cli, tmp_path, "run", fed_spec(tmp_path, rounds=4, round_timeout=1.5), "--out", tmp_path / "runs",
              env={"SWARM_HPC_FED_TEST_STOP": "3:2"})
    took = time.monotonic() - t0
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    recs = rounds(run_dir)
    assert [r["clients"] for r in recs] == [[1, 2, 3], [1, 2], [1, 2], [1, 2]]
    assert all(r["left_out"] == {"3": "missed the deadline (1.5 s)"} for r in recs[1:])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    assert "did not stop in time" in res.out
    # 3 rounds at the deadline, then the deadline and 2 s for its goodbye, then MPI_Abort: no 30 s waits
    assert took < 30, took
    wait_for(lambda: not processes_of(run_dir), 30, "the stopped rank to be ended")


def test_a_nan_update_and_one_of_the_wrong_shape_are_rejected(tmp_path, cli):
    dump = tmp_path / "dump"
    dump.mkdir()
    res = fed(cli, tmp_path, "run", fed_spec(tmp_path, rounds=3), "--out", tmp_path / "runs",
              env={"SWARM_HPC_FED_TEST_NAN": "1:1", "SWARM_HPC_FED_TEST_SHAPE": "2:2",
                   "SWARM_HPC_FED_TEST_DUMP": str(dump)})
    assert res.rc == 0, res.err
    run_dir = run_dir_from(res.out)
    recs = rounds(run_dir)
    assert recs[0]["clients"] == [2, 3] and recs[0]["rejected"] == {"1": "1 NaN/inf value(s) in the update"}
    assert recs[1]["clients"] == [1, 3] and "shapes" in recs[1]["rejected"]["2"]
    assert recs[2]["clients"] == [1, 2, 3]
    assert np.array_equal(np.load(dump / "in-2-3.npy"), weighted_mean_by_hand(dump, 1, [2, 3]))
    assert np.all(np.isfinite(checkpoint(run_dir)))
    assert "client 1 left out: 1 NaN" in res.out


def test_resume_after_a_kill_continues_from_the_checkpoint(tmp_path, cli):
    spec = fed_spec(tmp_path, rounds=8)
    clean = fed(cli, tmp_path, "run", spec, "--out", tmp_path / "clean")
    assert clean.rc == 0, clean.err
    clean_dir = run_dir_from(clean.out)
    proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "fed", "run", str(spec), "--out", str(tmp_path / "runs")],
                            cwd=ROOT, env={**os.environ, **WRAP, "SWARM_HPC_FED_TEST_PAUSE": "0.4"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_dir = run_dir_from(proc.stdout.readline())
    try:
        wait_for(lambda: (run_dir / "rounds.jsonl").exists()
                 and (run_dir / "rounds.jsonl").read_text().count("\n") >= 3, 60, "round 3")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    wait_for(lambda: not processes_of(run_dir), 30, "the killed run's ranks to end")  # mpiexec: PDEATHSIG
    before = (run_dir / "rounds.jsonl").read_text().splitlines()
    with np.load(run_dir / "checkpoint.npz") as z:
        done = int(z["round"])
    assert 3 <= done < 8
    res = fed(cli, tmp_path, "run", "--resume", run_dir)
    assert res.rc == 0, res.err
    assert f"resuming after round {done}" in res.out, res.out
    after = (run_dir / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(l)["round"] for l in after] == list(range(1, 9))
    assert after[:done] == before[:done]  # finished rounds stay byte for byte
    # the same model as a run that was never killed: clients draw the same minibatches in a round run again
    assert np.array_equal(checkpoint(run_dir), checkpoint(clean_dir))
    again = fed(cli, tmp_path, "run", "--resume", run_dir)
    assert again.rc == 0 and "complete already" in again.out
    assert not processes_of(run_dir)


def test_bad_input_is_one_line(tmp_path, cli):
    def one_line(res, *words):
        assert res.rc == 2, (res.out, res.err)
        assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1, res.err
        for w in words:
            assert w in res.err, res.err

    one_line(fed(cli, tmp_path, "run", fed_spec(tmp_path, dirichlet_alpha=0)), "dirichlet_alpha", "fix:")
    one_line(fed(cli, tmp_path, "run", fed_spec(tmp_path, stratgy="fedavg")), "unknown field", "strategy")
    one_line(fed(cli, tmp_path, "run", fed_spec(tmp_path, strategy="sgd")), "strategy", "fedprox")
    one_line(fed(cli, tmp_path, "run", tmp_path / "nope.toml"), "file not found")
    out = tmp_path / "never"
    one_line(fed(cli, tmp_path, "run", fed_spec(tmp_path, clients=200, dirichlet_alpha=0.01), "--out", out),
             "without data", "fewer clients")
    one_line(fed(cli, tmp_path, "run", fed_spec(tmp_path), "--np", "300", "--out", out), "--np 300", "clients")
    assert not out.exists()  # nothing written
    one_line(fed(cli, tmp_path, "show", tmp_path), "not a federated run directory")
    # a client whose model has another size: the job stops at start-up
    res = fed(cli, tmp_path, "run", fed_spec(tmp_path), "--out", tmp_path / "runs", env={"SWARM_HPC_FED_TEST_MODEL": "2"})
    one_line(res, "client rank(s) 2", "mismatched parameter shapes")
    run_dir = run_dir_from(res.out)
    # a resume of a run that another job is running (it holds the run's lock)
    with open(run_dir / ".lock", "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        one_line(fed(cli, tmp_path, "run", "--resume", run_dir), "another job is running this run")
    # a data shard gone before a resume
    (run_dir / "data" / "client-3.npz").unlink()
    one_line(fed(cli, tmp_path, "run", "--resume", run_dir), "client-3.npz", "data shard is missing")
