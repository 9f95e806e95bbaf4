"""The cluster file (TOML): what machines a SLURM cluster has and how they are wired.

A minimal file names the cluster, its controller, its blades and its network:

    name = "pi5"
    [controller]
    name = "pi-ctl"
    address = "10.42.0.10"
    [[blades]]
    name = "pi1"
    address = "10.42.0.11"
    cpus = 4
    memory_mb = 7800
    [network]
    subnet = "10.42.0.0/24"

Optional tables: `[admin]` (login user and SSH key, needed to provision real boards and to render their boot
files), `[storage]` (NFS export from the controller or local disks), `[[partitions]]` (default: one partition
`main` with all nodes), `[slurm]` (MPI plugin, ports, state and config folders, the memory kept for the OS, cgroups)
and `[boot]` (what the per-blade
boot files set up on the first boot: packages, time zone, Wi-Fi/Bluetooth, config.txt lines). See
slurm/examples/pi5-cluster.toml for every field.

`load_cluster` checks each field with pydantic (via `tomlfile.load_toml_model`) and then the file as a whole
(`check_cluster`: unique names and addresses, a controller on a blade under that blade's name, addresses inside
the subnet, no blade on the gateway's address, partitions naming known compute blades, one default partition); every problem is a one-line `UserError` naming the file, the field and a fix.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from swarm_hpc.core.tomlfile import STRICT, load_toml_model
from swarm_hpc.errors import UserError


def _fix(text: str) -> dict[str, Any]:
    """Field metadata read by `tomlfile` to add a fix hint to an error about that field."""
    return {"fix": text}


_HOST_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IFACE_RE = re.compile(r"^[a-z][a-z0-9._-]{0,14}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,}$")
_TZ_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2}$")
# config.txt: a `[filter]` section line such as `[pi5]`, or `key=value` (Raspberry Pi's config.txt documentation)
_CONFIG_TXT_RE = re.compile(r"^(\[[A-Za-z0-9_=:.,-]+\]|[a-z][a-z0-9_]*(:[0-9])?=[^\s#][^#]*)$")
_TIME_RE = re.compile(r"^(INFINITE|UNLIMITED|\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")
_SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _host_name(value: str) -> str:
    if not _HOST_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid host name (lowercase letters, digits and '-', starting with a letter, "
            "at most 63 characters)"
        )
    return value


def _user_name(value: str) -> str:
    if not _USER_RE.match(value):
        raise ValueError(f"{value!r} is not a valid Unix user name")
    return value


def _model_name(value: str) -> str:
    if not _MODEL_RE.match(value):
        raise ValueError(f"{value!r} is not a valid model name (letters, digits, '.', '_' and '-')")
    return value


def _interface(value: str) -> str:
    if not _IFACE_RE.match(value):
        raise ValueError(f"{value!r} is not a network interface name (e.g. eth0, end0)")
    return value


def _package(value: str) -> str:
    if not _PACKAGE_RE.match(value):
        raise ValueError(f"{value!r} is not a Debian package name")
    return value


def _timezone(value: str) -> str:
    if not _TZ_RE.match(value):
        raise ValueError(f"{value!r} is not a time zone name (e.g. UTC or Europe/Berlin)")
    return value


def _config_txt_line(value: str) -> str:
    if not _CONFIG_TXT_RE.match(value.strip()):
        raise ValueError(f"{value!r} is not a config.txt line (`key=value` or a `[filter]` such as `[pi5]`)")
    return value.strip()


def _slurm_time(value: str) -> str:
    if not _TIME_RE.match(value):
        raise ValueError(f"{value!r} is not a SLURM time limit")
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an absolute path without spaces")
    return value.rstrip("/") or "/"


def _ssh_public_key(value: str) -> str:
    if "PRIVATE KEY" in value:
        raise ValueError("this is a PRIVATE key; never put it in a cluster file")
    parts = value.split()
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise ValueError("not an OpenSSH public key line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data (second word) is not valid base64") from None
    # The key data starts with its own type as a length-prefixed string: a cheap check that it is not garbage.
    length = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + length] != parts[0].encode():
        raise ValueError(f"the key data does not hold a {parts[0]} key (copy/paste damage?)")
    return " ".join(parts)


HostName = Annotated[str, AfterValidator(_host_name)]
UserName = Annotated[str, AfterValidator(_user_name)]
ModelName = Annotated[str, AfterValidator(_model_name)]
SlurmTime = Annotated[str, AfterValidator(_slurm_time)]
InterfaceName = Annotated[str, AfterValidator(_interface)]
PackageName = Annotated[str, AfterValidator(_package)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
ConfigTxtLine = Annotated[str, AfterValidator(_config_txt_line)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
SshPublicKey = Annotated[str, AfterValidator(_ssh_public_key)]
Role = Literal["compute", "storage", "login"]


# What a blade keeps for the OS and the daemons (kernel, sshd, munged, slurmd and a slurmstepd per job step, NFS,
# chrony), with room to spare for the page cache; jobs get the rest (RealMemory in slurm.conf).
DEFAULT_OS_MEMORY_MB = 512
# Less than this left for jobs is a mistake: one rank of the smallest bundled model (SmolLM2) peaks at 240 MB.
MIN_JOB_MEMORY_MB = 256


class Controller(BaseModel):
    """The host running slurmctld (and munge, and the NFS server when storage.mode = "nfs")."""

    model_config = STRICT
    name: HostName = Field(json_schema_extra=_fix("use the controller's short host name, e.g. `pi-ctl`"))
    address: IPv4Address = Field(json_schema_extra=_fix("give an IPv4 address inside network.subnet"))


class Blade(BaseModel):
    """One board. Blades with the role "compute" become SLURM nodes."""

    model_config = STRICT
    name: HostName = Field(json_schema_extra=_fix("use the blade's short host name, e.g. `pi1`"))
    address: IPv4Address = Field(json_schema_extra=_fix("give an IPv4 address inside network.subnet"))
    cpus: int = Field(ge=1, le=4096, json_schema_extra=_fix("give the number of CPU cores, e.g. 4 on a Pi 5"))
    memory_mb: int = Field(
        ge=64, json_schema_extra=_fix("give the board's RAM in MB as `slurmd -C` prints it (RealMemory), or a little "
                                      "less, e.g. 7800 on an 8 GB Pi 5"),
    )
    os_memory_mb: int | None = Field(
        default=None, ge=0,
        json_schema_extra=_fix("give MB kept for the OS and daemons on this blade, or leave it out for "
                               "slurm.os_memory_mb"),
    )
    roles: tuple[Role, ...] = Field(
        default=("compute",), min_length=1, json_schema_extra=_fix('use roles from "compute", "storage", "login"')
    )
    models: tuple[ModelName, ...] = Field(
        default=(), json_schema_extra=_fix("list the model names this blade keeps on disk, e.g. [\"gemma3\"]")
    )


class Network(BaseModel):
    """The cluster's private IPv4 network."""

    model_config = STRICT
    subnet: IPv4Network = Field(json_schema_extra=_fix('give a network in CIDR form, e.g. "10.42.0.0/24"'))
    gateway: IPv4Address | None = Field(
        default=None, json_schema_extra=_fix("give the router's address inside the subnet, or leave it out")
    )
    dns: tuple[IPv4Address, ...] = Field(default=(), json_schema_extra=_fix('list IPv4 addresses, e.g. ["1.1.1.1"]'))
    interface: InterfaceName = Field(
        default="eth0", json_schema_extra=_fix('give the wired interface of the blades, "eth0" on a Raspberry Pi')
    )


class Admin(BaseModel):
    """The login created on every board (used by Ansible) and the SSH key allowed to log in."""

    model_config = STRICT
    user: UserName = Field(json_schema_extra=_fix("use a lowercase Unix user name, e.g. `admin`"))
    ssh_public_key: SshPublicKey = Field(
        json_schema_extra=_fix("paste one line of your ~/.ssh/id_ed25519.pub, e.g. `ssh-ed25519 AAAA... you@host`")
    )


class Storage(BaseModel):
    """Where job files live: "nfs" = exported by the controller at `path` and mounted at `path` on every blade;
    "local" = each blade's own disk at `path`."""

    model_config = STRICT
    mode: Literal["nfs", "local"] = Field(default="nfs", json_schema_extra=_fix('use "nfs" or "local"'))
    path: AbsolutePath = Field(default="/storage", json_schema_extra=_fix('give an absolute path, e.g. "/storage"'))


class Partition(BaseModel):
    model_config = STRICT
    name: HostName = Field(json_schema_extra=_fix("use a short lowercase name, e.g. `main`"))
    nodes: Literal["ALL"] | tuple[HostName, ...] = Field(
        default="ALL", json_schema_extra=_fix('list blade names, e.g. ["pi1", "pi2"], or "ALL"')
    )
    default: bool = False
    max_time: SlurmTime = Field(
        default="INFINITE",
        json_schema_extra=_fix('use SLURM time syntax, e.g. "30", "2:00:00", "1-00:00:00" or "INFINITE"'),
    )


class SlurmOptions(BaseModel):
    model_config = STRICT
    mpi_default: Literal["pmix", "pmi2", "none"] = Field(
        default="pmix", json_schema_extra=_fix('use "pmix" for Open MPI (pmi2 for MPICH)')
    )
    state_dir: AbsolutePath = Field(
        default="/var/lib/swarm-hpc/slurm",
        json_schema_extra=_fix("give an absolute path for SLURM state, spool, pid and log files"),
    )
    config_dir: AbsolutePath = Field(
        default="/etc/slurm", json_schema_extra=_fix("give the absolute path where the rendered files are installed")
    )
    slurm_user: UserName = Field(default="slurm", json_schema_extra=_fix('use "slurm" (Debian) or "root"'))
    sched_interval: int = Field(
        default=5, ge=1, le=300,
        json_schema_extra=_fix("give seconds between scheduling passes (1 to 300), e.g. 5"),
    )
    cgroups: bool = Field(
        default=True,
        json_schema_extra=_fix("true on boards with systemd and the memory cgroup controller (a Pi's cmdline.txt "
                               "needs cgroup_enable=memory); false in containers"),
    )
    node_tmp: bool = Field(
        default=False,
        json_schema_extra=_fix("true only when several nodes share one /tmp (virtual nodes on one machine)"),
    )
    ctld_port: int = Field(
        default=6817, ge=1024, le=65535, json_schema_extra=_fix("give a TCP port from 1024 to 65535 (SLURM's: 6817)")
    )
    slurmd_port: int = Field(
        default=6818, ge=1024, le=65535, json_schema_extra=_fix("give a TCP port from 1024 to 65535 (SLURM's: 6818)")
    )
    os_memory_mb: int = Field(
        default=DEFAULT_OS_MEMORY_MB, ge=0,
        json_schema_extra=_fix(f"give MB of every blade's memory kept for the OS and daemons (default "
                               f"{DEFAULT_OS_MEMORY_MB})"),
    )
    cred_expire: int = Field(
        default=120, ge=5, le=3600,
        json_schema_extra=_fix("seconds a job credential lives (SLURM's default 120); a requeued job waits this long"),
    )


DEFAULT_BOOT_PACKAGES = ("python3", "python3-apt", "sudo", "openssh-server", "rsync")


class Boot(BaseModel):
    """What the per-blade boot files (cloud-init user-data, network-config, meta-data and config.txt lines) set up
    on a blade's first boot. Ansible (ansible/site.yml) does everything else afterwards."""

    model_config = STRICT
    packages: tuple[PackageName, ...] = Field(
        default=DEFAULT_BOOT_PACKAGES,
        json_schema_extra=_fix('list Debian package names to install on the first boot, e.g. ["python3", "rsync"]'),
    )
    upgrade: bool = Field(default=False, json_schema_extra=_fix("true to upgrade all packages on the first boot"))
    timezone: TimeZone = Field(default="UTC", json_schema_extra=_fix('give a tz name, e.g. "UTC" or "Europe/Berlin"'))
    wifi: bool = Field(default=False, json_schema_extra=_fix("false turns Wi-Fi off (dtoverlay=disable-wifi)"))
    bluetooth: bool = Field(default=False, json_schema_extra=_fix("false turns Bluetooth off (dtoverlay=disable-bt)"))
    config_txt: tuple[ConfigTxtLine, ...] = Field(
        default=(),
        json_schema_extra=_fix('list extra config.txt lines, e.g. ["dtparam=pciex1_gen=3"] for a faster NVMe link'),
    )


def _default_partitions() -> tuple[Partition, ...]:
    return (Partition(name="main", nodes="ALL", default=True),)


class Cluster(BaseModel):
    model_config = STRICT
    name: HostName = Field(json_schema_extra=_fix("use a short lowercase name, e.g. `pi5`"))
    controller: Controller
    blades: tuple[Blade, ...] = Field(min_length=1, json_schema_extra=_fix("add at least one [[blades]] table"))
    network: Network
    admin: Admin | None = None
    storage: Storage = Field(default_factory=Storage)
    partitions: tuple[Partition, ...] = Field(
        default_factory=_default_partitions, min_length=1, json_schema_extra=_fix("add a [[partitions]] table")
    )
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)
    boot: Boot = Field(default_factory=Boot)

    @property
    def compute_blades(self) -> tuple[Blade, ...]:
        """The blades that are SLURM nodes."""
        return tuple(b for b in self.blades if "compute" in b.roles)

    def blade(self, name: str) -> Blade | None:
        return next((b for b in self.blades if b.name == name), None)

    def os_memory_mb(self, blade: Blade) -> int:
        """MB kept for the OS on `blade`: its own `os_memory_mb`, else the cluster's (`slurm.os_memory_mb`)."""
        return self.slurm.os_memory_mb if blade.os_memory_mb is None else blade.os_memory_mb

    def job_memory_mb(self, blade: Blade) -> int:
        """MB that jobs may take on `blade`: slurm.conf's RealMemory, which SLURM schedules (CR_Core_Memory)."""
        return blade.memory_mb - self.os_memory_mb(blade)

    def def_mem_per_cpu(self, partition: Partition) -> int:
        """DefMemPerCPU of `partition`: what a job that asks for no memory gets per CPU, a CPU's share of the
        partition's smallest node, so that such jobs can fill every CPU of any of its nodes."""
        nodes = [b for b in self.compute_blades if b.name in self.partition_nodes(partition)]
        return max(1, min(self.job_memory_mb(b) // b.cpus for b in nodes))  # 0 would mean "unlimited"

    def partition_nodes(self, partition: Partition) -> tuple[str, ...]:
        if partition.nodes == "ALL":
            return tuple(b.name for b in self.compute_blades)
        return partition.nodes


def load_cluster(path: Path) -> Cluster:
    """Read and fully check a cluster file; raises UserError (one line) on the first problem."""
    cluster = load_toml_model(Path(path), Cluster)
    check_cluster(cluster, str(path))
    return cluster


def check_cluster(cluster: Cluster, where: str) -> None:
    """Checks across fields that pydantic cannot express per field."""
    _check_names_and_addresses(cluster, where)
    _check_network(cluster, where)
    _check_blades(cluster, where)
    _check_partitions(cluster, where)
    _check_slurm_and_boot(cluster, where)


def _check_names_and_addresses(cluster: Cluster, where: str) -> None:
    ctl = cluster.controller
    names: dict[str, str] = {ctl.name: "controller.name"}
    addresses: dict[IPv4Address, str] = {ctl.address: "controller.address"}
    for i, blade in enumerate(cluster.blades):
        # The controller may also be a blade: that blade has the controller's address and then its name too, since
        # slurmctld starts only on a host whose own name is in SlurmctldHost ("This host (pi1) not a valid
        # controller"), and Ansible names every inventory host after itself (two names would fight over one host).
        # Not on loopback: there the blades are virtual nodes of one machine (slurmd -N n1), as in the local test
        # cluster, and the controller has the machine's own name.
        same_host_as_controller = blade.address == ctl.address
        if same_host_as_controller and blade.name != ctl.name and not ctl.address.is_loopback:
            raise UserError(
                where, f"{ctl.name!r} is another name for blade {blade.name!r} (same address {ctl.address}); "
                f"slurmctld would refuse to start on {blade.name}",
                f"name the controller {blade.name!r}, or give it an address of its own", "controller.name",
            )
        seen = names.get(blade.name)
        if seen and not (seen == "controller.name" and same_host_as_controller):
            fix = "give every host its own name"
            if seen == "controller.name":
                fix += f"; a blade that is also the controller must have its address {ctl.address}"
            raise UserError(where, f"duplicate name {blade.name!r} (also used by {seen})", fix, f"blades[{i}].name")
        names[blade.name] = f"blades[{i}].name"
        seen = addresses.get(blade.address)
        if seen and seen != "controller.address":
            raise UserError(
                where, f"duplicate address {blade.address} (also used by {seen})",
                "give every blade its own address", f"blades[{i}].address",
            )
        addresses[blade.address] = f"blades[{i}].address"


def _check_network(cluster: Cluster, where: str) -> None:
    net = cluster.network.subnet
    gateway = cluster.network.gateway
    for i, blade in enumerate(cluster.blades):
        # A blade's boot files give it a default route via the gateway: on the gateway's own address that route
        # points at itself. (A controller of its own may be the router: it gets no boot files.)
        if blade.address == gateway:
            raise UserError(
                where, f"{blade.address} is network.gateway, the router's address; the blade would route through "
                "itself", "give the blade another address, or set network.gateway to the router's",
                f"blades[{i}].address",
            )
    hosts: list[tuple[str, IPv4Address]] = [("controller.address", cluster.controller.address)]
    hosts += [(f"blades[{i}].address", b.address) for i, b in enumerate(cluster.blades)]
    if cluster.network.gateway is not None:
        hosts.append(("network.gateway", cluster.network.gateway))
    for field, address in hosts:
        if address not in net:
            raise UserError(
                where, f"address {address} is outside network.subnet {net}",
                f"use an address in {net} or widen network.subnet", field,
            )
        if net.prefixlen <= 30 and address in (net.network_address, net.broadcast_address):
            raise UserError(
                where, f"address {address} is the network or broadcast address of {net}",
                "use a host address", field,
            )


def _check_blades(cluster: Cluster, where: str) -> None:
    for i, blade in enumerate(cluster.blades):
        for kind, values in (("roles", blade.roles), ("models", blade.models)):
            dup = _first_duplicate(values)
            if dup is not None:
                raise UserError(where, f"{dup!r} is listed twice", "list it once", f"blades[{i}].{kind}")
        left = cluster.job_memory_mb(blade)
        if "compute" in blade.roles and left < MIN_JOB_MEMORY_MB:
            own = blade.os_memory_mb is not None
            field = f"blades[{i}].os_memory_mb" if own else f"blades[{i}].memory_mb"
            if not own and blade.memory_mb - MIN_JOB_MEMORY_MB >= DEFAULT_OS_MEMORY_MB:
                field = "slurm.os_memory_mb"  # the board is big enough for the default share; the share is too big
            raise UserError(
                where, f"{blade.name} has {blade.memory_mb} MB and keeps {cluster.os_memory_mb(blade)} MB for the OS, "
                f"which leaves {left} MB for jobs (at least {MIN_JOB_MEMORY_MB})",
                "give memory_mb as `slurmd -C` prints it (RealMemory) and keep os_memory_mb below it", field,
            )
    if not cluster.compute_blades:
        raise UserError(
            where, "no blade has the role \"compute\", so SLURM would have no nodes",
            'add "compute" to the roles of at least one blade', "blades",
        )


def _check_partitions(cluster: Cluster, where: str) -> None:
    all_names = {b.name for b in cluster.blades}
    compute = [b.name for b in cluster.compute_blades]
    seen: set[str] = set()
    for i, part in enumerate(cluster.partitions):
        if part.name in seen:
            raise UserError(where, f"duplicate partition {part.name!r}", "give each partition its own name",
                            f"partitions[{i}].name")
        seen.add(part.name)
        if part.nodes == "ALL":
            continue
        if not part.nodes:
            raise UserError(where, "a partition needs nodes", 'list blade names or use "ALL"', f"partitions[{i}].nodes")
        dup = _first_duplicate(part.nodes)
        if dup is not None:
            raise UserError(where, f"{dup!r} is listed twice", "list it once", f"partitions[{i}].nodes")
        for node in part.nodes:
            if node not in all_names:
                close = difflib.get_close_matches(node, compute, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserError(where, f"unknown node {node!r}", f"{hint}known compute blades: {', '.join(compute)}",
                                f"partitions[{i}].nodes")
            if node not in compute:
                raise UserError(where, f"blade {node!r} does not have the role \"compute\"",
                                'add "compute" to its roles or remove it from the partition', f"partitions[{i}].nodes")
    defaults = [p.name for p in cluster.partitions if p.default]
    if len(defaults) != 1:
        problem = f"several default partitions: {', '.join(defaults)}" if defaults else "no partition is the default"
        raise UserError(where, problem, "set `default = true` on exactly one partition", "partitions")


def _check_slurm_and_boot(cluster: Cluster, where: str) -> None:
    if cluster.slurm.ctld_port == cluster.slurm.slurmd_port:
        raise UserError(where, f"slurmd_port is the same as ctld_port ({cluster.slurm.ctld_port})",
                        "give slurmctld and slurmd different ports, e.g. 6817 and 6818", "slurm.slurmd_port")
    for kind, values in (("packages", cluster.boot.packages), ("config_txt", cluster.boot.config_txt)):
        dup = _first_duplicate(values)
        if dup is not None:
            raise UserError(where, f"{dup!r} is listed twice", "list it once", f"boot.{kind}")


def _first_duplicate(values: tuple[str, ...]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
