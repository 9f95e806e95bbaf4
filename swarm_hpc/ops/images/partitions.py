"""Read a disk image's partition table (MBR or GPT) without mounting or loop devices, and tell what is in each
partition from its first bytes: a FAT boot partition, an ext4 root, or something else."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from swarm_hpc.errors import UserError

SECTOR = 512
FAT_MBR_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF}
LINUX_MBR_TYPE = 0x83
GPT_FAT_TYPES = {
    uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),  # EFI system partition
    uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),  # Microsoft basic data (how Raspberry Pi GPT images mark it)
}


@dataclass(frozen=True)
class Partition:
    number: int          # 1-based, as Linux names it (p1, p2, ...)
    start: int           # bytes from the start of the image
    size: int            # bytes
    type: str            # "0x0c" (MBR) or a GPT type GUID
    filesystem: str      # "vfat", "ext4", "ext2/3" or "unknown", from the partition's own first bytes

    @property
    def end(self) -> int:
        return self.start + self.size


def read_partitions(image: Path, where: str | None = None) -> list[Partition]:
    """The partitions of a raw disk image; a file without an MBR/GPT partition table is a UserError naming
    `where` (default: the image's path)."""
    image_name = where or str(image)
    try:
        with open(image, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            mbr = f.read(SECTOR)
            if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
                raise UserError(image_name, "has no partition table (no MBR boot signature)",
                                "give a whole-disk image (.img) such as Raspberry Pi OS or Ubuntu Server for Pi")
            entries = [struct.unpack_from("<B3sB3sII", mbr, 446 + 16 * i) for i in range(4)]
            if any(e[2] == 0xEE for e in entries):
                parts = _gpt(f, image_name)
            else:
                parts = [(i + 1, e[4] * SECTOR, e[5] * SECTOR, f"0x{e[2]:02x}") for i, e in enumerate(entries)
                         if e[2] != 0 and e[5] > 0]
            result = []
            for number, start, length, ptype in parts:
                if start + length > size:
                    raise UserError(image_name, f"partition {number} ends at byte {start + length}, past the end "
                                    f"of the file ({size} bytes)", "the image is truncated: download it again")
                result.append(Partition(number, start, length, ptype, _filesystem(f, start)))
    except OSError as e:
        raise UserError(image_name, f"cannot read the image: {e.strerror}", "check the path and permissions") from None
    if not result:
        raise UserError(image_name, "the partition table is empty", "give a Raspberry Pi OS or Ubuntu image")
    return result


def _gpt(f: BinaryIO, image_name: str) -> list[tuple[int, int, int, str]]:
    f.seek(SECTOR)
    header = f.read(92)
    if header[:8] != b"EFI PART":
        raise UserError(image_name, "has a protective MBR but no GPT header", "the image is damaged")
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    f.seek(entries_lba * SECTOR)
    table = f.read(count * entry_size)
    parts = []
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if len(entry) < 48 or entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        parts.append((i + 1, first * SECTOR, (last - first + 1) * SECTOR, str(uuid.UUID(bytes_le=entry[:16]))))
    return parts


def _filesystem(f: BinaryIO, start: int) -> str:
    f.seek(start)
    boot = f.read(SECTOR)
    if len(boot) == SECTOR and boot[510:512] == b"\x55\xaa" and (boot[54:57] == b"FAT" or boot[82:87] == b"FAT32"):
        return "vfat"
    f.seek(start + 1024)
    sb = f.read(1024)
    if len(sb) >= 100 and sb[56:58] == b"\x53\xef":
        incompat = struct.unpack_from("<I", sb, 96)[0]
        return "ext4" if incompat & 0x40 else "ext2/3"  # 0x40: extents, the mark of ext4
    return "unknown"


def boot_partition(image: Path, parts: list[Partition]) -> Partition:
    """The FAT partition that holds config.txt and cloud-init's seed (the first FAT partition)."""
    for p in parts:
        if p.filesystem == "vfat":
            return p
    listing = ", ".join(f"{p.number}: {p.filesystem}" for p in parts)
    raise UserError(str(image), f"has no FAT boot partition (partitions {listing})",
                    "give a Raspberry Pi OS or Ubuntu Server for Raspberry Pi image")


def root_partition(parts: list[Partition]) -> Partition | None:
    """The first ext4 (or ext2/3) partition: the root filesystem of Raspberry Pi OS and Ubuntu."""
    return next((p for p in parts if p.filesystem.startswith("ext")), None)
