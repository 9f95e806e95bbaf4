"""`swarm-hpc image customize`: a blade's own image from a base Raspberry Pi OS / Ubuntu arm64 image.

The base image is copied (sparse; `.img.xz` is decompressed on the way) to a temporary file beside the output;
the blade's boot files (`cluster.render.render_boot`) are written into its FAT boot partition with mtools, and
the block between `# BEGIN swarm-hpc` and `# END swarm-hpc` in config.txt is replaced (or appended), and
cmdline.txt gets `cgroup_enable=memory` when the cluster uses cgroups (the one line kept otherwise); every file
is read back and compared; the root filesystem is looked at (read-only, debugfs) to make sure the OS has
cloud-init. Only then is the temporary file renamed to the output: a failure leaves nothing behind, and the
base image is never written.
"""

from __future__ import annotations

import difflib
import lzma
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarm_hpc.errors import UserError
from swarm_hpc.ops.cluster.render import render_boot
from swarm_hpc.ops.cluster.schema import Cluster, load_cluster
from swarm_hpc.ops.images import ext4, fat
from swarm_hpc.ops.images.partitions import Partition, boot_partition, read_partitions, root_partition
from swarm_hpc.ops.images.tools import find_tool
from swarm_hpc.ops.images.validate import Validation, validate_boot_dir

CHUNK = 1 << 20
SEED_FILES = ("user-data", "network-config", "meta-data")
CONFIG_TXT = "config.txt"
CMDLINE_TXT = "cmdline.txt"
MEMORY_CGROUP = "cgroup_enable=memory"   # a Pi kernel's memory controller is off without it (SLURM's cgroups need it)
BLOCK_RE = re.compile(r"^# BEGIN swarm-hpc\r?\n.*?^# END swarm-hpc[^\n]*(\n|$)", re.MULTILINE | re.DOTALL)


@dataclass
class Customized:
    output: Path
    blade: str
    address: str
    boot: Partition
    files: list[str]
    os_name: str = "not checked"
    cloud_init: bool | None = None
    validation: Validation | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def merge_config_txt(existing: str | None, block: str) -> str:
    """config.txt with our block: an earlier swarm-hpc block is replaced, everything else kept as it was."""
    text = BLOCK_RE.sub("", existing or "")
    if text and not text.endswith("\n"):
        text += "\n"
    if text and not text.endswith("\n\n"):
        text += "\n"
    return text + block


def merge_cmdline(existing: str, words: list[str]) -> str:
    """cmdline.txt (one line, words separated by spaces) with each of `words` added unless it is there."""
    line = " ".join(existing.split())
    missing = [w for w in words if w not in line.split()]
    return " ".join([line, *missing]).strip() + "\n"


def find_blade(cluster: Cluster, name: str, where: str):
    blade = cluster.blade(name)
    if blade is None:
        names = [b.name for b in cluster.blades]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(where, f"no blade named {name!r}", f"{hint}blades: {', '.join(names)}", "--blade")
    return blade


def customize_image(base: Path, blade_name: str, cluster_file: Path, output: Path, *, force: bool = False,
                    validate: bool = True, root_check: bool = True) -> Customized:
    """Write `output`: `base` with the boot files of blade `blade_name`. Raises UserError (one line) on bad input;
    nothing is written then."""
    started = time.monotonic()
    base, output, cluster_file = Path(base), Path(output), Path(cluster_file)
    cluster = load_cluster(cluster_file)
    blade = find_blade(cluster, blade_name, str(cluster_file))
    if cluster.admin is None:
        raise UserError(str(cluster_file), "a blade image needs an admin login",
                        "add an [admin] table with `user` and `ssh_public_key` (one line of your ~/.ssh/*.pub)",
                        "admin")
    _check_paths(base, output, force)
    files = render_boot(cluster, blade, source=cluster_file.name)
    result_validation = None
    if validate:
        result_validation = _validate(files)
    find_tool("mcopy")  # fail before copying gigabytes
    compressed = base.suffix == ".xz"
    if not compressed:  # a plain image: check its partitions before copying it
        boot_partition(base, read_partitions(base))
    tmp = _temp_beside(output)
    try:
        _copy_image(base, tmp)
        parts = read_partitions(tmp, where=str(base))
        boot = boot_partition(base, parts)
        result = Customized(output, blade.name, str(blade.address), boot, [], validation=result_validation)
        root = root_partition(parts)
        if root_check:
            _check_root(base, tmp, root, result)
        existing = fat.read_file(tmp, boot.start, CONFIG_TXT)
        wanted = {name: files[name].encode() for name in SEED_FILES}
        config_before = existing.decode("utf-8", errors="replace") if existing is not None else None
        wanted[CONFIG_TXT] = merge_config_txt(config_before, files["config.txt.append"]).encode()
        if existing is None:
            result.notes.append("the boot partition had no config.txt: wrote one with only the swarm-hpc block")
        cmdline = fat.read_file(tmp, boot.start, CMDLINE_TXT)
        if cluster.slurm.cgroups and cmdline is not None:   # SLURM's cgroup memory limits need the controller on
            merged = merge_cmdline(cmdline.decode("utf-8", errors="replace"), [MEMORY_CGROUP])
            if merged.encode() != cmdline:
                wanted[CMDLINE_TXT] = merged.encode()
        elif cluster.slurm.cgroups:
            result.notes.append(f"the boot partition has no {CMDLINE_TXT}: add {MEMORY_CGROUP} to the kernel's "
                                "command line yourself (SLURM's memory limits need it)")
        for name, data in wanted.items():
            fat.write_file(tmp, boot.start, name, data)
        for name, data in wanted.items():  # read back what the image now holds
            if fat.read_file(tmp, boot.start, name) != data:
                raise UserError(str(output), f"{name} read back from the boot partition differs from what was "
                                "written", "check the disk (full or failing?) and try again")
        result.files = list(wanted)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result.seconds = time.monotonic() - started
    return result


def _check_paths(base: Path, output: Path, force: bool) -> None:
    if not base.exists():
        raise UserError(str(base), "file not found", "give the path of a Raspberry Pi OS or Ubuntu .img (or .img.xz)")
    if not base.is_file():
        raise UserError(str(base), "is not a file", "give the path of an .img file")
    if not os.access(base, os.R_OK):
        raise UserError(str(base), "cannot be read", "check its permissions")
    if output.exists() and output.resolve() == base.resolve():
        raise UserError(str(output), "is the base image itself", "give another file to -o: the base stays untouched")
    if output.is_dir():
        raise UserError(str(output), "is a folder", "give a file name to -o, e.g. blade03.img")
    if output.exists() and not force:
        raise UserError(str(output), "already exists", "use another -o file, or --force to replace it")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(str(output), f"its folder {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(str(output), f"its folder {parent} is not writable", "choose a writable folder")


def _temp_beside(output: Path) -> Path:
    parent = output.parent if str(output.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    return Path(name)


def _copy_image(src: Path, dst: Path) -> None:
    """Copy (or decompress, for .xz) `src` to `dst`, leaving runs of zeros as holes so that a 4 GB image with
    1 GB of data takes 1 GB of disk."""
    zero = bytes(CHUNK)
    opener = lzma.open if src.suffix == ".xz" else open
    writing = False
    try:
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            size = 0
            while True:
                writing = False
                chunk = fin.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                writing = True
                if chunk == zero[: len(chunk)]:
                    fout.seek(len(chunk), os.SEEK_CUR)
                else:
                    fout.write(chunk)
            writing = True
            fout.truncate(size)
    except (lzma.LZMAError, EOFError) as e:
        raise UserError(str(src), f"cannot decompress: {e}", "download the .img.xz again") from None
    except OSError as e:
        if writing or Path(e.filename or "") == dst:
            raise UserError(str(dst.parent), f"cannot write the new image: {e.strerror}",
                            "free some disk space or choose another -o folder") from None
        raise UserError(str(src), f"cannot read: {e.strerror}", "check the file") from None


def _check_root(base: Path, image: Path, root: Partition | None, result: Customized) -> None:
    if root is None:
        result.notes.append("no ext4 root partition found: could not check that the OS has cloud-init")
        return
    info = ext4.inspect_root(image, root.start)
    if info is None:
        result.notes.append("debugfs (e2fsprogs) is not installed: could not check that the OS has cloud-init")
        return
    result.os_name, result.cloud_init = info.os_name, info.cloud_init
    if not info.cloud_init:
        raise UserError(str(base), f"its root filesystem ({info.os_name}) has no cloud-init, so it would ignore the "
                        "boot files", "use Raspberry Pi OS (Trixie, 2025-11 or later) or Ubuntu Server for Raspberry "
                        "Pi, or pass --skip-root-check if you know better")


def _validate(files: dict[str, str]) -> Validation:
    with tempfile.TemporaryDirectory(prefix="swarm-hpc-boot-") as d:
        for name, text in files.items():
            (Path(d) / name).write_text(text, encoding="utf-8")
        validation = validate_boot_dir(Path(d))
    if validation.checked and not validation.ok:
        name, problems = next(iter(validation.problems.items()))
        raise UserError(name, f"cloud-init {validation.version} rejects the rendered file: {problems[0]}",
                        "report this as a swarm-hpc bug; --no-validate skips the check")
    return validation
