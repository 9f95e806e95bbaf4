"""`swarm-hpc bench ...`: quick testing of many LLMs. Attach with `main.add_command(bench)`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click

from swarm_hpc.errors import UserError
from swarm_hpc.ops.benchmark.config import load_config
from swarm_hpc.ops.benchmark.plan import JOBS, Plan, Task, create_run_dir, make_plan, parse_nodes, run_dir_for
from swarm_hpc.ops.benchmark.report import (
    PLOT_PNG,
    REPORT_MD,
    RESULTS_CSV,
    RESULTS_JSON,
    Assembled,
    assemble,
    markdown_table,
)
from swarm_hpc.ops.cluster.cli import user_errors

EXIT_FAILED_MODELS = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench() -> None:
    """Quick testing of many LLMs: speed, memory and a quality probe per model and node.

    \b
    swarm-hpc bench models bench/models.toml             # every model, here, one after the other
    swarm-hpc bench models bench/models.toml --submit --wait --nodes blade01,blade02
    swarm-hpc bench report bench/results/models-20261125-101500 --compare bench/results/models-20261124-090000
    """


def _summary(a: Assembled, md_table: bool = True) -> None:
    if md_table:
        click.echo(markdown_table(a.rows))
    for r in a.failed:
        click.echo(f"failed: {r.model} on {r.node}: {r.error}", err=True)
    d = a.run_dir
    click.echo(f"{len(a.rows) - len(a.failed)} of {len(a.rows)} measured; results: {d / RESULTS_JSON}, "
               f"{d / RESULTS_CSV}, {d / REPORT_MD}, {d / PLOT_PNG}")


class _Progress:
    """A rich progress bar on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, plan: Plan) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.plan = plan
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, disable=not self.live)
        self.bar = self.progress.add_task("models", total=len(plan.tasks))

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, task: Task, event: dict[str, Any]) -> None:
        run = self.plan.runs[task.model]
        head = f"[{task.index + 1}/{len(self.plan.tasks)}] {run.name}"
        stage = event.get("stage")
        if stage == "rep":
            text = f"{head}: repetition {event['rep']}/{event['reps']}"
        elif stage == "probe":
            text = f"{head}: probe ({event['questions']} questions)"
        elif stage == "bandwidth":
            text = f"{head}: measuring memory bandwidth ({event['threads']} thread(s))"
        elif stage == "done":
            text = f"{head}: {'done' if event['status'] == 'ok' else 'FAILED: ' + event.get('error', '')}"
            self.progress.advance(self.bar)
        else:
            return
        if self.live:
            from rich.markup import escape

            self.progress.update(self.bar, description=escape(text[:100]))
            if stage == "done" and event["status"] != "ok":
                self.console.print(escape(text), highlight=False)
        else:
            click.echo(text, err=True)


@bench.command()
@click.argument("models_file", metavar="MODELS_FILE", type=click.Path(path_type=Path))
@click.option("--local", "local", is_flag=True, help="Run here, one model after the other (the default without --submit).")
@click.option("--submit", is_flag=True, help="Submit a SLURM job array instead: one task per model and node.")
@click.option("--nodes", metavar="N1,N2", help="With --submit: measure every model on each of these nodes (one array job per node).")
@click.option("--wait", "wait_", is_flag=True, help="With --submit: wait for the array and assemble the report.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="With --wait: give up after this many seconds (0: no limit).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory to create (default: <output_dir>/<file stem>-<date>).")
@click.option("--reps", type=click.IntRange(1, 100), help="Repetitions per model (overrides the file).")
@user_errors
def models(models_file: Path, local: bool, submit: bool, nodes: str | None, wait_: bool, wait_timeout: float,
           out: Path | None, reps: int | None) -> None:
    """Measure every model in MODELS_FILE: load time, prompt and generation tok/s, peak memory, the share of
    the node's memory-bandwidth bound, and a probe of exact-answer questions; median and spread over the
    repetitions.

    Each model runs in its own process: a missing, corrupt or too-large model is reported and the others still
    run. Writes RUN_DIR/results.json, results.csv, report.md and plot.png. Exit code 1 when a model failed.

    \b
    Examples:
      swarm-hpc bench models bench/models.toml
      swarm-hpc bench models bench/models.toml --submit --nodes blade01,blade02 --wait
    """
    if local and submit:
        raise UserError("swarm-hpc bench models", "--local and --submit exclude each other", "give one of them")
    node_list = parse_nodes(nodes)
    if not submit and (node_list or wait_):
        raise UserError("swarm-hpc bench models", f"{'--nodes' if node_list else '--wait'} needs --submit",
                        "add --submit to run on SLURM nodes, or leave it out to run here")
    cfg = load_config(models_file, reps)
    plan = make_plan(cfg, models_file, "slurm" if submit else "local", node_list)
    run_dir = run_dir_for(cfg, models_file, out)
    if submit:
        from swarm_hpc.ops.benchmark.submit import array_jobs, check, wait
        from swarm_hpc.ops.benchmark.submit import submit as submit_jobs

        check(array_jobs(plan, run_dir))  # the scripts render and SLURM would take them, before anything is made
        create_run_dir(run_dir, plan)
        click.echo(f"run directory: {run_dir}")
        try:
            ids = submit_jobs(plan, run_dir)
        except UserError:
            if not (run_dir / JOBS).exists():  # nothing was submitted: leave nothing behind
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        click.echo(f"submitted array job(s) {', '.join(map(str, ids))}: {len(plan.tasks)} task(s), "
                   f"logs in {run_dir / 'logs'}")
        if not wait_:
            click.echo(f"when they have finished: swarm-hpc bench report {run_dir}")
            return
        wait(plan, run_dir, ids, timeout=wait_timeout or None,
             on_update=lambda done, total: click.echo(f"{done}/{total} task(s) finished", err=True))
    else:
        from swarm_hpc.ops.benchmark.runner import run_local

        create_run_dir(run_dir, plan)
        click.echo(f"run directory: {run_dir}")
        with _Progress(plan) as progress:
            run_local(plan, run_dir, progress)
    a, _ = assemble(run_dir)
    _summary(a)
    if a.failed:
        sys.exit(EXIT_FAILED_MODELS)


@bench.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--compare", "compare_with", type=click.Path(path_type=Path), metavar="OLD_DIR_OR_FILE",
              help="An earlier run (its folder, results.json or results.csv): faster or slower, and by how much.")
@user_errors
def report(run_dir: Path, compare_with: Path | None) -> None:
    """Assemble RUN_DIR's results into results.json, results.csv, report.md (a Markdown table) and plot.png.

    Works on a finished or a still-running SLURM array (tasks without a result are shown as failed).
    """
    a, section = assemble(run_dir, compare_with)
    click.echo(markdown_table(a.rows))
    if section:
        click.echo("\n" + section)
    _summary(a, md_table=False)
