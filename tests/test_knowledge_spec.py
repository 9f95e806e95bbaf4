"""The spec's `[knowledge]` table: what it takes, every mistake as one line with its field and fix, and the check
of the indexes it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swarm_hpc.core.spec import load_spec
from swarm_hpc.errors import UserError
from swarm_hpc.knowledge.check import check_indexes
from swarm_hpc.knowledge.chunks import Chunk
from swarm_hpc.knowledge.index import EmbeddingModel, write_index

HEAD = "task = 'What voltage does the Pi 5 need?'\nstrategy = 'debate'\nrounds = 1\n"
EXPERTS = "[[experts]]\nname = 'a'\npersona = 'p'\n{a}\n[[experts]]\nname = 'b'\npersona = 'q'\n{b}\n"


def spec(tmp_path: Path, knowledge: str = "", a: str = "", b: str = "") -> Path:
    path = tmp_path / "rag.toml"
    path.write_text(HEAD + EXPERTS.format(a=a, b=b) + knowledge)
    return path


def test_a_spec_without_knowledge_reads_nothing(tmp_path):
    s = load_spec(spec(tmp_path))
    assert not s.knowledge.enabled and s.knowledge.index_for(s.experts[0]) is None
    assert s.knowledge.index_paths(tmp_path) == {}


def test_knowledge_table_and_collections(tmp_path):
    s = load_spec(spec(tmp_path, "[knowledge]\nindex = 'docs.index'\ntop_k = 3\nmin_score = 0.2\n"
                                 "[knowledge.collections]\nhardware = '/data/hw.index'\n", b="collection = 'hardware'"))
    k = s.knowledge
    assert k.enabled and (k.top_k, k.min_score) == (3, 0.2)
    assert k.index_for(s.experts[0]) == "docs.index" and k.index_for(s.experts[1]) == "/data/hw.index"
    assert k.index_paths(tmp_path) == {"": tmp_path / "docs.index", "hardware": Path("/data/hw.index")}
    assert load_spec(spec(tmp_path)).knowledge.top_k == 4   # the default


@pytest.mark.parametrize("knowledge, a, needles", [
    ("[knowledge]\nindx = 'd.index'\n", "", ["knowledge.indx", "unknown field", "did you mean `index`"]),
    ("[knowledge]\nindex = 'd.index'\ntop_k = 0\n", "", ["knowledge.top_k", "passages an expert is given"]),
    ("[knowledge]\nindex = 'd.index'\ntop_k = '4'\n", "", ["knowledge.top_k"]),
    ("[knowledge]\nindex = 'd.index'\nmin_score = 2.0\n", "", ["knowledge.min_score", "from -1 to 1"]),
    ("[knowledge]\nindex = ''\n", "", ["knowledge.index", "swarm-hpc index build"]),
    ("", "collection = 'hw'", ["reads collection 'hw', but there is no [knowledge.collections] table",
                               "[knowledge.collections] hw = \"hw.index\""]),
    ("[knowledge.collections]\nsoft = 's.index'\n", "collection = 'hw'",
     ["knowledge", "expert 'a' reads collection 'hw', which [knowledge.collections] does not name (it names soft)"]),
    ("[knowledge.collections]\n'bad name' = 's.index'\n", "", ["collection name 'bad name' is not a letter"]),
    ("[knowledge.collections]\nhw = 's.index'\n", "collection = 3", ["experts[0].collection"]),
])
def test_bad_knowledge_is_one_line(tmp_path, knowledge, a, needles):
    with pytest.raises(UserError) as err:
        load_spec(spec(tmp_path, knowledge, a=a))
    line = str(err.value)
    assert "\n" not in line
    for n in needles:
        assert n in line, line


def test_bad_knowledge_through_the_cli(tmp_path, cli):
    r = cli("run", spec(tmp_path, "[knowledge]\nindex = 'd.index'\ntop_k = -1\n"), "--out", tmp_path / "runs")
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and "knowledge.top_k" in r.err, r.err
    assert not (tmp_path / "runs").exists()


def small_index(path: Path, name: str = "m", dim: int = 4) -> Path:
    v = np.eye(2, dim, dtype=np.float32)
    write_index(path, EmbeddingModel(name, name, dim, "mean"), [Chunk("a.md", 0, 1, "a", 0), Chunk("b.md", 0, 1, "b", 0)],
                v, {"max_chars": 800, "overlap_chars": 200})
    return path


def test_check_indexes(tmp_path):
    small_index(tmp_path / "docs.index")
    small_index(tmp_path / "hw.index")
    s = load_spec(spec(tmp_path, "[knowledge]\nindex = 'docs.index'\n[knowledge.collections]\nhw = 'hw.index'\n"))
    got = check_indexes(s, tmp_path, "rag.toml")
    assert set(got) == {"", "hw"} and got["hw"].count == 2
    s = load_spec(spec(tmp_path, "[knowledge]\nindex = 'docs.index'\n[knowledge.collections]\nhw = 'nope.index'\n"))
    with pytest.raises(UserError, match=r"rag.toml: knowledge.collections.hw: index .*nope.index' does not exist"):
        check_indexes(s, tmp_path, "rag.toml")
    small_index(tmp_path / "other.index", "other", 8)
    s = load_spec(spec(tmp_path, "[knowledge]\nindex = 'docs.index'\n[knowledge.collections]\nx = 'other.index'\n"))
    with pytest.raises(UserError, match=r"knowledge.collections.x: the indexes use different embedding models"):
        check_indexes(s, tmp_path, "rag.toml")


def test_an_expert_cannot_run_on_the_embedding_model(tmp_path, cli):
    r = cli("run", spec(tmp_path, a="model = 'minilm'"), "--out", tmp_path / "runs")
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "experts[0].model: bundled model 'minilm' is an embedding model, not a chat model" in r.err
    assert not (tmp_path / "runs").exists()
