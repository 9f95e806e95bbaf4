"""`swarm-hpc image customize` on real disk images that the tests build themselves.

A base image is a plain file with an MBR (or GPT) partition table made by sfdisk, a FAT32 boot partition made by
mkfs.vfat (holding a config.txt, as Raspberry Pi OS and Ubuntu have) and an ext4 root made by mkfs.ext4 -d from a
folder (os-release and cloud-init's files), all without root, mounts or loop devices. The files are read back
with mtools at the partition's offset (`mcopy -i IMG@@OFFSET`), independently of the code under test, and checked
with cloud-init's own schema (`cloud-init schema --config-file`).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarm_hpc.ops.cluster import load_cluster
from swarm_hpc.ops.cluster.render import render_boot
from swarm_hpc.ops.images import customize as customize_module
from swarm_hpc.ops.images.cli import image
from swarm_hpc.ops.images.customize import merge_cmdline, merge_config_txt
from swarm_hpc.ops.images.partitions import read_partitions
from swarm_hpc.ops.images.validate import validate_boot_dir

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "slurm" / "examples" / "pi5-cluster.toml"
STRICT_ENV = os.environ.get("CI") == "true" or os.environ.get("SWARM_HPC_REQUIRE_SLURM") == "1"
BASE_CONFIG_TXT = ("# Raspberry Pi OS config.txt\ndtparam=audio=on\ncamera_auto_detect=1\n\n"
                   "[pi5]\nusb_max_current_enable=1\n")
TOOLS = {"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
         "mcopy": "mtools", "mdir": "mtools"}
MiB = 1 << 20


def _need(*names: str) -> None:
    missing = [n for n in names
               if not (shutil.which(n) or Path(f"/usr/sbin/{n}").exists() or Path(f"/sbin/{n}").exists())]
    if missing:
        message = f"missing {missing} (apt-get install {' '.join(sorted({TOOLS.get(n, n) for n in missing}))})"
        pytest.fail(message) if STRICT_ENV else pytest.skip(message)


def _sbin(name: str) -> str:
    return shutil.which(name) or next(p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if Path(p).exists())


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def make_image(path: Path, *, label: str = "dos", boot_mb: int = 40, root_mb: int = 24, cloud_init: bool = True,
               boot_files: dict[str, str] | None = None) -> dict[str, int]:
    """A disk image like a Raspberry Pi one; returns the byte offsets of its two partitions."""
    _need("sfdisk", "mkfs.vfat", "mkfs.ext4", "mcopy")
    boot_start, boot_sectors = 2048, boot_mb * MiB // 512
    root_start, root_sectors = boot_start + boot_sectors, root_mb * MiB // 512
    size = (root_start + root_sectors) * 512 + (MiB if label == "gpt" else 0)  # room for the backup GPT
    with open(path, "wb") as f:
        f.truncate(size)
    boot_type = "U" if label == "gpt" else "c"
    root_type = "L" if label == "gpt" else "83"
    layout = (f"label: {label}\nstart={boot_start}, size={boot_sectors}, type={boot_type}\n"
              f"start={root_start}, size={root_sectors}, type={root_type}\n")
    subprocess.run([_sbin("sfdisk"), "-q", str(path)], input=layout, text=True, check=True, capture_output=True)
    subprocess.run([_sbin("mkfs.vfat"), "-F", "32", "-s", "1", "-n", "BOOTFS", "--offset", str(boot_start),
                    str(path), str(boot_sectors // 2)], check=True, capture_output=True)
    rootdir = path.parent / f"{path.name}.rootfs"
    (rootdir / "etc").mkdir(parents=True)
    (rootdir / "usr" / "lib").mkdir(parents=True)
    (rootdir / "usr" / "lib" / "os-release").write_text('PRETTY_NAME="Test Pi OS (trixie)"\nID=debian\n')
    os.symlink("../usr/lib/os-release", rootdir / "etc" / "os-release")
    if cloud_init:
        (rootdir / "usr" / "bin").mkdir(parents=True)
        (rootdir / "usr" / "bin" / "cloud-init").write_text("#!/usr/bin/python3\n")
        (rootdir / "etc" / "cloud").mkdir()
        (rootdir / "etc" / "cloud" / "cloud.cfg").write_text("datasource_list: [NoCloud, None]\n")
    subprocess.run([_sbin("mkfs.ext4"), "-q", "-F", "-d", str(rootdir), "-E", f"offset={root_start * 512}",
                    str(path), f"{root_sectors // 2}k"], check=True, capture_output=True)
    shutil.rmtree(rootdir)
    offsets = {"boot": boot_start * 512, "root": root_start * 512}
    for name, text in ({"config.txt": BASE_CONFIG_TXT, "cmdline.txt": "console=tty1 root=LABEL=rootfs\n"}
                       | (boot_files or {})).items():
        src = path.parent / f"{path.name}.{name}"
        src.write_text(text)
        subprocess.run(["mcopy", "-i", f"{path}@@{offsets['boot']}", str(src), f"::/{name}"], check=True,
                       capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        src.unlink()
    return offsets


def read_back(img: Path, offset: int, name: str) -> str | None:
    """A file from the image's FAT partition, read with mtools directly (not through the code under test)."""
    proc = subprocess.run(["mcopy", "-n", "-i", f"{img}@@{offset}", f"::/{name}", "-"], capture_output=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=False)
    return proc.stdout.decode() if proc.returncode == 0 else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("base") / "raspios-arm64.img"
    return path, make_image(path)


def customize(*args: str):
    return runner().invoke(image, ["customize", *args])


def assert_one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarm-hpc: error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def test_partitions_are_read_from_the_file(base: tuple[Path, dict[str, int]]) -> None:
    img, offsets = base
    parts = read_partitions(img)
    assert [(p.number, p.filesystem, p.type, p.start) for p in parts] == [
        (1, "vfat", "0x0c", offsets["boot"]), (2, "ext4", "0x83", offsets["root"])]


def test_customize_writes_the_blades_boot_files(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    img, offsets = base
    before = sha256(img)
    out = tmp_path / "pi2.img"
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    assert f"{out}: blade pi2 (10.42.0.12), boot partition 1 at byte {offsets['boot']}" in result.output
    assert "root filesystem: Test Pi OS (trixie), cloud-init found" in result.output
    assert sha256(img) == before, "the base image was modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pi2.img"], "temporary files left behind"
    assert out.stat().st_size == img.stat().st_size
    assert oct(out.stat().st_mode & 0o777) != "0o600"

    expected = render_boot(load_cluster(EXAMPLE), load_cluster(EXAMPLE).blade("pi2"), source=EXAMPLE.name)
    for name in ("user-data", "network-config", "meta-data"):
        assert read_back(out, offsets["boot"], name) == expected[name], name
    config = read_back(out, offsets["boot"], "config.txt")
    assert config is not None and config.startswith(BASE_CONFIG_TXT)  # the image's own settings are kept
    assert config.endswith(expected["config.txt.append"])
    assert "dtoverlay=disable-wifi\ndtoverlay=disable-bt\ndtparam=pciex1_gen=3\n" in config
    # the kernel's command line keeps its one line and gets the memory controller SLURM's cgroups need
    assert read_back(out, offsets["boot"], "cmdline.txt") == "console=tty1 root=LABEL=rootfs cgroup_enable=memory\n"
    user_data = read_back(out, offsets["boot"], "user-data") or ""
    assert "hostname: pi2\n" in user_data and "ssh-ed25519 AAAAC3Nz" in user_data and "10.42.0.12\tpi2" in user_data
    assert "addresses: [\"10.42.0.12/24\"]" in (read_back(out, offsets["boot"], "network-config") or "")


def test_customizing_again_replaces_the_block(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    img, offsets = base
    first = tmp_path / "pi3.img"
    assert customize(str(img), "--blade", "pi3", "--cluster", str(EXAMPLE), "-o", str(first)).exit_code == 0
    second = tmp_path / "pi4.img"  # a customized image as the base of another blade's
    result = customize(str(first), "--blade", "pi4", "--cluster", str(EXAMPLE), "-o", str(second))
    assert result.exit_code == 0, result.stderr
    config = read_back(second, offsets["boot"], "config.txt") or ""
    assert config.count("# BEGIN swarm-hpc") == 1 and "Blade pi4 " in config and "Blade pi3 " not in config
    assert config.startswith(BASE_CONFIG_TXT)
    assert "local-hostname: \"pi4\"" in (read_back(second, offsets["boot"], "meta-data") or "")


def test_force_replaces_an_existing_output(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    img, offsets = base
    out = tmp_path / "pi1.img"
    out.write_text("old")
    result = customize(str(img), "--blade", "pi1", "--cluster", str(EXAMPLE), "-o", str(out))
    assert_one_line_error(result, "already exists", "--force")
    assert out.read_text() == "old"
    result = customize(str(img), "--blade", "pi1", "--cluster", str(EXAMPLE), "-o", str(out), "--force")
    assert result.exit_code == 0, result.stderr
    assert "hostname: pi1\n" in (read_back(out, offsets["boot"], "user-data") or "")


def test_cloud_init_schema_accepts_the_files(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    if shutil.which("cloud-init") is None:
        pytest.fail("cloud-init is not installed") if STRICT_ENV else pytest.skip("cloud-init is not installed")
    img, offsets = base
    out = tmp_path / "pi2.img"
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(out))
    assert result.exit_code == 0 and "schema: valid" in result.output, result.output + result.stderr
    seed = tmp_path / "seed"
    seed.mkdir()
    for name in ("user-data", "network-config", "meta-data"):
        (seed / name).write_text(read_back(out, offsets["boot"], name) or "")
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(seed / "user-data")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr
    validation = validate_boot_dir(seed)
    assert validation.checked and validation.ok, validation.problems


def test_the_validation_is_real(tmp_path: Path) -> None:
    """The cloud-init check rejects a misspelt key, a wrong type and a broken network config."""
    if shutil.which("cloud-init") is None:
        pytest.fail("cloud-init is not installed") if STRICT_ENV else pytest.skip("cloud-init is not installed")
    files = render_boot(load_cluster(EXAMPLE), load_cluster(EXAMPLE).blade("pi2"), source=EXAMPLE.name)
    cases = {
        "user-data": [("ssh_pwauth: false", "ssh_pwauth: false\nssh_pwauht: true"), ("lock_passwd: true",
                                                                                   "lock_passwd: [1]")],
        "network-config": [("addresses: [\"10.42.0.12/24\"]", "addresses: [\"10.42.0.300/24\"]"),
                           ("ethernets:", "ethernetz:")],
    }
    for name, edits in cases.items():
        for old, new in edits:
            assert old in files[name]
            folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
            folder.mkdir()
            for n, text in files.items():
                (folder / n).write_text(text.replace(old, new) if n == name else text)
            validation = validate_boot_dir(folder)
            assert validation.checked and name in validation.problems, (name, new, validation.problems)


def test_gpt_and_xz_images(tmp_path: Path) -> None:
    img = tmp_path / "ubuntu-gpt.img"
    offsets = make_image(img, label="gpt")
    xz = tmp_path / "ubuntu-gpt.img.xz"
    with open(img, "rb") as fin, lzma.open(xz, "wb", preset=0) as fout:
        shutil.copyfileobj(fin, fout)
    out = tmp_path / "pi4.img"
    result = customize(str(xz), "--blade", "pi4", "--cluster", str(EXAMPLE), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert out.stat().st_size == img.stat().st_size
    assert "hostname: pi4\n" in (read_back(out, offsets["boot"], "user-data") or "")
    assert read_partitions(out)[0].type.upper() == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # EFI system


def test_inspect_shows_the_seed(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    img, _ = base
    out = tmp_path / "pi2.img"
    assert customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(out)).exit_code == 0
    result = runner().invoke(image, ["inspect", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "cloud-init seed: user-data, network-config, meta-data" in result.output
    assert 'local-hostname: "pi2"' in result.output
    assert "dtoverlay=disable-wifi, dtoverlay=disable-bt" in result.output
    assert "Test Pi OS (trixie), cloud-init found" in result.output
    result = runner().invoke(image, ["inspect", str(img)])
    assert "cloud-init seed: none" in result.output


def test_help_on_every_command() -> None:
    for args in (["--help"], ["customize", "--help"], ["inspect", "--help"]):
        result = runner().invoke(image, args)
        assert result.exit_code == 0 and "Usage:" in result.output, args
    text = runner().invoke(image, ["customize", "--help"]).output
    for option in ("--blade NAME", "--cluster CLUSTER_FILE", "-o, --output FILE", "--force", "--no-validate"):
        assert option in text, option


# --- bad input: one line, exit 2, nothing written -----------------------------------------------------------


def test_bad_inputs_give_one_line_and_write_nothing(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    img, _ = base
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "blade.img"
    no_admin = tmp_path / "no-admin.toml"
    text = EXAMPLE.read_text()
    start = text.index("[admin]")
    no_admin.write_text(text[:start] + text[text.index("[storage]"):])
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    bad_xz = tmp_path / "broken.img.xz"
    bad_xz.write_bytes(b"\xfd7zXZ\x00" + os.urandom(200))
    bad_cluster = tmp_path / "bad.toml"
    bad_cluster.write_text(text.replace("cpus = 4", "cpus = 0", 1))
    cases = [
        (["--blade", "pi9"], EXAMPLE, img, ["--blade", "no blade named 'pi9'", "did you mean 'pi4'?"]),
        (["--blade", "pi2"], no_admin, img, ["admin", "needs an admin login", "ssh_public_key"]),
        (["--blade", "pi2"], EXAMPLE, tmp_path / "missing.img", ["missing.img: file not found"]),
        (["--blade", "pi2"], EXAMPLE, junk, ["junk.img", "no partition table"]),
        (["--blade", "pi2"], EXAMPLE, bad_xz, ["broken.img.xz", "cannot decompress"]),
        (["--blade", "pi2"], bad_cluster, img, ["blades[0].cpus", "greater than or equal to 1"]),
        (["--blade", "pi2"], tmp_path / "nope.toml", img, ["nope.toml: file not found"]),
    ]
    for extra, cluster_file, base_img, words in cases:
        result = customize(str(base_img), "--cluster", str(cluster_file), "-o", str(out), *extra)
        assert_one_line_error(result, *words)
        assert list(out_dir.iterdir()) == [], words
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(img))
    assert_one_line_error(result, "is the base image itself")
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(tmp_path / "no" / "x.img"))
    assert_one_line_error(result, "does not exist")


def test_image_without_a_fat_partition(tmp_path: Path) -> None:
    _need("sfdisk", "mkfs.ext4")
    img = tmp_path / "linux-only.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run([_sbin("sfdisk"), "-q", str(img)], input="label: dos\nstart=2048, type=83\n", text=True,
                   check=True, capture_output=True)
    out = tmp_path / "out.img"
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(out))
    assert_one_line_error(result, "no FAT boot partition")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linux-only.img"]


def test_os_without_cloud_init_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "bookworm.img"
    offsets = make_image(img, cloud_init=False)
    out = tmp_path / "pi2.img"
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(out))
    assert_one_line_error(result, "has no cloud-init", "--skip-root-check")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bookworm.img"]
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(out), "--skip-root-check")
    assert result.exit_code == 0, result.stderr
    assert read_back(out, offsets["boot"], "user-data") is not None


def test_a_failure_midway_leaves_nothing(base: tuple[Path, dict[str, int]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = base
    calls = []
    real = customize_module.fat.write_file

    def failing(image_path: Path, offset: int, name: str, data: bytes) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(image_path, offset, name, data)

    monkeypatch.setattr(customize_module.fat, "write_file", failing)
    out = tmp_path / "pi2.img"
    with pytest.raises(OSError):
        customize_module.customize_image(img, "pi2", EXAMPLE, out)
    assert list(tmp_path.iterdir()) == [], "a half-written image or temporary file was left behind"


def test_missing_mtools_is_one_line(base: tuple[Path, dict[str, int]], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = base
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = customize(str(img), "--blade", "pi2", "--cluster", str(EXAMPLE), "-o", str(tmp_path / "x.img"),
                       "--no-validate")
    assert_one_line_error(result, "mcopy", "apt-get install mtools")
    assert not (tmp_path / "x.img").exists()


def test_merge_cmdline() -> None:
    assert merge_cmdline("console=tty1 root=X rootwait\n", ["cgroup_enable=memory"]) == (
        "console=tty1 root=X rootwait cgroup_enable=memory\n")
    once = merge_cmdline("a b", ["cgroup_enable=memory"])
    assert merge_cmdline(once, ["cgroup_enable=memory"]) == once == "a b cgroup_enable=memory\n"


def test_merge_config_txt() -> None:
    block = "# BEGIN swarm-hpc\n[all]\ndtoverlay=disable-bt\n# END swarm-hpc\n"
    assert merge_config_txt(None, block) == block
    assert merge_config_txt("a=1", block) == "a=1\n\n" + block
    once = merge_config_txt("a=1\n", block)
    assert merge_config_txt(once, block.replace("disable-bt", "disable-wifi")) == (
        "a=1\n\n" + block.replace("disable-bt", "disable-wifi"))
    middle = "a=1\n" + block + "b=2\n"
    assert merge_config_txt(middle, block) == "a=1\nb=2\n\n" + block


def test_the_command_line_entry_point(base: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    """The image group as a process: exit code 2 and one line on a bad input (as `swarm-hpc image` does)."""
    img, _ = base
    code = "import sys; from swarm_hpc.ops.images.cli import image; sys.exit(image())"
    proc = subprocess.run([sys.executable, "-c", code, "customize", str(img), "--blade", "nope", "--cluster",
                           str(EXAMPLE), "-o", str(tmp_path / "x.img")], capture_output=True, text=True, cwd=REPO,
                          check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no blade named 'nope'" in proc.stderr
