"""Per-blade Raspberry Pi images: write a blade's boot files (cloud-init NoCloud seed + config.txt lines, rendered
from the cluster file by `cluster.render.render_boot`) into a copy of a Raspberry Pi OS / Ubuntu arm64 image,
without mounting it: the partition table is read in Python (`partitions.py`), the FAT boot partition is written
with mtools at its byte offset (`fat.py`), the ext4 root is only read, with debugfs (`ext4.py`).

`customize.customize_image` does the work; `cli.image` is the `swarm-hpc image` command group.
"""

from swarm_hpc.ops.images.customize import customize_image

__all__ = ["customize_image"]
