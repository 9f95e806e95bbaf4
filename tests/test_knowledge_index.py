"""The index on disk and exact search: round trip, exact top-k over shards, atomic replacement, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swarm_hpc.errors import UserError
from swarm_hpc.knowledge import index as ix
from swarm_hpc.knowledge.chunks import Chunk
from swarm_hpc.knowledge.embed import normalize
from swarm_hpc.knowledge.index import EmbeddingModel, ExactSearch, load_index, merge_topk, write_index

MODEL = EmbeddingModel("minilm", "all-MiniLM-L6-v2", 16, "mean")
CHUNKING = {"max_chars": 800, "overlap_chars": 200}


def corpus(n: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = normalize(rng.standard_normal((n, dim)).astype(np.float32))
    chunks = [Chunk(f"docs/f{i % 7}.md", 10 * i, 10 * i + 9, f"chunk {i} — ü", i // 7) for i in range(n)]
    return chunks, vectors


def brute(vectors, q, k):
    s = vectors @ q
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
    return order, s[order]


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_round_trip_and_exact_search_over_shards(tmp_path, shards):
    chunks, vectors = corpus(50)
    manifest = write_index(tmp_path / "my.index", MODEL, chunks, vectors, CHUNKING, shards=shards)
    assert manifest["count"] == 50 and len(manifest["shards"]) == shards and manifest["sources"] == 7
    idx = load_index(tmp_path / "my.index")
    assert idx.model == MODEL and idx.count == 50
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = normalize(rng.standard_normal((1, 16)).astype(np.float32))[0]
        for k in (1, 5, 50, 80):
            hits = idx.search(q, k)
            want, scores = brute(vectors, q, k)
            assert [h.chunk for h in hits] == want
            assert np.allclose([h.score for h in hits], scores, atol=1e-6)
    h = idx.search(vectors[17], 1)[0]
    assert (h.chunk, h.source, h.text, h.start, h.end, h.position) == (17, "docs/f3.md", "chunk 17 — ü", 170, 179, 2)
    assert h.score == pytest.approx(1.0, abs=1e-5)


def test_ties_go_to_the_lower_row_and_merge_is_exact():
    v = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    rows, scores = ExactSearch(v).search(np.array([1, 0], dtype=np.float32), 2)
    assert rows.tolist() == [0, 2] and scores.tolist() == [1, 1]
    ids, sc = merge_topk([(np.array([5, 1]), np.array([0.9, 0.2])), (np.array([3, 4]), np.array([0.9, 0.5]))], 3)
    assert ids.tolist() == [3, 5, 4] and sc.tolist() == [0.9, 0.9, 0.5]


def test_replacing_an_index_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "my.index"
    chunks, vectors = corpus(20)
    write_index(path, MODEL, chunks, vectors, CHUNKING, shards=2)
    before = sorted(p.name for p in path.iterdir())
    # a build that dies writing its manifest leaves the old index whole and none of its own files
    monkeypatch.setattr(ix, "atomic_write_json", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        write_index(path, MODEL, *corpus(30, seed=2), CHUNKING)
    assert sorted(p.name for p in path.iterdir()) == before and load_index(path).count == 20
    monkeypatch.undo()
    (path / ".vectors-x.npy.123.tmp").write_bytes(b"leftover of a killed build")
    write_index(path, MODEL, *corpus(30, seed=2), CHUNKING)
    after = sorted(p.name for p in path.iterdir())
    assert len(after) == 3 and not set(after) & (set(before) - {"manifest.json"}) and load_index(path).count == 30


def test_a_failed_first_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ix, "atomic_write_json", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_index(tmp_path / "new.index", MODEL, *corpus(5), CHUNKING)
    assert list(tmp_path.iterdir()) == []


def one_line(err: pytest.ExceptionInfo) -> str:
    s = str(err.value)
    assert "\n" not in s and "(fix: " in s
    return s


def test_never_writes_into_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("mine")
    (tmp_path / "file").write_text("x")
    for out, msg in ((tmp_path / "docs", "is a folder that is not an index .*'notes.md'"),
                     (tmp_path / "file", "exists and is not an index folder"),
                     (tmp_path / "nope" / "my.index", "the folder of .* does not exist")):
        with pytest.raises(UserError, match=msg) as err:
            write_index(out, MODEL, *corpus(3), CHUNKING)
        one_line(err)
    assert (tmp_path / "docs" / "notes.md").read_text() == "mine" and (tmp_path / "file").read_text() == "x"


def test_load_errors_are_one_line(tmp_path):
    path = tmp_path / "my.index"
    with pytest.raises(UserError, match="does not exist") as err:
        load_index(path)
    one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"is not an index \(no manifest.json") as err:
        load_index(tmp_path / "empty")
    one_line(err)
    write_index(path, MODEL, *corpus(10), CHUNKING)
    manifest = json.loads((path / "manifest.json").read_text())
    vec = path / manifest["shards"][0]["vectors"]
    good = vec.read_bytes()

    def broken(what: str, match: str):
        with pytest.raises(UserError, match=match) as err:
            load_index(path)
        one_line(err)
        write_index(path, MODEL, *corpus(10), CHUNKING)   # whole again for the next case
        return json.loads((path / "manifest.json").read_text())

    vec.write_bytes(good[:-40])
    manifest = broken("truncated vectors", "is damaged: vectors-.* does not match its sha256")
    (path / manifest["shards"][0]["chunks"]).unlink()
    manifest = broken("missing chunks", r"is damaged: chunks-.*\.jsonl is missing")
    (path / "manifest.json").write_text("{not json")
    manifest = broken("bad manifest", "is damaged: JSONDecodeError")
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    manifest = broken("version", "has format version 99")
    (path / "manifest.json").write_text(json.dumps({**manifest, "count": 11}))
    broken("count", "its shards hold 10 chunks, not 11")


def test_a_query_model_must_match_the_index(tmp_path):
    write_index(tmp_path / "my.index", MODEL, *corpus(3), CHUNKING)
    idx = load_index(tmp_path / "my.index")
    idx.check_model(EmbeddingModel("other/path.gguf", "all-MiniLM-L6-v2", 16, "mean"), "q")   # same model: fine
    with pytest.raises(UserError, match=r"was built with all-MiniLM-L6-v2 \(16 dimensions\), but model "
                       r"'tiny.gguf' is tiny-bert \(32 dimensions\)") as err:
        idx.check_model(EmbeddingModel("tiny.gguf", "tiny-bert", 32, "mean"), "q")
    assert "--model minilm" in one_line(err)
