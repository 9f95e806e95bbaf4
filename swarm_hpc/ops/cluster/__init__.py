"""The cluster file: one TOML description of a SLURM cluster (controller, blades, network, storage, partitions),
validated by `schema.load_cluster` and rendered by `render.render_cluster` into slurm.conf, hosts and an Ansible
inventory. The same file drives the local test cluster (`local.py`, slurm/local-cluster.sh) and real boards."""

from swarm_hpc.ops.cluster.render import render_cluster, write_rendered
from swarm_hpc.ops.cluster.schema import Cluster, load_cluster

__all__ = ["Cluster", "load_cluster", "render_cluster", "write_rendered"]
