"""`swarm-hpc fed run|submit|records|show`: federated training as an MPI job, locally or under SLURM (attached by
swarm_hpc/cli.py)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from swarm_hpc.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def fed() -> None:
    """Federated learning on MPI ranks: rank 0 is the server, every other rank a client with its own data shard.

    \b
    Examples:
      swarm-hpc fed run jobs/examples/fed-digits.toml --np 5
      swarm-hpc fed run --resume runs/20261201-120000-fed-digits-1a2b
      swarm-hpc fed submit jobs/examples/fed-digits.toml --nodes 4
      swarm-hpc fed records evals/pi3 --node pi3 --out records.jsonl
      swarm-hpc fed show runs/20261201-120000-fed-digits-1a2b
    """


@fed.command()
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--np", "np_", type=click.IntRange(min=2), help="MPI ranks: the server and NP-1 clients "
              "(default: the spec's clients + 1).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the run directory (default: the spec's output_dir).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in RUN_DIR after its last checkpointed round.")
def run(spec: Path | None, np_: int | None, out: Path | None, resume_dir: Path | None) -> None:
    """Train the model of SPEC (a TOML file) federated, on this machine with mpiexec."""
    from swarm_hpc.core.tomlfile import validate_model
    from swarm_hpc.executor import LocalExecutor, wait_and_exit
    from swarm_hpc.fed import record
    from swarm_hpc.fed.prepare import load_snapshot, new_run_dir
    from swarm_hpc.fed.spec import FedSpec, load_fed_spec

    if (spec is None) == (resume_dir is None):
        raise UserError("swarm-hpc fed run", "give either a SPEC file or --resume RUN_DIR",
                        "e.g. `swarm-hpc fed run jobs/examples/fed-digits.toml`")
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        fed_spec = load_snapshot(run_dir)
        if np_ is not None and np_ != fed_spec.ranks_needed:
            raise UserError(str(run_dir), f"the run has {fed_spec.clients} clients: it needs --np "
                            f"{fed_spec.ranks_needed}, not {np_}", "leave --np out")
        if (record.read_json(run_dir / record.SUMMARY) or {}).get("status") == "complete":
            click.echo(f"{run_dir}: the run is complete already; nothing to do")
            return
    else:
        assert spec is not None
        fed_spec = load_fed_spec(spec)
        if np_ is not None:  # validated again: --np must keep within the spec's limits
            fed_spec = validate_model({**fed_spec.model_dump(), "clients": np_ - 1}, FedSpec, f"{spec} with --np {np_}")
        executor = LocalExecutor()
        executor.command(Path("<run-dir>"), fed_spec.ranks_needed)  # mpiexec missing: one line, nothing written
        run_dir = new_run_dir(fed_spec, spec, out)
    click.echo(f"run directory: {run_dir}", nl=True)
    sys.stdout.flush()
    job = LocalExecutor().submit(run_dir, fed_spec.ranks_needed, resume=resume_dir is not None,
                                 module="swarm_hpc.fed.rank")
    wait_and_exit(job, f"finished rounds are kept in {run_dir} (continue with "
                       f"`swarm-hpc fed run --resume {shlex.quote(str(run_dir))}`)")


@fed.command()
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--nodes", type=click.IntRange(min=1, max=256), help="One client per node: NODES clients on NODES "
              "nodes (the server shares the first); default: the spec's clients and [slurm] placement.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the run directory (default: the spec's "
              "output_dir); it must be on storage every node sees.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Submit again for RUN_DIR: the job continues after its last checkpointed round.")
@click.option("--dry-run", is_flag=True, help="Print the batch script (SLURM checks it too); write and submit nothing.")
@click.option("--templates", "templates_dir", type=click.Path(path_type=Path), help="A folder of job templates "
              "that override the bundled ones.")
def submit(spec: Path | None, nodes: int | None, out: Path | None, resume_dir: Path | None, dry_run: bool,
           templates_dir: Path | None) -> None:
    """Submit the federated training of SPEC as a SLURM batch job; prints its job id and run directory."""
    from swarm_hpc.core.tomlfile import validate_model
    from swarm_hpc.fed.job import FedJob
    from swarm_hpc.fed.prepare import load_snapshot, new_run_dir, planned_run_dir
    from swarm_hpc.fed.spec import FedSpec, load_fed_spec
    from swarm_hpc.slurm.executor import SlurmExecutor

    if (spec is None) == (resume_dir is None):
        raise UserError("swarm-hpc fed submit", "give either a SPEC file or --resume RUN_DIR",
                        "e.g. `swarm-hpc fed submit jobs/examples/fed-digits.toml --nodes 4`")
    if resume_dir is not None:
        run_dir = Path(resume_dir).resolve()
        fed_spec = load_snapshot(run_dir)
        spec_path = run_dir / "spec.json"
    else:
        assert spec is not None
        spec_path = Path(spec).resolve()
        fed_spec = load_fed_spec(spec)
        if nodes is not None:  # validated again: the clients must keep within the spec's limits
            data = fed_spec.model_dump()
            data["clients"], data["slurm"]["nodes"], data["slurm"]["ntasks_per_node"] = nodes, nodes, None
            fed_spec = validate_model(data, FedSpec, f"{spec} with --nodes {nodes}")
        run_dir = planned_run_dir(fed_spec, spec_path, out) if dry_run else new_run_dir(fed_spec, spec_path, out)
    job = FedJob(fed_spec, spec_path, run_dir, templates_dir=templates_dir)
    if dry_run:
        from swarm_hpc.slurm.commands import check_script

        script = job.script()
        check_script(script)
        click.echo(script, nl=False)
        return
    handle = SlurmExecutor().submit(job)
    click.echo(f"{handle.id}\nrun directory: {run_dir} (follow it with `swarm-hpc status {handle.id}` and "
               f"`swarm-hpc fed show {shlex.quote(str(run_dir))}`)")


@fed.command()
@click.argument("eval_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The JSONL records file to write.")
@click.option("--node", help="The node these evals ran on: each record says so (one client per node).")
def records(eval_dirs: tuple[Path, ...], out: Path, node: str | None) -> None:
    """Router records from finished evals: each question some single expert answered right, with that expert's
    skill (a dataset = "router" spec trains on them)."""
    from swarm_hpc.atomic import atomic_write_bytes
    from swarm_hpc.fed.router_records import from_eval

    lines: list[str] = []
    for d in eval_dirs:
        recs, passed = from_eval(d, node)
        lines += [json.dumps(r, ensure_ascii=False) for r in recs]
        click.echo(f"{d}: {len(recs)} record(s), {passed} question(s) passed over (every expert right or wrong)")
    if not lines:
        raise UserError(str(out), "no records: in these evals no single expert was right where another was wrong",
                        "run evals with experts of different skills on more questions")
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    click.echo(f"wrote {len(lines)} record(s) to {out}")


@fed.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the round records as JSON Lines.")
def show(run_dir: Path, as_json: bool) -> None:
    """Rounds of a federated run: accuracy, loss, clients, bytes; accuracy per client; writes the PNG curve."""
    from rich.console import Console
    from rich.table import Table

    from swarm_hpc.fed import record
    from swarm_hpc.fed.plot import plot
    from swarm_hpc.fed.prepare import load_snapshot

    spec = load_snapshot(run_dir)
    rounds = record.read_rounds(run_dir)
    if as_json:
        for r in rounds:
            click.echo(json.dumps(r))
        return
    summary = record.read_json(run_dir / record.SUMMARY) or {}
    console = Console(width=max(100, Console().width))
    t = Table(title=f"{run_dir.name}: {spec.strategy}, {spec.clients} clients, Dirichlet alpha {spec.dirichlet_alpha}")
    for col in ("round", "accuracy", "loss", "clients", "left out / rejected", "bytes", "comm ms", "seconds"):
        t.add_column(col, justify="left" if col.startswith("left") else "right")
    for r in rounds:
        out = "; ".join(f"{k}: {why}" for k, why in {**r["left_out"], **r["rejected"]}.items())
        t.add_row(str(r["round"]), f"{r['accuracy']:.4f}", f"{r['loss']:.4f}",
                  ",".join(map(str, r["clients"])), out, str(r["bytes"]),
                  "-" if r.get("comm_ms") is None else f"{r['comm_ms']:.2f}", f"{r['seconds']:.3f}")
    console.print(t)
    clients = sorted({int(k) for r in rounds for k in r["per_client"]})
    if clients:
        pc = Table(title="per client: the round's global model on its own shard (accuracy, before its fit)")
        pc.add_column("round", justify="right")
        for k in clients:
            pc.add_column(f"client {k}", justify="right")
        for r in rounds:
            pcr = r["per_client"]
            pc.add_row(str(r["round"]), *(f"{pcr[str(k)]['accuracy']:.3f}" if str(k) in pcr and
                                          pcr[str(k)]["accuracy"] is not None else "-" for k in clients))
        console.print(pc)
    if summary:
        click.echo(f"status {summary.get('status')}: {summary.get('rounds_done')}/{summary.get('rounds')} rounds, "
                      f"final accuracy {summary.get('final_accuracy')}, centralised {summary.get('centralised_accuracy')}, "
                      f"within 1 point of it at round {summary.get('rounds_to_centralised_within_1pt')}")
    if rounds:
        click.echo(f"plot: {plot(run_dir)}")
