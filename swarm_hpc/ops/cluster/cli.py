"""`swarm-hpc cluster ...`: commands on cluster files. Attach with `main.add_command(cluster)`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from swarm_hpc.errors import EXIT_USAGE, UserError
from swarm_hpc.ops.cluster.render import render_cluster, write_rendered
from swarm_hpc.ops.cluster.schema import load_cluster

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Print a UserError as one line on stderr and exit 2 (no traceback), as the main `swarm-hpc` group does."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as e:
            click.echo(f"swarm-hpc: error: {e}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


@click.group()
def cluster() -> None:
    """Describe a SLURM cluster in one TOML file and render its configuration.

    The cluster file lists the controller, the blades (boards), the network, storage, partitions and SLURM
    options; see slurm/examples/pi5-cluster.toml.
    """


@cluster.command()
@click.argument("cluster_file", type=click.Path(dir_okay=True, path_type=Path))
@click.option(
    "--out", "out_dir", required=True, metavar="DIR", type=click.Path(path_type=Path),
    help="Folder to write into (created; replaced atomically if it holds an earlier rendering).",
)
@user_errors
def render(cluster_file: Path, out_dir: Path) -> None:
    """Check CLUSTER_FILE and render slurm.conf, hosts, inventory.yml and per-blade boot files into --out.

    slurm.conf is for Slurm 22.05 (install it as <slurm.config_dir>/slurm.conf on every host, with cgroup.conf
    beside it when [slurm] cgroups is on: jobs are held to the memory they were given), hosts holds
    /etc/hosts lines and inventory.yml is an Ansible inventory (groups `controller` and `blades`) for
    ansible/site.yml, which reads the other files from beside it. With an [admin] table, boot/<blade>/ holds
    each blade's cloud-init seed (user-data, network-config, meta-data) and config.txt.append, the files
    `swarm-hpc image customize` writes into an image. Nothing is written when the file has a problem.
    """
    described = load_cluster(cluster_file)
    files = render_cluster(described, source=cluster_file.name)
    write_rendered(files, out_dir)
    top = sorted(name for name in files if "/" not in name)
    blades = sorted({name.split("/")[1] for name in files if name.startswith("boot/")})
    boot = f" and boot files for {len(blades)} blade(s) in boot/" if blades else " (no [admin]: no boot files)"
    click.echo(f"rendered {', '.join(top)}{boot} into {out_dir}")
