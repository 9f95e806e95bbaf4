"""This process's memory as the kernel counts it (/proc), and giving freed heap back to it."""

from __future__ import annotations

import ctypes
import ctypes.util


def _field_kb(path: str, name: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MB (VmRSS): every page of the process in RAM, shared ones counted in full."""
    kb = _field_kb(f"/proc/{pid}/status", "VmRSS:")
    return (kb or 0) / 1024.0


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size in MB: shared pages (say, one GGUF file mapped by two ranks) split among sharers."""
    kb = _field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
    return (kb or 0) / 1024.0


def peak_rss_mb(pid: int | str = "self") -> float:
    """The highest resident set size so far in MB (VmHWM)."""
    kb = _field_kb(f"/proc/{pid}/status", "VmHWM:")
    return (kb or 0) / 1024.0


def malloc_trim() -> None:
    """Hand freed heap back to the kernel (glibc keeps it otherwise, and RSS would not drop after an unload)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
