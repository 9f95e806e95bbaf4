"""`swarm-hpc image ...`: per-blade Raspberry Pi images. Attach with `main.add_command(image)`."""

from __future__ import annotations

from pathlib import Path

import click

from swarm_hpc.ops.cluster.cli import user_errors
from swarm_hpc.ops.images.customize import SEED_FILES, customize_image
from swarm_hpc.ops.images.partitions import boot_partition, read_partitions, root_partition


@click.group()
def image() -> None:
    """Per-blade Raspberry Pi images from one base image and the cluster file.

    The boot files (cloud-init user-data, network-config, meta-data and config.txt lines; see `swarm-hpc
    cluster render`) are written into the image's FAT boot partition with mtools: no mounting, no loop
    devices, no root needed.
    """


@image.command()
@click.argument("base_image", metavar="BASE_IMAGE", type=click.Path(path_type=Path))
@click.option("--blade", required=True, metavar="NAME", help="The blade (a [[blades]] name in the cluster file).")
@click.option("--cluster", "cluster_file", required=True, metavar="CLUSTER_FILE", type=click.Path(path_type=Path),
              help="The cluster file (TOML), e.g. slurm/examples/pi5-cluster.toml.")
@click.option("-o", "--output", required=True, metavar="FILE", type=click.Path(path_type=Path),
              help="The blade's image to write (written to a temporary file first, renamed at the end).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--no-validate", is_flag=True, help="Do not check the boot files with cloud-init's schema.")
@click.option("--skip-root-check", is_flag=True,
              help="Do not look into the root filesystem for cloud-init (e.g. for an OS that keeps it elsewhere).")
@user_errors
def customize(base_image: Path, blade: str, cluster_file: Path, output: Path, force: bool, no_validate: bool,
              skip_root_check: bool) -> None:
    """Write FILE: BASE_IMAGE set up as one blade of the cluster.

    BASE_IMAGE is a Raspberry Pi OS (Trixie or later) or Ubuntu Server arm64 image for Raspberry Pi, .img or
    .img.xz; it is never modified. On its first boot the blade gets its host name, static address, the admin
    user with key-only SSH and passwordless sudo, /etc/hosts for the cluster, memlock limits and the first-boot
    packages; Wi-Fi and Bluetooth are off unless [boot] says otherwise. Then run ansible/site.yml.

    \b
    Example:
      swarm-hpc image customize raspios-arm64.img --blade pi2 --cluster cluster.toml -o pi2.img
    """
    done = customize_image(base_image, blade, cluster_file, output, force=force, validate=not no_validate,
                           root_check=not skip_root_check)
    click.echo(f"{done.output}: blade {done.blade} ({done.address}), boot partition {done.boot.number} at byte "
               f"{done.boot.start}: wrote {', '.join(done.files)}")
    if done.cloud_init is not None:
        click.echo(f"root filesystem: {done.os_name}, cloud-init found")
    if done.validation is not None:
        v = done.validation
        click.echo(f"cloud-init {v.version} schema: valid" if v.checked
                   else "cloud-init schema: not checked (cloud-init is not installed here)")
    for note in done.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"done in {done.seconds:.1f} s")


@image.command()
@click.argument("image_file", metavar="IMAGE", type=click.Path(path_type=Path))
@user_errors
def inspect(image_file: Path) -> None:
    """Show IMAGE's partitions, and the cloud-init seed and swarm-hpc config.txt block on its boot partition."""
    from swarm_hpc.ops.images import ext4, fat

    parts = read_partitions(image_file)
    for p in parts:
        click.echo(f"partition {p.number}: {p.filesystem:7} type {p.type:8} start {p.start:>12} size {p.size:>12}")
    boot = boot_partition(image_file, parts)
    names = fat.list_files(image_file, boot.start)
    seed = [n for n in SEED_FILES if n in names]
    click.echo(f"boot partition {boot.number}: {len(names)} files; cloud-init seed: {', '.join(seed) or 'none'}")
    meta = fat.read_file(image_file, boot.start, "meta-data") if "meta-data" in names else None
    for line in (meta or b"").decode(errors="replace").splitlines():
        if line.startswith(("instance-id:", "local-hostname:")):
            click.echo(f"  {line}")
    config = fat.read_file(image_file, boot.start, "config.txt") if "config.txt" in names else None
    text = (config or b"").decode(errors="replace")
    if "# BEGIN swarm-hpc" in text:
        block = text[text.index("# BEGIN swarm-hpc"):]
        click.echo("config.txt swarm-hpc block: " + ", ".join(
            line for line in block.splitlines() if line and not line.startswith("#")))
    root = root_partition(parts)
    info = ext4.inspect_root(image_file, root.start) if root else None
    if info is not None and root is not None:
        found = "found" if info.cloud_init else "MISSING"
        click.echo(f"root partition {root.number}: {info.os_name}, cloud-init {found}")
