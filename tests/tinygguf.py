"""Write tiny llama-architecture GGUF files for fast tests (~0.2 MB; load and generate in milliseconds).

- `write_tiny_gguf(path)`: random weights, deterministic gibberish under greedy decoding.
- `write_tiny_gguf(path, quant="q4_0")`: the same with the layers' matrices in Q4_0 (a type llama.cpp's CPU
  backend repacks on x86 with AVX2 and on ARM).
- `write_tiny_gguf(path, "words to say")`: a bigram chain (zero attention/FFN) so greedy decoding emits exactly
  those words and then EOS, whatever the prompt (the words must be distinct); with `loop=True` it says them
  over and over and never stops by itself (for deadline and max_tokens tests).

The vocabulary is SentencePiece-style: <unk> <s> </s>, the 256 byte tokens (so any UTF-8 text tokenizes),
a few pieces, and ChatML markers; the file carries a ChatML chat template.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _vocab(extra: list[str]) -> tuple[list[str], list[int], list[float]]:
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
    pieces = (["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
              + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789.,!?")
              + ["\u2581the", "\u2581a", "\u2581is", "\u2581of", "he", "in", "er", "an"])
    tokens += pieces
    types += [T.NORMAL] * len(pieces)
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [T.CONTROL, T.CONTROL]
    for piece in extra:
        if piece not in tokens:
            tokens.append(piece)
            types.append(T.NORMAL)
    scores = [(-i / 1000.0 + len(t)) if types[i] == T.NORMAL else 0.0 for i, t in enumerate(tokens)]
    return tokens, [int(t) for t in types], scores


def write_tiny_gguf(path: str | Path, script: str | None = None, *, loop: bool = False, chat_template: bool = True, layers: int = 2, embd: int = 64,
                    heads: int = 4, ff: int = 128, ctx: int = 4096, seed: int = 0, quant: str | None = None) -> Path:
    path = Path(path)
    head_dim = embd // heads
    pieces: list[str] = []
    if script:
        words = script.split()
        pieces = [words[0]] + ["\u2581" + w for w in words[1:]]
        if len(set(pieces)) != len(pieces):
            raise ValueError("scripted words must be distinct")
        if len(pieces) + 1 > embd:
            raise ValueError("need embd > number of scripted words")
    tokens, types, scores = _vocab(pieces)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def rnd(*shape: int) -> np.ndarray:
        if script:
            return np.zeros(shape, np.float32)
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def matrix(name: str, data: np.ndarray) -> None:
        if quant is None:
            w.add_tensor(name, data)
        else:
            qtype = gguf.GGMLQuantizationType[quant.upper()]
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(ctx)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if quant == "q4_0" else gguf.LlamaFileType.ALL_F32)
    w.add_name("tiny-scripted-llama" if script else "tiny-random-llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(CHATML)
    if script:
        ids = [tokens.index(p) for p in pieces]
        k = len(ids)
        emb = np.zeros((n_vocab, embd), np.float32)
        emb[:, k] = 1.0                      # any other token -> the "start" direction
        out = np.zeros((n_vocab, embd), np.float32)
        out[ids[0], k] = 10.0                # start -> first word
        for j, t in enumerate(ids):
            emb[t] = 0.0
            emb[t, j] = 1.0                  # word j -> direction j
            last = ids[0] if loop else 2     # the last word -> EOS, or back to the first word (never stops)
            out[ids[j + 1] if j + 1 < k else last, j] = 10.0
        w.add_tensor("token_embd.weight", emb)
        w.add_tensor("output.weight", out)
    else:
        w.add_tensor("token_embd.weight", rnd(n_vocab, embd))
        w.add_tensor("output.weight", rnd(n_vocab, embd))
    w.add_tensor("output_norm.weight", np.ones(embd, np.float32))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(embd, np.float32))
        matrix(f"blk.{i}.attn_q.weight", rnd(heads * head_dim, embd))
        matrix(f"blk.{i}.attn_k.weight", rnd(heads * head_dim, embd))
        matrix(f"blk.{i}.attn_v.weight", rnd(heads * head_dim, embd))
        matrix(f"blk.{i}.attn_output.weight", rnd(embd, heads * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(embd, np.float32))
        matrix(f"blk.{i}.ffn_gate.weight", rnd(ff, embd))
        matrix(f"blk.{i}.ffn_up.weight", rnd(ff, embd))
        matrix(f"blk.{i}.ffn_down.weight", rnd(embd, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
