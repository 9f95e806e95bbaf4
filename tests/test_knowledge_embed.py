"""The embedding model: the package's own safetensors -> GGUF conversion, llama.cpp embeddings on it (a tiny BERT
the suite writes, and the real bundled MiniLM where it is installed), and the one-line refusals."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from tinybert import tiny_bert_gguf, write_safetensors

from swarm_hpc.errors import UserError
from swarm_hpc.experts.bertgguf import ConversionError, read_safetensors
from swarm_hpc.experts.ggufmeta import read_metadata
from swarm_hpc.experts.models import BUNDLED, resolve_model
from swarm_hpc.knowledge.embed import Embedder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return tiny_bert_gguf(tmp_path_factory.mktemp("bert"))


def test_safetensors_round_trip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_safetensors(tmp_path / "m.safetensors", {"a": a, "ids": np.arange(5, dtype=np.int64)})
    got = read_safetensors(tmp_path / "m.safetensors")
    assert np.array_equal(got["a"], a) and got["ids"].tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:-8])
    with pytest.raises(ConversionError, match="outside the file"):
        read_safetensors(tmp_path / "cut.safetensors")


def test_converted_tiny_bert_is_an_embedding_gguf(tiny_bert):
    meta = read_metadata(tiny_bert)
    assert meta["general.architecture"] == "bert" and meta["general.name"] == "tiny-bert"
    assert meta["bert.pooling_type"] == 1 and meta["bert.embedding_length"] == 32


def test_embedder_on_tiny_bert_gives_unit_vectors_in_order(tiny_bert):
    e = Embedder(str(tiny_bert))
    assert (e.model.name, e.dim, e.model.pooling) == ("tiny-bert", 32, "mean")
    texts = ["the pi needs power", "banana is a yellow fruit", "the pi needs power", "cluster node"]
    v = e.embed(texts, batch=3)
    assert v.shape == (4, 32) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.allclose(v[0], v[2], atol=1e-5)          # the same text, in another batch, the same vector
    assert not np.allclose(v[0], v[1], atol=1e-3)
    assert np.allclose(e.embed_one(texts[1]), v[1], atol=1e-5)   # batching changes nothing
    long = " ".join(["power"] * 2000)                  # past the model's context: cut, not an error
    assert e.embed([long]).shape == (1, 32)
    e.close()


def test_a_chat_model_is_not_an_embedding_model(tiny):
    with pytest.raises(UserError, match="is not an embedding model") as err:
        Embedder(str(tiny["random"]))
    assert "\n" not in str(err.value) and "minilm" in str(err.value)


def test_bundled_kinds_are_kept_apart(tmp_path):
    assert BUNDLED["minilm"].kind == "embedding" and BUNDLED["smollm2"].kind == "chat"
    with pytest.raises(UserError, match="'minilm' is an embedding model, not a chat model"):
        resolve_model("minilm", tmp_path, "spec.toml", "experts[0].model")
    with pytest.raises(UserError, match="'smollm2' is a chat model, not an embedding model"):
        Embedder("smollm2")


def test_minilm_similar_sentences_score_higher(minilm):
    assert (minilm.model.name, minilm.dim, minilm.model.pooling) == ("all-MiniLM-L6-v2", 384, "mean")
    q = minilm.embed_one("What voltage does the Raspberry Pi 5 need?")
    docs = minilm.embed([
        "The Raspberry Pi 5 is powered by a 5 V, 5 A USB-C power supply.",
        "Bananas are a yellow fruit rich in potassium.",
        "The French Revolution began in 1789.",
        "Slurm schedules batch jobs on a cluster of compute nodes.",
    ])
    scores = docs @ q
    assert scores.argmax() == 0 and scores[0] > 0.5 and scores[1:].max() < 0.3, scores
    # a paraphrase is nearer than a sentence on another subject
    a, b, c = minilm.embed(["A cat sits on the mat.", "There is a cat sitting on a rug.", "Stocks fell sharply today."])
    assert a @ b > a @ c + 0.3


def test_conversion_into_the_cache_is_checked_and_whole(tmp_path):
    from tinybert import write_tiny_bert

    from swarm_hpc.experts.models import convert_once

    src = write_tiny_bert(tmp_path / "src")
    target = tmp_path / "cache" / "tiny.gguf"
    sha = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"model.safetensors has sha256 .* not the pinned"):
        convert_once(src, target, "tiny", {"model.safetensors": "0" * 64}, "reinstall it")
    assert not target.exists()
    (src / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match=r"cannot convert it: .*not 'bert'"):
        convert_once(src, target, "tiny", {"model.safetensors": sha}, "reinstall it")
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny.gguf.lock"]   # no half file
    write_tiny_bert(src)
    assert convert_once(src, target, "tiny", {"model.safetensors": sha}, "reinstall it") == target
    assert read_metadata(target)["general.name"] == "tiny"
