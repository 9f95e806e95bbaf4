"""The cluster file: golden rendering of the Pi 5 example, one clear error line per bad file, atomic writes.

Regenerate the golden files after an intended template change with:
    UPDATE_GOLDEN=1 pytest tests/test_cluster_render.py
"""

from __future__ import annotations

import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarm_hpc.errors import UserError
from swarm_hpc.ops.cluster import load_cluster, render_cluster, write_rendered
from swarm_hpc.ops.cluster.cli import cluster
from swarm_hpc.ops.cluster.local import local_cluster_toml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "slurm" / "examples" / "pi5-cluster.toml"
GOLDEN = Path(__file__).resolve().parent / "golden" / "cluster"


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


BLADES = ["pi1", "pi2", "pi3", "pi4"]
BOOT_FILES = ["config.txt.append", "meta-data", "network-config", "user-data"]
EXPECTED = sorted(["cgroup.conf", "hosts", "inventory.yml", "slurm.conf"] + [f"boot/{b}/{f}" for b in BLADES for f in BOOT_FILES])


def tree(folder: Path) -> dict[str, str]:
    """{relative path: text} of every file below `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_example_matches_golden_files() -> None:
    files = render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name)
    assert sorted(files) == EXPECTED
    if os.environ.get("UPDATE_GOLDEN") == "1":
        for name, text in files.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text)
    assert sorted(tree(GOLDEN)) == EXPECTED, "tests/golden/cluster holds files the renderer no longer writes"
    for name, text in files.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from tests/golden/cluster/{name}"


def test_render_command_writes_the_golden_files(tmp_path: Path) -> None:
    out = tmp_path / "pi5"
    result = runner().invoke(cluster, ["render", str(EXAMPLE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert tree(out) == tree(GOLDEN)
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in out.rglob("*") if p.is_file())
    # Rendering again into the same folder replaces it.
    result = runner().invoke(cluster, ["render", str(EXAMPLE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pi5"]  # no temp folders left behind


def test_inventory_is_yaml_with_both_groups() -> None:
    yaml = pytest.importorskip("yaml")
    inventory = yaml.safe_load(render_cluster(load_cluster(EXAMPLE))["inventory.yml"])
    groups = inventory["all"]["children"]
    assert list(groups["controller"]["hosts"]) == ["pi1"]
    assert list(groups["blades"]["hosts"]) == ["pi1", "pi2", "pi3", "pi4"]
    assert groups["blades"]["hosts"]["pi3"]["memory_mb"] == 15800
    assert inventory["all"]["vars"]["admin_ssh_public_key"].startswith("ssh-ed25519 AAAA")


def test_help_texts() -> None:
    result = runner().invoke(cluster, ["--help"])
    assert result.exit_code == 0 and "render" in result.output and "cluster file" in result.output
    result = runner().invoke(cluster, ["render", "--help"])
    assert result.exit_code == 0 and "CLUSTER_FILE" in result.output and "--out DIR" in result.output


EXAMPLE_TEXT = EXAMPLE.read_text()
SSH_LINE = next(line for line in EXAMPLE_TEXT.splitlines() if line.startswith("ssh_public_key"))
CONTROLLER = EXAMPLE_TEXT[EXAMPLE_TEXT.index("[controller]") :].split("\n\n")[0]

# (id, text to replace in the example, replacement, field named in the error, words in the error)
BAD = [
    ("duplicate-name", 'name = "pi2"', 'name = "pi3"', "blades[2].name", "duplicate name 'pi3'"),
    ("duplicate-address", '"10.42.0.12"', '"10.42.0.13"', "blades[2].address", "duplicate address 10.42.0.13"),
    ("outside-subnet", '"10.42.0.14"', '"10.43.0.14"', "blades[3].address", "outside network.subnet"),
    ("gateway-outside", 'gateway = "10.42.0.1"', 'gateway = "192.168.1.1"', "network.gateway", "outside"),
    ("controller-outside", CONTROLLER, '[controller]\nname = "head"\naddress = "10.9.0.11"', "controller.address",
     "outside"),
    ("zero-cpus", "cpus = 4", "cpus = 0", "blades[0].cpus", "greater than or equal to 1"),
    ("cpus-not-int", "cpus = 4", 'cpus = "four"', "blades[0].cpus", "valid integer"),
    ("missing-ssh-key", SSH_LINE, "", "admin.ssh_public_key", "required field is missing"),
    ("truncated-ssh-key", SSH_LINE, 'ssh_public_key = "ssh-ed25519 AAAAC3Nz"', "admin.ssh_public_key",
     "copy/paste damage"),
    ("not-base64-ssh-key", SSH_LINE, 'ssh_public_key = "ssh-ed25519 AAAA*C3Nz"', "admin.ssh_public_key", "base64"),
    ("not-an-ssh-key", SSH_LINE, 'ssh_public_key = "hello"', "admin.ssh_public_key", "not an OpenSSH public key"),
    ("private-key", SSH_LINE, 'ssh_public_key = "-----BEGIN OPENSSH PRIVATE KEY-----"', "admin.ssh_public_key",
     "PRIVATE key"),
    ("unknown-node", 'nodes = ["pi3", "pi4"]', 'nodes = ["pi3", "pi5"]', "partitions[1].nodes", "unknown node 'pi5'"),
    ("two-defaults", 'max_time = "12:00:00"', 'max_time = "12:00:00"\ndefault = true', "partitions",
     "several default partitions"),
    ("bad-time", '"12:00:00"', '"12 hours"', "partitions[1].max_time", "not a SLURM time limit"),
    ("typo-field", 'models = ["smollm2", "gemma3"]', 'model = ["smollm2"]', "blades[0].model", "did you mean `models`"),
    ("bad-subnet", '"10.42.0.0/24"', '"10.42.0.0/33"', "network.subnet", "network"),
    ("bad-storage", 'mode = "nfs"', 'mode = "ceph"', "storage.mode", "'nfs' or 'local'"),
    ("bad-mpi", 'mpi_default = "pmix"', 'mpi_default = "openmpi"', "slurm.mpi_default", "pmix"),
    ("bad-hostname", 'name = "pi4"', 'name = "Pi_4"', "blades[3].name", "not a valid host name"),
    ("relative-state", 'state_dir = "/var/lib/swarm-hpc/slurm"', 'state_dir = "state"', "slurm.state_dir",
     "absolute path"),
    ("no-blades", "[[blades]]", "[[blade]]", "blade", "unknown field"),
    ("tiny-memory", "memory_mb = 7800 ", "memory_mb = 0 ", "blades[0].memory_mb", "greater than or equal to 64"),
    ("missing-admin-user", 'user = "admin"', "", "admin.user", "required field is missing"),
    ("same-ports", "slurmd_port = 6818", "slurmd_port = 6817", "slurm.slurmd_port", "same as ctld_port"),
    ("privileged-port", "ctld_port = 6817", "ctld_port = 80", "slurm.ctld_port", "greater than or equal to 1024"),
    ("bad-interface", 'interface = "eth0"', 'interface = "eth 0"', "network.interface",
     "not a network interface name"),
    ("bad-package", '"python3-apt"', '"Python3 APT"', "boot.packages[1]", "not a Debian package name"),
    ("duplicate-package", '"rsync"]', '"rsync", "sudo"]', "boot.packages", "'sudo' is listed twice"),
    ("bad-config-txt", '["dtparam=pciex1_gen=3"]', '["dtparam pciex1"]', "boot.config_txt[0]",
     "not a config.txt line"),
    ("bad-timezone", 'timezone = "UTC"', 'timezone = "Mars Base"', "boot.timezone", "not a time zone name"),
    ("boot-typo", "wifi = false", "wify = false", "boot.wify", "did you mean `wifi`"),
    ("toml-syntax", 'name = "pi5"', 'name = "pi5', "", "not valid TOML"),
    # An alias of the blade at the controller's address: slurmctld on pi1 would refuse "slurmctld" in
    # SlurmctldHost, and Ansible would name that one machine twice.
    ("controller-alias", CONTROLLER, '[controller]\nname = "slurmctld"\naddress = "10.42.0.11"', "controller.name",
     "'slurmctld' is another name for blade 'pi1'"),
    # A blade on the router's address would route through itself.
    ("blade-on-gateway", '"10.42.0.12"', '"10.42.0.1"', "blades[1].address", "is network.gateway"),
]


@pytest.mark.parametrize("old,new,field,words", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_cluster_file_gives_one_clear_line(tmp_path: Path, old: str, new: str, field: str, words: str) -> None:
    assert old in EXAMPLE_TEXT
    bad = tmp_path / "bad-cluster.toml"
    bad.write_text(EXAMPLE_TEXT.replace(old, new, 1))
    out = tmp_path / "out"
    result = runner().invoke(cluster, ["render", str(bad), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(f"swarm-hpc: error: {bad}: ") and words in line, line
    if field:
        assert f": {field}: " in line, line
    assert "(fix: " in line, line
    assert "Traceback" not in result.output and not out.exists()


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    result = runner().invoke(cluster, ["render", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    missing = tmp_path / "nope.toml"
    assert result.stderr.strip() == f"swarm-hpc: error: {missing}: file not found (fix: check the path)"


def test_out_folder_with_other_files_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = runner().invoke(cluster, ["render", str(EXAMPLE), "--out", str(out)])
    assert result.exit_code == 2 and "already holds other files (precious.txt)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_failed_write_leaves_previous_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    write_rendered({"a.conf": "old a", "b.conf": "old b"}, out)
    real_write = Path.write_text
    calls = []

    def failing_write(self: Path, text: str, *args: object, **kwargs: object) -> int:
        calls.append(self.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(self, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError):
        write_rendered({"a.conf": "new a", "b.conf": "new b"}, out)
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.conf": "old a", "b.conf": "old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_controller_on_a_blade_has_that_blades_name(tmp_path: Path) -> None:
    """The controller may be one of the blades (same address), then under the blade's own name: slurmctld starts
    only on a host whose name is in SlurmctldHost, and Ansible names each inventory host after itself."""
    text = EXAMPLE_TEXT.replace('[controller]\nname = "pi1"', '[controller]\nname = "head"')
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"controller.name: 'head' is another name for blade 'pi1' .*"
                                        r"\(fix: name the controller 'pi1'"):
        load_cluster(path)
    path.write_text(EXAMPLE_TEXT.replace('name = "pi2"', 'name = "pi1"'))  # the controller's name, another address
    with pytest.raises(UserError, match=r"blades\[1\].name: duplicate name 'pi1'"):
        load_cluster(path)
    assert load_cluster(EXAMPLE).controller.name == load_cluster(EXAMPLE).blades[0].name == "pi1"


def test_controller_may_be_the_router(tmp_path: Path) -> None:
    """A head node of its own (not a blade) may route for the cluster: the gateway may be its address."""
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE_TEXT.replace(CONTROLLER, '[controller]\nname = "head"\naddress = "10.42.0.1"'))
    described = load_cluster(path)
    assert described.controller.address == described.network.gateway


@pytest.mark.parametrize("nodes", [1, 3])
def test_local_cluster_file_renders(tmp_path: Path, nodes: int) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(local_cluster_toml(nodes, tmp_path, IPv4Network("10.97.0.0/24"), "myhost", "swarmbr0"))
    described = load_cluster(path)
    conf = render_cluster(described)["slurm.conf"]
    assert f"SlurmctldHost=myhost({'127.0.0.1' if nodes == 1 else '10.97.0.1'})" in conf
    assert conf.count("NodeName=") == nodes
    assert f"TaskProlog={tmp_path}/etc/task_prolog.sh" in conf
    assert "task_prolog.sh" in render_cluster(described)


# --- per-blade boot files -----------------------------------------------------------------------------------


def test_no_admin_means_no_boot_files(tmp_path: Path) -> None:
    start, end = EXAMPLE_TEXT.index("[admin]"), EXAMPLE_TEXT.index("[storage]")
    path = tmp_path / "no-admin.toml"
    path.write_text(EXAMPLE_TEXT[:start] + EXAMPLE_TEXT[end:])
    out = tmp_path / "out"
    result = runner().invoke(cluster, ["render", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no [admin]: no boot files" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["cgroup.conf", "hosts", "inventory.yml", "slurm.conf"]
    from swarm_hpc.ops.cluster.render import render_boot

    described = load_cluster(path)
    with pytest.raises(UserError, match=r"admin: boot files need an admin login"):
        render_boot(described, described.blades[0], source=path.name)


def test_boot_files_follow_the_cluster_file(tmp_path: Path) -> None:
    # No gateway and no DNS: no default route and no nameservers; Wi-Fi wanted: no disable-wifi.
    gateway = next(line for line in EXAMPLE_TEXT.splitlines(keepends=True) if line.startswith("gateway = "))
    text = EXAMPLE_TEXT.replace(gateway, "")
    text = text.replace('dns = ["10.42.0.1", "1.1.1.1"]\n', "").replace("wifi = false ", "wifi = true ")
    path = tmp_path / "isolated.toml"
    path.write_text(text)
    files = render_cluster(load_cluster(path), source=path.name)
    net = files["boot/pi3/network-config"]
    assert "addresses: [\"10.42.0.13/24\"]" in net and "routes" not in net and "nameservers" not in net
    config = files["boot/pi3/config.txt.append"]
    assert "disable-wifi" not in config and "dtoverlay=disable-bt" in config
    assert config.startswith("# BEGIN swarm-hpc\n") and config.endswith("# END swarm-hpc\n")
    # The instance id changes with the files, so cloud-init runs again on a re-customized image.
    before = render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name)
    ids = {f["boot/pi3/meta-data"].splitlines()[2] for f in (files, before)}
    assert len(ids) == 2
    assert before["boot/pi1/meta-data"] != before["boot/pi2/meta-data"]


def test_user_data_of_every_blade() -> None:
    yaml = pytest.importorskip("yaml")
    files = render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name)
    for blade, address in (("pi1", "10.42.0.11"), ("pi4", "10.42.0.14")):
        text = files[f"boot/{blade}/user-data"]
        assert text.startswith("#cloud-config\n")
        data = yaml.safe_load(text)
        assert data["hostname"] == blade and data["ssh_pwauth"] is False and data["disable_root"] is True
        (user,) = data["users"]
        assert user["name"] == "admin" and user["lock_passwd"] is True and user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
        assert user["ssh_authorized_keys"][0].startswith("ssh-ed25519 AAAAC3Nz")
        assert data["packages"] == ["python3", "python3-apt", "sudo", "openssh-server", "rsync"]
        written = {f["path"]: f["content"] for f in data["write_files"]}
        assert "# BEGIN swarm-hpc cluster pi5\n10.42.0.11\tpi1\n" in written["/etc/hosts"]
        assert "PasswordAuthentication no" in written["/etc/ssh/sshd_config.d/90-swarm-hpc.conf"]
        assert "memlock\tunlimited" in written["/etc/security/limits.d/90-swarm-hpc-memlock.conf"]
        network = yaml.safe_load(files[f"boot/{blade}/network-config"])
        assert network["ethernets"]["eth0"]["addresses"] == [f"{address}/24"]
        meta = yaml.safe_load(files[f"boot/{blade}/meta-data"])
        assert meta["local-hostname"] == blade and meta["instance-id"].startswith(f"swarm-hpc-pi5-{blade}-")


def test_cloud_init_accepts_every_blades_files(tmp_path: Path) -> None:
    import shutil

    from swarm_hpc.ops.images.validate import validate_boot_dir

    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (apt-get install cloud-init)")
    out = tmp_path / "pi5"
    write_rendered(render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name), out)
    for blade in BLADES:
        validation = validate_boot_dir(out / "boot" / blade)
        assert validation.checked and validation.ok, (blade, validation.problems)


# --- memory: scheduled (CR_Core_Memory) and, on the boards, enforced (cgroups) ---------------------------------


def conf_lines(conf: str, key: str) -> list[dict[str, str]]:
    """Every `key=...` line of a slurm.conf as {key: value}, as SLURM reads its `Key=Value Key=Value` lines."""
    return [dict(word.split("=", 1) for word in line.split()) for line in conf.splitlines()
            if line.startswith(f"{key}=")]


def conf_value(conf: str, key: str) -> str:
    (line,) = conf_lines(conf, key)
    return line[key]


def test_memory_is_a_consumable_resource_with_room_for_the_os() -> None:
    conf = render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name)["slurm.conf"]
    assert conf_value(conf, "SelectType") == "select/cons_tres"
    assert conf_value(conf, "SelectTypeParameters") == "CR_Core_Memory"
    nodes = {line["NodeName"]: line for line in conf_lines(conf, "NodeName")}
    # memory_mb less the OS's share: 512 MB by default, 768 MB on pi1, which also runs slurmctld and the NFS server
    assert {name: int(n["RealMemory"]) for name, n in nodes.items()} == {
        "pi1": 7800 - 768, "pi2": 7800 - 512, "pi3": 15800 - 512, "pi4": 15800 - 512}
    # A job that asks for no memory gets a CPU's share of its partition's smallest node.
    parts = {line["PartitionName"]: line for line in conf_lines(conf, "PartitionName")}
    assert int(parts["main"]["DefMemPerCPU"]) == (7800 - 768) // 4
    assert int(parts["large"]["DefMemPerCPU"]) == (15800 - 512) // 4


def test_os_memory_is_set_for_the_cluster_or_per_blade(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE_TEXT.replace("os_memory_mb = 512 ", "os_memory_mb = 1000 "))
    conf = render_cluster(load_cluster(path))["slurm.conf"]
    nodes = {line["NodeName"]: int(line["RealMemory"]) for line in conf_lines(conf, "NodeName")}
    assert nodes == {"pi1": 7800 - 768, "pi2": 6800, "pi3": 14800, "pi4": 14800}


@pytest.mark.parametrize("old,new,field", [
    ("memory_mb = 7800 ", "memory_mb = 700 ", "blades[0].os_memory_mb"),  # 700 - 768: pi1's own share
    ('name = "pi2"\naddress = "10.42.0.12"\ncpus = 4\nmemory_mb = 7800',
     'name = "pi2"\naddress = "10.42.0.12"\ncpus = 4\nmemory_mb = 700', "blades[1].memory_mb"),
    ("os_memory_mb = 512 ", "os_memory_mb = 7700 ", "slurm.os_memory_mb"),
], ids=["blade-share", "small-board", "cluster-share"])
def test_too_little_memory_left_for_jobs_is_one_line(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in EXAMPLE_TEXT
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE_TEXT.replace(old, new, 1))
    result = runner().invoke(cluster, ["render", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert f"{bad}: {field}: " in line and "MB for jobs" in line and "(fix: " in line, line
    assert not (tmp_path / "out").exists()


def test_slurms_own_parser_reads_the_rendered_slurm_conf(tmp_path: Path) -> None:
    """scontrol parses slurm.conf before it would contact slurmctld; `show hostnames` never does, so this needs no
    running cluster. A bad key or value there is a "Parse error" and a non-zero exit."""
    import shutil
    import subprocess

    if shutil.which("scontrol") is None:
        pytest.skip("scontrol is not installed (apt-get install slurm-client)")
    local = tmp_path / "local.toml"  # the local test cluster's: no cgroups, a task prolog, three nodes
    local.write_text(local_cluster_toml(3, tmp_path, IPv4Network("10.97.0.0/24"), "myhost", "swarmbr0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for path, nodes in ((EXAMPLE, BLADES), (local, ["n1", "n2", "n3"])):
        out = tmp_path / path.stem
        write_rendered(render_cluster(load_cluster(path), source=path.name), out)
        proc = subprocess.run(["scontrol", "show", "hostnames", ",".join(nodes)], capture_output=True, text=True,
                              timeout=30, env={**env, "SLURM_CONF": str(out / "slurm.conf")}, check=False)
        assert proc.returncode == 0 and proc.stdout.split() == nodes, proc.stderr
        assert proc.stderr == "", proc.stderr


def test_local_cluster_nodes_have_this_machines_memory(tmp_path: Path) -> None:
    """The local test cluster's nodes say what `slurmd -C` finds on this machine (less the OS's share), so a job
    asking for memory this machine has is not refused."""
    import shutil
    import subprocess

    path = tmp_path / "cluster.toml"
    path.write_text(local_cluster_toml(1, tmp_path, IPv4Network("10.97.0.0/24"), "myhost", "swarmbr0"))
    (node,) = conf_lines(render_cluster(load_cluster(path))["slurm.conf"], "NodeName")
    if shutil.which("slurmd") is None:
        pytest.skip("slurmd is not installed")
    found = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    real = int(found.split("RealMemory=")[1].split()[0])
    assert int(node["RealMemory"]) == real - 512


def slurm_plugins() -> set[str]:
    """The plugins of the installed SLURM, as slurm.conf names them (task_cgroup.so -> task/cgroup)."""
    import glob

    return {Path(p).stem.replace("_", "/", 1) for p in glob.glob("/usr/lib/*/slurm-wlm/*.so")}


def cgroup_conf_parameters() -> set[str]:
    """The parameters that cgroup.conf(5) of the installed SLURM documents (SLURM parses cgroup.conf only in
    slurmd, so its own man page is what this file can be checked against without a running node)."""
    import gzip
    import re

    page = Path("/usr/share/man/man5/cgroup.conf.5.gz")
    if not page.exists():
        pytest.skip("cgroup.conf(5) is not installed (apt-get install slurm-client)")
    return set(re.findall(r"^\\fB(\w+)\\fR=", gzip.decompress(page.read_bytes()).decode(), flags=re.M))


def test_boards_enforce_memory_with_cgroups() -> None:
    files = render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name)
    conf = files["slurm.conf"]
    assert conf_value(conf, "TaskPlugin") == "task/cgroup"
    assert conf_value(conf, "ProctrackType") == "proctrack/cgroup"
    settings = dict(line.split("=", 1) for line in files["cgroup.conf"].splitlines() if line and line[0] != "#")
    assert settings["ConstrainRAMSpace"] == "yes" and settings["AllowedRAMSpace"] == "100"
    assert settings["CgroupPlugin"] == "autodetect"
    assert set(settings) <= cgroup_conf_parameters()
    plugins = slurm_plugins()
    if plugins:  # the plugins slurm.conf names are those the installed SLURM has
        assert {"task/cgroup", "proctrack/cgroup", "select/cons_tres"} <= plugins
    # ... and the playbook is told to install cgroup.conf and to check the memory controller
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(files["inventory.yml"])["all"]["vars"]["slurm_cgroups"] is True


def test_no_cgroups_where_the_nodes_cannot_have_them(tmp_path: Path) -> None:
    """`cgroups = false` (containers, the local test cluster): memory is still scheduled, not enforced."""
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE_TEXT.replace("cgroups = true ", "cgroups = false "))
    files = render_cluster(load_cluster(path))
    assert "cgroup.conf" not in files
    conf = files["slurm.conf"]
    assert conf_value(conf, "TaskPlugin") == "task/none"
    assert conf_value(conf, "ProctrackType") == "proctrack/linuxproc"
    assert conf_value(conf, "SelectTypeParameters") == "CR_Core_Memory"
    local = tmp_path / "local.toml"
    local.write_text(local_cluster_toml(3, tmp_path, IPv4Network("10.97.0.0/24"), "myhost", "swarmbr0"))
    assert "cgroup.conf" not in render_cluster(load_cluster(local))
