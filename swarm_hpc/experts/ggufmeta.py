"""Scalar metadata from a GGUF file's header, without loading the model (arrays such as the vocabulary are
skipped, not read). Used to estimate a model's memory before it is loaded (swarm_hpc/experts/switching.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    return f.read(n).decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    elif vtype == _STRING:
        f.seek(_read(f, "<Q"), 1)
    elif vtype == _ARRAY:
        itype, count = _read(f, "<I"), _read(f, "<Q")
        if itype in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[itype]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, itype)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """{key: value} for every scalar and string key of the header; array keys map to their length."""
    out: dict[str, Any] = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        _read(f, "<Q")  # tensor count
        n_kv = _read(f, "<Q")
        for _ in range(n_kv):
            key = _string(f)
            vtype = _read(f, "<I")
            if vtype in _SCALARS:
                out[key] = _read(f, _SCALARS[vtype])
            elif vtype == _STRING:
                out[key] = _string(f)
            elif vtype == _ARRAY:
                pos = f.tell()
                _read(f, "<I")
                out[key] = _read(f, "<Q")
                f.seek(pos)
                _skip_value(f, vtype)
            else:
                raise ValueError(f"unknown GGUF value type {vtype} for key {key!r}")
    return out


def kv_cache_bytes(meta: dict[str, Any], n_ctx: int, bytes_per_value: int = 2) -> int:
    """llama.cpp's K and V cache for `n_ctx` tokens (f16 by default), from the architecture's header keys."""
    arch = meta.get("general.architecture", "llama")
    get = lambda k, d=None: meta.get(f"{arch}.{k}", d)
    layers = int(get("block_count", 0) or 0)
    heads = int(get("attention.head_count", 1) or 1)
    heads_kv = int(get("attention.head_count_kv", heads) or heads)
    embd = int(get("embedding_length", 0) or 0)
    key_len = int(get("attention.key_length", embd // heads if heads else 0) or 0)
    value_len = int(get("attention.value_length", key_len) or key_len)
    return layers * n_ctx * heads_kv * (key_len + value_len) * bytes_per_value
