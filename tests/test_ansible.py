"""ansible/: syntax and lint of every playbook and role, and a real run of site.yml + check.yml on this machine.

The real run (marked slow, needs root and the Debian SLURM/munge packages) provisions this machine as a one-node
cluster through the no-systemd path: connection local, daemons started directly. It describes the machine in a
cluster file of its own (own state folder, config folder and ports), renders it with `swarm-hpc cluster render`,
runs ansible/site.yml twice (the second run must change nothing), runs ansible/check.yml (munge, sinfo idle,
srun, MPI hello, a tiny swarm as a batch job) and then submits one more swarm job itself. Only one SLURM/munge
can run on a machine: the shared local test cluster (tests/slurm_fixtures.py) is stopped first, and everything
the playbook started is stopped at the end, also after a failure.

Variables in `sandbox_vars` keep what is not under test off the shared machine's system files: /etc/hosts is a
copy, the venv, settings and models live in the test's folder, and llama-cpp-python comes from pip's wheel cache
(never compiled again). The admin user, its sudoers file, the memlock limits and the sshd drop-in are real and
removed afterwards when the test made them.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from slurm_fixtures import _CLUSTERS, SCRIPT, _missing
from tinygguf import write_tiny_gguf

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
EXAMPLE = REPO / "slurm" / "examples" / "pi5-cluster.toml"
BIN = Path(sys.executable).parent
MARKER = Path("/run/swarm-hpc-local-slurm")  # slurm/local-cluster.sh: which local cluster runs on this machine
TEST_USER = "swarmtest"
SENTENCE = "Clusters are fun."
PLAYBOOK_TIMEOUT = 900
REQUIRE = os.environ.get("SWARM_HPC_REQUIRE_SLURM") == "1"


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    if REQUIRE:
        pytest.fail(f"{name} is not installed (pip install ansible-core ansible-lint into the venv)")
    pytest.skip(f"{name} is not installed")


def run(*cmd: str, timeout: float = 120, env: dict[str, str] | None = None,
        cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def example_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pi5") / "cluster"
    from swarm_hpc.ops.cluster import load_cluster, render_cluster, write_rendered

    write_rendered(render_cluster(load_cluster(EXAMPLE), source=EXAMPLE.name), out)
    return out / "inventory.yml"


@pytest.mark.parametrize("playbook", ["site.yml", "check.yml"])
def test_syntax_check(example_inventory: Path, playbook: str) -> None:
    proc = run(tool("ansible-playbook"), "--syntax-check", "-i", str(example_inventory), str(ANSIBLE / playbook))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inventory_has_every_host_and_group(example_inventory: Path) -> None:
    proc = run(tool("ansible-inventory"), "-i", str(example_inventory), "--list")
    assert proc.returncode == 0, proc.stderr
    inventory = json.loads(proc.stdout)
    assert inventory["controller"]["hosts"] == ["pi1"]
    assert inventory["blades"]["hosts"] == ["pi1", "pi2", "pi3", "pi4"]
    pi3 = inventory["_meta"]["hostvars"]["pi3"]
    assert pi3["blade_models"] == ["gemma3"] and pi3["blade_roles"] == ["compute"] and pi3["slurm_ctld_port"] == 6817


def test_ansible_lint() -> None:
    proc = run(tool("ansible-lint"), "--nocolor", "-c", str(ANSIBLE / ".ansible-lint"), "-f", "pep8", str(ANSIBLE),
               timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "production" in proc.stdout + proc.stderr


def test_boot_files_match_what_ansible_writes() -> None:
    """cloud-init's first boot and Ansible write the same sshd and memlock files, so Ansible changes nothing."""
    from swarm_hpc.jinja import environment

    env = environment()
    files = ANSIBLE / "roles" / "common" / "files"
    assert env.get_template("cluster/boot/sshd.conf.j2").render() == (files / "90-swarm-hpc.conf").read_text()
    assert env.get_template("cluster/boot/memlock.conf.j2").render() == (files / "90-swarm-hpc-memlock.conf").read_text()


def test_memory_controller_check(tmp_path: Path) -> None:
    """The slurm role's check that a compute node can hold jobs to their memory (slurm.cgroups), run for real on
    this machine against two copies of /proc/cgroups: the memory controller on, and off (a Pi without
    cgroup_enable=memory), which fails with the fix. Reads files only."""
    yaml = pytest.importorskip("yaml")
    tasks = yaml.safe_load((ANSIBLE / "roles" / "slurm" / "tasks" / "main.yml").read_text())
    check = [t for t in tasks if "slurm_proc_cgroups" in json.dumps(t)]
    assert len(check) == 2, check
    rows = [line for line in Path("/proc/cgroups").read_text().splitlines() if not line.startswith("memory")]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    outcomes = {}
    for enabled in ("1", "0"):
        cgroups = tmp_path / f"cgroups-{enabled}"
        cgroups.write_text("\n".join([*rows, f"memory\t0\t1\t{enabled}"]) + "\n")
        check[0]["ansible.builtin.slurp"]["src"] = str(cgroups)
        play = tmp_path / f"play-{enabled}.yml"
        play.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": check,
                                         "vars": {"slurm_cgroups": True, "blade_roles": ["compute"]}}]))
        proc = run(tool("ansible-playbook"), "-c", "local", "-i", "localhost,", "-e",
                   f"ansible_python_interpreter={sys.executable}", str(play), env=env)
        outcomes[enabled] = (proc.returncode, proc.stdout + proc.stderr)
    assert outcomes["1"][0] == 0, outcomes["1"][1][-3000:]
    assert outcomes["0"][0] != 0 and "add cgroup_enable=memory to the kernel command line" in outcomes["0"][1]


# --- the real run ----------------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 1024 and port not in ports:
            ports.append(port)
    return ports


def llama_cpp_wheel(folder: Path) -> Path:
    """A llama-cpp-python wheel of the version in this venv: from pip's wheel cache, else packed from the installed
    files (their RECORD makes a valid wheel). Never compiles llama.cpp."""
    version = metadata.version("llama-cpp-python")
    cache = Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip"))
    cached = sorted(cache.glob(f"wheels/**/llama_cpp_python-{version}-*.whl"))
    if cached:
        return cached[-1]
    dist = metadata.distribution("llama-cpp-python")
    wheel_meta = next(f for f in dist.files or [] if f.name == "WHEEL" and f.parent.name.endswith(".dist-info"))
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta.read_text().splitlines()
               if line.startswith("Tag:"))
    out = folder / f"llama_cpp_python-{version}-{tag}.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in dist.files or []:
            if not str(f).startswith("..") and "__pycache__" not in str(f):
                z.write(dist.locate_file(f), str(f))
    return out


def snapshot_source(dest: Path) -> Path:
    """A copy of the source the swarm role installs, so that edits made meanwhile cannot change the second run."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "swarm_hpc", dest / "swarm_hpc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@dataclass
class Provisioned:
    root: Path
    inventory: Path
    vars_file: Path
    state: Path
    conf: Path
    venv: Path
    models: Path
    etc: Path
    storage: Path
    times: dict[str, float]
    outputs: dict[str, str]

    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**clean, "SLURM_CONF": str(self.conf)}


def playbook(p: Provisioned, name: str) -> tuple[str, float]:
    started = time.monotonic()
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    proc = run(tool("ansible-playbook"), "-i", str(p.inventory), "-c", "local", "-e", f"@{p.vars_file}",
               str(ANSIBLE / name), timeout=PLAYBOOK_TIMEOUT, env=env)
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ansible-playbook {name} failed ({proc.returncode}):\n{output[-12000:]}"
    return output, seconds


def recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines()[::-1] if re.match(r"^\S+\s+: ok=", line))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def changed_tasks(output: str) -> list[str]:
    tasks, current = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed:"):
            tasks.append(current)
    return tasks


def _pid_alive(pidfile: Path, *names: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm in names else None


def _require_machine() -> None:
    reason = _missing()
    if reason is None and shutil.which("rsync") is None:
        reason = "rsync is not installed (apt-get install rsync)"
    if reason is None and not Path("/usr/bin/python3").exists():
        reason = "no /usr/bin/python3 (Debian's python3) for Ansible's modules"
    if reason:
        if REQUIRE:
            pytest.fail(f"SWARM_HPC_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def _take_the_machine(state: Path) -> None:
    """Stop the shared local test cluster (this session's, or one left behind), then claim the machine."""
    _CLUSTERS.stop()
    if MARKER.exists():
        run(str(SCRIPT), "stop", timeout=120)
    deadline = time.monotonic() + 60
    while (proc := run("pgrep", "-x", "slurmctld")).returncode == 0 and time.monotonic() < deadline:
        time.sleep(2)  # someone else's cluster is shutting down
    if proc.returncode == 0:
        message = f"another slurmctld runs on this machine (pid {proc.stdout.split()})"
        pytest.fail(message) if REQUIRE else pytest.skip(message)
    MARKER.write_text(f"{state}\n")  # local-cluster.sh start elsewhere now refuses until we are done


def _release_the_machine(p: Provisioned, made: list[Path], user_existed: bool) -> None:
    errors = []
    proc = run(str(SCRIPT), "stop", "--state", str(p.state), timeout=180)  # jobs, slurmd, slurmctld, our munged
    if proc.returncode != 0:
        errors.append(f"local-cluster.sh stop: {proc.stderr}")
    pid = _pid_alive(p.state / "run" / "rsyncd.pid", "rsync")
    if pid:
        os.kill(pid, 15)
    if MARKER.exists() and MARKER.read_text().strip() == str(p.state):
        MARKER.unlink()
    if not user_existed:
        run("userdel", "-r", TEST_USER)
    for path in made:
        path.unlink(missing_ok=True)
    for name in ("slurmctld", "slurmd"):
        for pidfile in (p.state / "run").glob(f"{name}*.pid"):
            if _pid_alive(pidfile, name):
                errors.append(f"{name} still runs ({pidfile})")
    if errors:
        print("\n".join(errors), file=sys.stderr)


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provisioned]:
    _require_machine()
    tool("ansible-playbook")
    root = tmp_path_factory.mktemp("ansible-run")
    state = root / "state"
    storage = root / "storage"
    (storage / "models").mkdir(parents=True)
    write_tiny_gguf(storage / "models" / "tiny.gguf", SENTENCE)
    key = root / "admin_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "swarm-hpc-test", "-f", str(key)],
                   check=True, capture_output=True)
    key.unlink()  # only the public half is needed
    ctld_port, slurmd_port, rsync_port = free_ports(3)
    host = socket.gethostname().split(".")[0]
    cluster = root / "cluster.toml"
    cluster.write_text(f"""\
name = "ansibletest"
[controller]
name = "{host}"
address = "127.0.0.1"
[network]
subnet = "127.0.0.0/8"
[admin]
user = "{TEST_USER}"
ssh_public_key = "{key.with_suffix('.pub').read_text().strip()}"
[storage]
mode = "nfs"
path = "{storage}"
[[blades]]
name = "{host}"
address = "127.0.0.1"
cpus = 4
memory_mb = 2048
models = ["tiny"]
[[partitions]]
name = "debug"
default = true
[slurm]
state_dir = "{state}"
config_dir = "{state}/etc"
slurm_user = "root"
sched_interval = 1
cgroups = false  # a container without systemd: memory scheduled, not enforced
ctld_port = {ctld_port}
slurmd_port = {slurmd_port}
""")
    proc = run(sys.executable, "-m", "swarm_hpc", "cluster", "render", str(cluster), "--out", str(root / "build"))
    assert proc.returncode == 0, proc.stderr
    hosts = root / "hosts"
    shutil.copy(Path("/etc/hosts"), hosts)
    p = Provisioned(root=root, inventory=root / "build" / "inventory.yml", vars_file=root / "vars.json", state=state,
                    conf=state / "etc" / "slurm.conf", venv=root / "opt" / "venv", models=root / "models",
                    etc=root / "etc", storage=storage, times={}, outputs={})
    sandbox_vars = {
        "ansible_become": False,                         # root already; sudo may not be installed yet
        "ansible_python_interpreter": "/usr/bin/python3",
        "common_hosts_file": str(hosts),
        "slurm_profile_script": "",
        "swarm_prefix": str(root / "opt"),
        "swarm_etc": str(p.etc),
        "swarm_models_dir": str(p.models),
        "swarm_bin_link": "",
        "swarm_source_dir": str(snapshot_source(root / "src")),
        "swarm_llama_cpp_wheel": str(llama_cpp_wheel(root)),
        "models_rsync_port": rsync_port,
    }
    p.vars_file.write_text(json.dumps(sandbox_vars, indent=2))
    system_files = [Path(f"/etc/sudoers.d/90-swarm-hpc-{TEST_USER}"),
                    Path("/etc/security/limits.d/90-swarm-hpc-memlock.conf"),
                    Path("/etc/ssh/sshd_config.d/90-swarm-hpc.conf")]
    made = [f for f in system_files if not f.exists()]
    try:
        pwd.getpwnam(TEST_USER)
        user_existed = True
    except KeyError:
        user_existed = False
    _take_the_machine(state)
    try:
        for name in ("first", "second"):
            p.outputs[name], p.times[name] = playbook(p, "site.yml")
        p.outputs["check"], p.times["check"] = playbook(p, "check.yml")
        yield p
    finally:
        _release_the_machine(p, made, user_existed)
        print(f"\nansible timings (s): {json.dumps({k: round(v, 1) for k, v in p.times.items()})}")


@pytest.mark.slow
def test_first_run_provisions_this_machine(provisioned: Provisioned) -> None:
    p = provisioned
    first = recap(p.outputs["first"])
    assert first["failed"] == 0 and first["changed"] > 0, first
    # Daemons run without systemd, started directly, with their pid files in the state folder.
    assert _pid_alive(p.state / "run" / "slurmctld.pid", "slurmctld")
    assert list((p.state / "run").glob("slurmd-*.pid"))
    assert _pid_alive(p.state / "run" / "rsyncd.pid", "rsync")
    assert (p.conf).read_text() == (p.inventory.parent / "slurm.conf").read_text()
    # The admin login: key only, passwordless sudo.
    home = Path(pwd.getpwnam(TEST_USER).pw_dir)
    assert (home / ".ssh" / "authorized_keys").read_text().startswith("ssh-ed25519 ")
    assert oct((home / ".ssh" / "authorized_keys").stat().st_mode & 0o777) == "0o600"
    assert "NOPASSWD:ALL" in Path(f"/etc/sudoers.d/90-swarm-hpc-{TEST_USER}").read_text()
    assert "memlock" in Path("/etc/security/limits.d/90-swarm-hpc-memlock.conf").read_text()
    hosts = (p.root / "hosts").read_text()
    assert "# BEGIN swarm-hpc cluster ansibletest" in hosts and "127.0.0.1\t" in hosts
    # The models: synced from the store and checked against its SHA256SUMS; the venv has swarm-hpc.
    assert (p.models / "tiny.gguf").read_bytes() == (p.storage / "models" / "tiny.gguf").read_bytes()
    assert "tiny.gguf" in (p.storage / "models" / "SHA256SUMS").read_text()
    assert (p.etc / "mpi-env.sh").exists()
    proc = run(str(p.venv / "bin" / "python"), "-c", "import swarm_hpc, llama_cpp; print(swarm_hpc.__file__)",
               cwd=p.root)
    assert proc.returncode == 0 and str(p.venv) in proc.stdout, proc.stderr
    # What cannot apply here is skipped with a message, not failed.
    out = p.outputs["first"]
    if "nfsd" not in Path("/proc/filesystems").read_text() and not Path("/proc/fs/nfsd").exists():
        assert "stays a local folder here" in out
    if not Path("/sys/class/ieee80211").exists() and not Path("/sys/class/bluetooth").exists():
        assert "skipped: no Wi-Fi or Bluetooth hardware" in out


@pytest.mark.slow
def test_second_run_changes_nothing(provisioned: Provisioned) -> None:
    second = recap(provisioned.outputs["second"])
    assert second["failed"] == 0
    assert second["changed"] == 0, changed_tasks(provisioned.outputs["second"])


@pytest.mark.slow
def test_check_playbook_runs_mpi_and_a_tiny_swarm(provisioned: Provisioned) -> None:
    out = provisioned.outputs["check"]
    assert recap(out)["failed"] == 0
    assert '\\"size\\": 2' in out and "Open MPI" in out, out[-3000:]
    assert "tiny swarm complete" in out and SENTENCE in out, out[-3000:]


@pytest.mark.slow
def test_a_swarm_job_runs_on_the_provisioned_cluster(provisioned: Provisioned, tmp_path: Path) -> None:
    """What a user does next: a run directory (swarm_hpc.core.rundir.new_run_dir) and an sbatch script whose srun
    starts one rank per expert with PMIx, in the venv the playbook made."""
    from swarm_hpc.core.rundir import new_run_dir
    from swarm_hpc.core.spec import load_spec

    p = provisioned
    model = p.models / "tiny.gguf"
    spec_path = tmp_path / "swarm.toml"
    spec_path.write_text(f"""\
task = "What are clusters?"
strategy = "debate"
rounds = 2
round_timeout = 60
batch_experts = false
[defaults]
model = {json.dumps(str(model))}
n_ctx = 512
max_tokens = 12
temperature = 0.0
[[experts]]
name = "alice"
persona = "You are Alice."
[[experts]]
name = "bob"
persona = "You are Bob."
[[experts]]
name = "carol"
persona = "You are Carol."
""")
    run_dir = new_run_dir(load_spec(spec_path), spec_path, tmp_path / "runs")
    job = tmp_path / "swarm.sbatch"
    job.write_text("#!/bin/bash\nset -euo pipefail\n"
                   f". {shlex.quote(str(p.etc / 'mpi-env.sh'))}\n"
                   f"srun --mpi=pmix {shlex.quote(str(p.venv / 'bin' / 'python'))} -m swarm_hpc.mpi.rank "
                   f"{shlex.quote(str(run_dir))}\n")
    proc = run("sbatch", "--wait", "--parsable", "-n", "3", "-t", "3", "-o", str(tmp_path / "job.out"),
               "-D", str(tmp_path), str(job), env=p.env(), timeout=240)
    log = (tmp_path / "job.out").read_text(errors="replace") if (tmp_path / "job.out").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{log}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete", summary
    replies = [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]
    replies = [r for r in replies if r.get("type") == "message" and r.get("role") == "expert"]
    assert {r["expert"] for r in replies} == {"alice", "bob", "carol"}
    assert all(r["content"].strip() == SENTENCE for r in replies), replies
    assert {r["rank"] for r in replies} == {0, 1, 2}
