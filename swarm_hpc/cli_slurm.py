"""SLURM commands of the CLI: render, submit, status, watch, logs, cancel, chat, and prepare (for job scripts).

They sit beside cli.py, above every package whose checks they run before a launch (experts, knowledge)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from swarm_hpc.core.recorder import STOPPED_STATUSES
from swarm_hpc.errors import UserError
from swarm_hpc.executor import FINISHED
from swarm_hpc.slurm import index

TEMPLATES_OPTION = click.option("--templates", "templates_dir", type=click.Path(path_type=Path),
                                help="A folder of your own job templates; they override the shipped ones of the same name.")


def _job_for(spec_path: Path, out: Path | None, resume_dir: Path | None, tasks: Path | None,
             templates_dir: Path | None):
    from swarm_hpc.core.rundir import check_run_dir, load_snapshot, output_base
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.experts.preflight import check_spec_files
    from swarm_hpc.knowledge.check import check_knowledge
    from swarm_hpc.slurm.job import SwarmJob, read_tasks

    if resume_dir is not None:
        run_dir = check_run_dir(resume_dir).resolve()
        spec, _ = load_snapshot(run_dir)
        spec_path = Path(json.loads((run_dir / "spec.json").read_text())["spec_path"])
        return SwarmJob(spec, spec_path, run_dir.parent, run_dir=run_dir, templates_dir=templates_dir)
    spec = load_spec(spec_path)
    # checked here, but the job snapshots the spec as written: `fallback` is decided on the node (prepare)
    check_spec_files(spec, spec_path.parent, str(spec_path))
    check_knowledge(spec, spec_path.parent, str(spec_path))
    if tasks is not None:
        read_tasks(tasks)
    return SwarmJob(spec, spec_path.resolve(), output_base(spec, out).resolve(),
                    tasks_file=tasks.resolve() if tasks else None, templates_dir=templates_dir)


@click.command()
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), help="Folder for run directories and logs (default: the spec's output_dir).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Render a job that continues RUN_DIR.")
@click.option("--tasks", type=click.Path(path_type=Path), help="A job array: one task per line of this file.")
@TEMPLATES_OPTION
def render(spec: Path | None, out: Path | None, resume_dir: Path | None, tasks: Path | None, templates_dir: Path | None) -> None:
    """Print the sbatch script for SPEC; nothing is submitted or written.

    The script works as it is with `sbatch`: it makes its run directory from the job id, and after a requeue
    it continues from the last finished round.
    """
    if (spec is None) == (resume_dir is None):
        raise UserError("swarm-hpc render", "give either a SPEC file or --resume RUN_DIR", "e.g. `swarm-hpc render jobs/examples/debate.toml`")
    click.echo(_job_for(spec or Path(), out, resume_dir, tasks, templates_dir).script(), nl=False)


@click.command()
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), help="Folder for run directories and logs (default: the spec's output_dir).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Submit a job that continues RUN_DIR from its last finished round.")
@click.option("--tasks", type=click.Path(path_type=Path), help="Submit a job array: one swarm per line (task) of this file.")
@click.option("--dry-run", is_flag=True, help="Check everything and print the script; submit nothing.")
@click.option("--wait", is_flag=True, help="Wait until the job has ended; exit non-zero if it failed.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the job id, log and run directory as JSON.")
@TEMPLATES_OPTION
def submit(spec: Path | None, out: Path | None, resume_dir: Path | None, tasks: Path | None, dry_run: bool, wait: bool,
           timeout: float | None, as_json: bool, templates_dir: Path | None) -> None:
    """Submit SPEC as a SLURM batch job and print its job id."""
    from swarm_hpc.slurm.executor import SlurmExecutor

    if (spec is None) == (resume_dir is None):
        raise UserError("swarm-hpc submit", "give either a SPEC file or --resume RUN_DIR", "e.g. `swarm-hpc submit jobs/examples/debate.toml`")
    job = _job_for(spec or Path(), out, resume_dir, tasks, templates_dir)
    if dry_run:
        from swarm_hpc.slurm.commands import check_script

        check_script(job.script())  # everything but the submission: SLURM's own check too
        click.echo(job.script(), nl=False)
        return
    handle = SlurmExecutor().submit(job)
    if not as_json:
        click.echo(handle.id)
    state = handle.wait(timeout or None) if wait else None
    if as_json:
        planned = job.run_dir_for(f"{handle.id}_<task>" if job.array else handle.id)
        info = {"job_id": handle.id, "log": str(handle.log), "run_dir": str(handle.run_dir or planned)}
        click.echo(json.dumps(info | ({"state": state} if wait else {})))
    if wait and state != "COMPLETED":
        click.echo(f"swarm-hpc: job {handle.id} ended {state}; see `swarm-hpc logs {handle.id}`", err=True)
        sys.exit(1)


def _progress_cells(run_dir: Path | None) -> tuple[str, str]:
    from swarm_hpc.serve.service import read_info
    from swarm_hpc.slurm.monitor import progress

    if run_dir is not None and (info := read_info(run_dir)) is not None:   # a service job (`swarm-hpc serve`)
        return f"{info.status} {info.url} key {info.key_file or '$SWARM_HPC_API_KEY'}", "-"
    p = progress(run_dir)
    if not p:
        return "-", "-"
    done = "done" if p.get("status") == "complete" else f"round {p.get('round', p.get('rounds_done', 0))}/{p.get('rounds', '?')}"
    if p.get("status") in STOPPED_STATUSES:
        done += f" ({p['status']})"
    batches = ["+".join(r["batch"]) for r in p.get("ranks", []) if r.get("batch")]
    if batches:  # experts that share a rank and generate as one batch
        done += f", batched {' '.join(batches)}"
    return done, f"{p.get('swarm_tok_s', 0):.1f}" if p.get("swarm_tok_s") else "-"


@click.command()
@click.argument("job_id", required=False)
@click.option("--verbose", "-v", is_flag=True, help="Say how job state is read (pyslurm or squeue/sacct).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def status(job_id: str | None, verbose: bool, as_json: bool) -> None:
    """Jobs in the queue, squeue-like, with each swarm's progress (round k/N, tok/s)."""
    from rich.console import Console
    from rich.table import Table

    from swarm_hpc.slurm.executor import WATCHER, SlurmExecutor

    jobs = SlurmExecutor().job(job_id).infos() if job_id else WATCHER.jobs()
    if verbose:
        click.echo(f"monitor: {WATCHER.reason}", err=True)
    rows: list[dict[str, Any]] = []
    for j in jobs:
        prog, toks = _progress_cells(j.run_dir)
        # squeue's end time of a running job is when its time limit will end it, not now
        ended = j.end if j.state in FINISHED else 0
        elapsed = int((ended or time.time()) - j.start) if j.start else 0
        rows.append({"job": j.job, "name": j.name, "state": j.state, "nodes": j.nodes or j.reason, "time": elapsed,
                     "progress": prog, "tok_s": toks, "run_dir": str(j.run_dir or "")})
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(title=f"SLURM jobs ({len(rows)})")
    for col in ("JOBID", "NAME", "STATE", "NODES/REASON", "TIME", "SWARM", "TOK/S", "RUN DIR"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["job"], r["name"], r["state"], r["nodes"], f"{r['time'] // 60}:{r['time'] % 60:02d}",
                      r["progress"], r["tok_s"], r["run_dir"])
    Console(width=200).print(table)


def run_dir_of(job_id: str) -> Path:
    from swarm_hpc.slurm.executor import SlurmJob

    run_dir = SlurmJob(job_id).run_dir
    if run_dir is None:
        raise UserError(f"job {job_id}", "no run directory is known for this job (it has not started, or was not a swarm job)",
                        "wait until it runs (`swarm-hpc status`), or give the run directory itself")
    return run_dir


@click.command()
@click.argument("job_id")
def logs(job_id: str) -> None:
    """Print a job's output (its SLURM log)."""
    from swarm_hpc.slurm.executor import SlurmJob

    log = SlurmJob(job_id, seen=True).log
    if not log or not log.exists():
        raise UserError(f"job {job_id}", "no log file is known for this job", "check the job id with `swarm-hpc status`")
    click.echo(log.read_text(errors="replace"), nl=False)


@click.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job (its transcript keeps every finished round: `submit --resume RUN_DIR` continues it)."""
    from swarm_hpc.slurm.executor import SlurmExecutor

    SlurmExecutor().job(job_id).cancel()
    click.echo(f"cancelled {job_id}")


@click.command()
@click.argument("job_id")
@click.option("--interval", type=float, default=1.0, help="Seconds between looks.")
@click.option("--timeout", type=float, default=None, help="Stop watching after this many seconds.")
def watch(job_id: str, interval: float, timeout: float | None) -> None:
    """Follow a job live: its state, and each expert's answer as it is written, until the job ends."""
    from swarm_hpc.core.recorder import read_records
    from swarm_hpc.core.report import render_transcript
    from swarm_hpc.slurm.executor import SlurmExecutor

    job = SlurmExecutor().job(job_id)
    shown, last = 0, None
    for state in job.follow(interval, timeout or None):
        if state != last:
            nodes = job.nodes
            click.echo(f"[{time.strftime('%H:%M:%S')}] job {job_id}: {state}" + (f" on {nodes}" if nodes else ""))
            last = state
        run_dir = job.run_dir
        msgs = [r for r in read_records(run_dir) if r.get("type") == "message"] if run_dir else []
        if len(msgs) > shown:
            click.echo(render_transcript(msgs[shown:]))
            shown = len(msgs)
    if last not in job.final_states:
        click.echo("(stopped watching; the job goes on)")


@click.command(hidden=False)
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--run-dir", type=click.Path(path_type=Path), required=True, help="The run directory to make or find.")
@click.option("--snapshot", "snapshot", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the spec snapshot (spec.json's content, which job scripts carry) from this file (- for stdin) "
                   "instead of reading SPEC.")
@click.option("--task-line", nargs=2, type=(click.Path(path_type=Path), int), default=None,
              help="FILE N: work on line N (from 0) of the tasks file instead of the spec's task.")
def prepare(spec: Path | None, run_dir: Path, snapshot: Any, task_line: tuple[Path, int] | None) -> None:
    """(used by job scripts) Make the run directory from the spec snapshot the script carries (or from SPEC), or
    find it after a requeue.

    Prints "new" or "resume" (the run directory has a transcript to continue)."""
    from swarm_hpc.core.rundir import create_run_dir
    from swarm_hpc.core.spec import SwarmSpec, load_spec
    from swarm_hpc.core.tomlfile import validate_model
    from swarm_hpc.experts.preflight import check_spec_files
    from swarm_hpc.knowledge.check import check_knowledge
    from swarm_hpc.slurm.job import read_tasks

    job = index.current_job_key()
    if (run_dir / "spec.json").exists():
        if job:
            index.record_in_job(job, run_dir.resolve())
        click.echo("resume" if (run_dir / "transcript.jsonl").exists() else "new")
        return
    if snapshot is not None:
        where = "the job script's spec snapshot"
        try:
            data = json.loads(snapshot.read())
            spec_path = Path(data["spec_path"])
        except (ValueError, KeyError, TypeError):
            raise UserError(where, "is not a spec snapshot written by swarm-hpc", "render the job script again") from None
        swarm = validate_model(data.get("spec"), SwarmSpec, where)
    elif spec is not None:
        swarm, spec_path = load_spec(spec), spec
    else:
        raise UserError("swarm-hpc prepare", "give a SPEC file or --snapshot", "job scripts pass `--snapshot -`")
    if task_line is not None:
        tasks = read_tasks(task_line[0])
        if not 0 <= task_line[1] < len(tasks):
            raise UserError(str(task_line[0]), f"has no task {task_line[1]} (it has {len(tasks)})", "check the array range")
        swarm = swarm.model_copy(update={"task": tasks[task_line[1]]})
    swarm = check_spec_files(swarm, spec_path.parent, str(spec_path))
    check_knowledge(swarm, spec_path.parent, str(spec_path))
    create_run_dir(run_dir, swarm, spec_path)
    if job:
        index.record_in_job(job, run_dir.resolve())
    click.echo("new")


@click.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--local", is_flag=True, help="Run the ranks with mpiexec on this machine instead of srun.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the run directory.")
@TEMPLATES_OPTION
def chat(spec: Path, local: bool, out: Path | None, templates_dir: Path | None) -> None:
    """Talk to the swarm: each line you type starts a round in which every expert answers it (and sees what
    its peers said in the round before). An empty line or /quit ends the chat.

    Without --local the ranks run under `srun --pty` (an interactive SLURM session)."""
    from swarm_hpc.core.rundir import new_run_dir
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.executor import LocalExecutor, rank_command
    from swarm_hpc.experts.preflight import check_spec_files
    from swarm_hpc.knowledge.check import check_knowledge
    from swarm_hpc.slurm.job import SwarmJob

    swarm = load_spec(spec)
    swarm = check_spec_files(swarm, spec.parent, str(spec))
    check_knowledge(swarm, spec.parent, str(spec))
    run_dir = new_run_dir(swarm, spec, out)
    if local:
        ex = LocalExecutor()  # in the foreground, not submit(): the ranks read this terminal
        rc = subprocess.run(ex.command(run_dir, swarm.ranks_needed) + ["--chat"], env=ex.env()).returncode
    else:
        job = SwarmJob(swarm, spec.resolve(), run_dir.parent, run_dir=run_dir, templates_dir=templates_dir)
        script = job.chat_script(rank_command(run_dir) + ["--chat"], pty=sys.stdin.isatty())
        (run_dir / "chat.sh").write_text(script)
        rc = subprocess.run(["bash", str(run_dir / "chat.sh")], env=os.environ).returncode
    if rc != 0:
        sys.exit(rc)


COMMANDS = [render, submit, status, watch, logs, cancel, chat, prepare]
