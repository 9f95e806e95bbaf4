"""Render a cluster file into the files a SLURM cluster needs, and write them atomically.

`render_cluster` is pure: a checked `Cluster` in, `{relative path: text}` out: slurm.conf, hosts, inventory.yml,
cgroup.conf (when `slurm.cgroups`: jobs held to the memory they were given) and, when the file has an `[admin]` table, per-blade boot files `boot/<blade>/{user-data, network-config,
meta-data, config.txt.append}` (`render_boot`: cloud-init's NoCloud seed for the boot partition plus lines for
config.txt; `swarm-hpc image customize` writes them into an image). The templates live in
swarm_hpc/templates/cluster/. `write_rendered` puts the files into a folder so that the folder is either the
old one or the complete new one, never half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from swarm_hpc.errors import UserError
from swarm_hpc.jinja import environment
from swarm_hpc.ops.cluster.schema import Blade, Cluster

EXECUTABLE = {"task_prolog.sh"}
# every top-level name render_cluster may produce
OUTPUTS = {"slurm.conf", "cgroup.conf", "hosts", "inventory.yml", "task_prolog.sh", "boot"}
# the per-blade boot files, in boot/<blade>/: cloud-init's NoCloud seed and the lines to append to config.txt
BOOT_FILES = ("user-data", "network-config", "meta-data", "config.txt.append")


def hosts_entries(cluster: Cluster) -> list[tuple[str, list[str]]]:
    """(address, names) for /etc/hosts: the controller first, then the blades; a shared address gets both names."""
    entries: dict[IPv4Address, list[str]] = {cluster.controller.address: [cluster.controller.name]}
    for blade in cluster.blades:
        names = entries.setdefault(blade.address, [])
        if blade.name not in names:
            names.append(blade.name)
    return [(str(address), names) for address, names in entries.items()]


def render_cluster(cluster: Cluster, source: str = "a cluster file") -> dict[str, str]:
    """All files for `cluster`: slurm.conf, hosts, inventory.yml (+ cgroup.conf when slurm.cgroups, + task_prolog.sh
    when slurm.node_tmp, + the boot files of every blade, as boot/<blade>/<file>, when the cluster has an admin
    login)."""
    env = environment()
    context = {"c": cluster, "source": source, "state": cluster.slurm.state_dir, "hosts": hosts_entries(cluster)}
    names = ["slurm.conf", "hosts", "inventory.yml"]
    if cluster.slurm.cgroups:
        names.append("cgroup.conf")
    if cluster.slurm.node_tmp:
        names.append("task_prolog.sh")
    files = {name: env.get_template(f"cluster/{name}.j2").render(context) for name in names}
    if cluster.admin is not None:
        for blade in cluster.blades:
            for name, text in render_boot(cluster, blade, source).items():
                files[f"boot/{blade.name}/{name}"] = text
    return files


def render_boot(cluster: Cluster, blade: Blade, source: str = "a cluster file") -> dict[str, str]:
    """The boot files of one blade (BOOT_FILES): cloud-init user-data (hostname, admin user with its SSH key and
    passwordless sudo, key-only sshd, /etc/hosts, memlock limits, first-boot packages), network-config (static
    address), meta-data (instance id, changes with the other two) and config.txt.append (Wi-Fi/Bluetooth off,
    extra lines). Needs `cluster.admin`."""
    if cluster.admin is None:
        raise UserError(source, "boot files need an admin login", "add an [admin] table with `user` and "
                        "`ssh_public_key`", "admin")
    env = environment()
    context: dict[str, Any] = {
        "c": cluster, "b": blade, "source": source, "hosts": hosts_entries(cluster),
        "sshd_config": env.get_template("cluster/boot/sshd.conf.j2").render(),
        "memlock_limits": env.get_template("cluster/boot/memlock.conf.j2").render(),
    }
    files = {name: env.get_template(f"cluster/boot/{name}.j2").render(context) for name in ("user-data", "network-config")}
    digest = hashlib.sha256((files["user-data"] + "\0" + files["network-config"]).encode()).hexdigest()[:12]
    context["digest"] = digest
    files["meta-data"] = env.get_template("cluster/boot/meta-data.j2").render(context)
    files["config.txt.append"] = env.get_template("cluster/boot/config.txt.append.j2").render(context)
    return {name: files[name] for name in BOOT_FILES}


def write_rendered(files: dict[str, str], out_dir: Path) -> None:
    """Replace `out_dir` by a folder holding exactly `files`, atomically (a temp folder, then renames).

    A folder holding files that are not ours (not in `files` nor a possible rendering output) is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(str(out_dir), "exists and is not a folder", "give a folder path to --out")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in files and p.name not in OUTPUTS)
        if foreign:
            raise UserError(
                str(out_dir), f"already holds other files ({', '.join(foreign[:3])})",
                "give an empty folder or one rendered before",
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        for name, text in files.items():
            path = tmp / name
            if path.parent != tmp:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o755 if name in EXECUTABLE else 0o644)
        tmp.chmod(0o755)
        if out_dir.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old)  # `old` is an empty folder, so this rename replaces it
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
