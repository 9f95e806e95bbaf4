"""The cluster file of the local test cluster, rendered with the same renderer as real clusters.

Used by slurm/local-cluster.sh:

    python -m swarm_hpc.ops.cluster.local --nodes 3 --state /tmp/swarm-hpc-slurm [--subnet 10.97.0.0/24]

writes STATE/cluster.toml (nodes n1..nN), renders it into STATE/etc (slurm.conf, hosts, task_prolog.sh, ...)
and prints shell assignments for the script: CONTROLLER, CONTROLLER_ADDR, PREFIX, NODES, ADDR_<node>,
SLURM_CONF. One node runs on this host at 127.0.0.1; two or more run in network namespaces on a bridge whose
address (the first host address of the subnet) is the controller's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from pathlib import Path

from swarm_hpc.errors import EXIT_USAGE, UserError
from swarm_hpc.jinja import environment
from swarm_hpc.ops.cluster.render import render_cluster, write_rendered
from swarm_hpc.ops.cluster.schema import load_cluster

DEFAULT_SUBNET = "10.97.0.0/24"
DEFAULT_BRIDGE = "swarmbr0"
MAX_NODES = 8


@dataclass(frozen=True)
class LocalNode:
    name: str
    address: str


def local_layout(nodes: int, subnet: IPv4Network) -> tuple[str, list[LocalNode]]:
    """(controller address, nodes): 127.0.0.1 for one node; else bridge = .1 and node k = .(10+k)."""
    if nodes == 1:
        return "127.0.0.1", [LocalNode("n1", "127.0.0.1")]
    hosts = list(subnet.hosts())
    if len(hosts) < 10 + nodes:
        raise UserError("--subnet", f"{subnet} is too small for {nodes} nodes", "use a /24, e.g. 10.97.0.0/24")
    return str(hosts[0]), [LocalNode(f"n{k}", str(hosts[9 + k])) for k in range(1, nodes + 1)]


def host_memory_mb() -> int:
    """This machine's RAM in MB, as `slurmd -C` reports it (RealMemory: the kernel's total RAM, in MiB)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20


def local_cluster_toml(
    nodes: int, state: Path, subnet: IPv4Network, hostname: str, bridge: str, cpus: int = 4,
    memory_mb: int | None = None,
) -> str:
    """The text of the local cluster file. Every node has this machine's memory (`memory_mb`, default
    `host_memory_mb()`): memory is scheduled, so a job asking for what the machine has must fit on a node."""
    controller_address, layout = local_layout(nodes, subnet)
    return environment().get_template("cluster/local-cluster.toml.j2").render(
        controller=hostname,
        controller_address=controller_address,
        subnet=str(subnet) if nodes > 1 else "127.0.0.0/8",
        nodes=layout,
        namespaces=nodes > 1,
        bridge=bridge,
        state=str(state),
        cpus=cpus,
        memory_mb=host_memory_mb() if memory_mb is None else memory_mb,
    )


def short_hostname() -> str:
    """This host's short name, as slurmctld compares it with SlurmctldHost."""
    return socket.gethostname().split(".")[0]


def check_subnet_free(subnet: IPv4Network, bridge: str) -> None:
    """Refuse a subnet that overlaps a route or address of this machine (other than our own bridge)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError("ip route", f"cannot list routes: {e}", "install iproute2") from None
    for route in json.loads(out or "[]"):
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dev == bridge or dst in ("", "default"):
            continue
        try:
            net = ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.overlaps(subnet) and not net.is_loopback:
            raise UserError(
                "--subnet", f"{subnet} overlaps {dst} on {dev or 'this machine'}",
                "choose another private subnet, e.g. 10.98.0.0/24",
            )


def prepare(nodes: int, state: Path, subnet: IPv4Network, bridge: str) -> dict[str, str]:
    """Write STATE/cluster.toml, render STATE/etc, and return the shell variables for the script."""
    if not 1 <= nodes <= MAX_NODES:
        raise UserError("--nodes", f"{nodes} is out of range", f"use 1 to {MAX_NODES}")
    if nodes > 1:
        check_subnet_free(subnet, bridge)
    hostname = short_hostname()
    state.mkdir(parents=True, exist_ok=True)
    cluster_file = state / "cluster.toml"
    cluster_file.write_text(local_cluster_toml(nodes, state, subnet, hostname, bridge), encoding="utf-8")
    cluster = load_cluster(cluster_file)  # the same checks as any user's cluster file
    write_rendered(render_cluster(cluster, source=str(cluster_file)), Path(cluster.slurm.config_dir))
    names = [b.name for b in cluster.compute_blades]
    out = {
        "CONTROLLER": cluster.controller.name,
        "CONTROLLER_ADDR": str(cluster.controller.address),
        "PREFIX": str(cluster.network.subnet.prefixlen),
        "NODES": " ".join(names),
        "SLURM_CONF": f"{cluster.slurm.config_dir}/slurm.conf",
    }
    out.update({f"ADDR_{b.name}": str(b.address) for b in cluster.compute_blades})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm_hpc.ops.cluster.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--state", type=Path, required=True, help="state folder (absolute path)")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="private subnet for namespace nodes")
    parser.add_argument("--bridge", default=DEFAULT_BRIDGE, help="bridge name (its routes are ours)")
    args = parser.parse_args(argv)
    try:
        try:
            subnet = IPv4Network(args.subnet)
        except ValueError as e:
            raise UserError("--subnet", str(e), "give a network in CIDR form, e.g. 10.97.0.0/24") from None
        if not subnet.is_private:
            raise UserError("--subnet", f"{subnet} is not a private network", "use e.g. 10.97.0.0/24")
        variables = prepare(args.nodes, args.state.resolve(), subnet, args.bridge)
    except UserError as e:
        print(f"local-cluster: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for key, value in variables.items():
        print(f"{key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
