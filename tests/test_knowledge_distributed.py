"""`swarm-hpc index build --np N` and `index query --np N` on real mpiexec ranks, with real llama.cpp embeddings of a
tiny BERT the suite writes: the same vectors as a one-process build, the same top-k as one big index, bad input as
one line, and a killed or interrupted build that leaves the old index whole. `--submit` on the local SLURM cluster
is marked slow, like every SLURM test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli, wait_for
from tinybert import WORDS, tiny_bert_gguf

from swarm_hpc.knowledge.build import split
from swarm_hpc.knowledge.chunks import Chunk
from swarm_hpc.knowledge.distributed import merge_hits, shards_of
from swarm_hpc.knowledge.index import Hit, load_index

PLAIN = [w for w in WORDS if w.isalpha()]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny_bert_gguf(tmp_path_factory.mktemp("bert"), "tiny-bert")


def write_corpus(folder: Path, files: int, sentences: int, seed: int = 0) -> Path:
    """Files of made-up sentences from the tiny BERT's vocabulary, each different, so that scores rarely tie."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = [" ".join(rng.choice(PLAIN, size=int(rng.integers(4, 12)))).capitalize() + "." for _ in range(sentences)]
        (folder / f"doc{f:04d}.txt").write_text(" ".join(lines) + "\n")
    return folder


def vectors(path: Path) -> np.ndarray:
    idx = load_index(path)
    return np.concatenate([s.searcher.vectors for s in idx.shards])


def hits(path: Path, query: str, k: int, *extra: str, cwd: Path) -> list[dict]:
    r = run_cli("index", "query", path, query, "--k", str(k), "--json", *extra, cwd=cwd)
    assert r.rc == 0, r.err
    return json.loads(r.out)["hits"]


def test_split_gives_contiguous_ranges_of_equal_work():
    chunks = [Chunk("s", 0, n, "x" * n, i) for i, n in enumerate([100] * 10 + [900] * 2)]
    ranges = split(chunks, 2, align=1)
    assert ranges[0][0] == 0 and ranges[-1][1] == 12 and ranges[0][1] == ranges[1][0]
    work = [sum(len(c.text) + 40 for c in chunks[a:b]) for a, b in ranges]
    assert max(work) / min(work) < 1.6
    assert split(chunks[:1], 3, align=1) == [(0, 0), (0, 0), (0, 1)]
    many = [Chunk("s", 0, 10, "x" * 10, i) for i in range(100)]
    assert split(many, 3, align=32) == [(0, 32), (32, 64), (64, 100)]   # cut at batches of 32 texts
    assert shards_of(5, 1, 2) == [1, 3] and shards_of(2, 2, 3) == []


def test_merge_hits_is_the_exact_top_k():
    h = lambda c, s: Hit("f", "t", s, 0, 1, 0, c)
    merged = merge_hits([h(5, 0.9), h(1, 0.5), h(2, 0.9), h(7, 0.95), h(3, 0.1)], 3)
    assert [x.chunk for x in merged] == [7, 2, 5]   # best first, the lower chunk number on a tie


def test_build_on_ranks_gives_the_vectors_of_a_one_process_build(bert, tmp_path):
    write_corpus(tmp_path / "docs", files=30, sentences=6)
    common = ("--model", bert, "--max-chars", "120", "--overlap", "40")
    r1 = run_cli("index", "build", "docs", "--out", "one.index", *common, cwd=tmp_path)
    assert r1.rc == 0, r1.err
    r2 = run_cli("index", "build", "docs", "--out", "two.index", *common, "--np", "2", cwd=tmp_path)
    assert r2.rc == 0, r2.err
    assert "on 2 ranks" in r2.err and "2 shards" in r2.out
    one, two = load_index(tmp_path / "one.index"), load_index(tmp_path / "two.index")
    assert one.count == two.count > 60 and len(two.shards) == 2
    assert [c for s in one.shards for c in s.chunks] == [c for s in two.shards for c in s.chunks]
    # ranges cut at the Embedder's batches: every text embedded in the same llama.cpp decode, to the bit
    assert np.array_equal(vectors(tmp_path / "one.index"), vectors(tmp_path / "two.index"))
    assert one.manifest["model"] == two.manifest["model"]

    # the top-k merged across real ranks == the top-k of one big index: 2 ranks (a shard each), 3 ranks (one
    # holds none), and 5 shards on 2 ranks (several a rank)
    r5 = run_cli("index", "build", "docs", "--out", "five.index", *common, "--shards", "5", cwd=tmp_path)
    assert r5.rc == 0, r5.err
    for q in ("the pi needs power.", "Banana is yellow fruit"):
        single = hits(tmp_path / "one.index", q, 7, cwd=tmp_path)
        for path, np_ in (("two.index", "2"), ("two.index", "3"), ("five.index", "2")):
            merged = hits(tmp_path / path, q, 7, "--np", np_, cwd=tmp_path)
            assert [h["chunk"] for h in merged] == [h["chunk"] for h in single], (q, path, np_)
            assert [h["score"] for h in merged] == pytest.approx([h["score"] for h in single], abs=1e-5)
            assert [h["text"] for h in merged] == [h["text"] for h in single]


def test_bad_input_on_ranks_is_one_line_and_writes_nothing(bert, tiny, tmp_path):
    write_corpus(tmp_path / "docs", files=2, sentences=2)
    (tmp_path / "blank").mkdir()
    cases = [
        (("blank", "--out", "a.index", "--model", bert, "--np", "2"), "has no readable text"),
        (("docs", "--out", "a.index", "--model", tiny["paris"], "--np", "2"), "is not an embedding model"),
        (("docs", "--out", "a.index", "--model", bert, "--np", "0"), "--np 0 must be more than 0"),
    ]
    for args, needle in cases:
        r = run_cli("index", "build", *args, cwd=tmp_path)
        lines = r.err.strip().splitlines()
        assert r.rc == 2 and len(lines) == 1 and lines[0].startswith("swarm-hpc: error: ") and needle in lines[0], r.err
        assert not (tmp_path / "a.index").exists()
    r = run_cli("index", "query", "missing.index", "power", "--np", "2", cwd=tmp_path)
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and "does not exist" in r.err, r.err


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of MPI rank `rank` of the build whose environment holds `marker`."""
    for d in Path("/proc").glob("[0-9]*"):
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in env and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(d.name)
    return None


def _start_build(tmp_path: Path, bert: Path, marker: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    key, _, value = marker.partition("=")
    out, err = tmp_path / "build.out", tmp_path / "build.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "index", "build", "docs", "--out", "my.index",
                                 "--model", str(bert), "--max-chars", "100", "--overlap", "0", "--np", "2"],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), key: value},
                                stdout=o, stderr=e, start_new_session=True)
    return proc, out, err


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_killed_rank_or_ctrl_c_leaves_the_old_index_whole(bert, tmp_path):
    write_corpus(tmp_path / "docs", files=4, sentences=2)
    r = run_cli("index", "build", "docs", "--out", "my.index", "--model", bert, cwd=tmp_path)
    assert r.rc == 0, r.err
    before = _files(tmp_path / "my.index")
    write_corpus(tmp_path / "docs", files=400, sentences=60, seed=1)   # ~8000 chunks: seconds of embedding
    for how in ("kill rank 1", "ctrl-c"):
        marker = f"SWARM_HPC_TEST_BUILD={tmp_path}-{how}"
        proc, out_file, err_file = _start_build(tmp_path, bert, marker)
        try:   # once rank 0 says it embeds (the corpus is read and chunked), both ranks are frozen mid-embedding:
            # the build cannot finish before the kill or the Ctrl-C (a quiet machine embeds it in about a second)
            wait_for(lambda e=err_file: "chunks of 400 files" in e.read_text(), 60, "embedding")
            wait_for(lambda m=marker: None not in (_rank_pid(m, 0), _rank_pid(m, 1)), 30, "both ranks")
            ranks = [_rank_pid(marker, 0) or 0, _rank_pid(marker, 1) or 0]
            for pid in ranks:
                os.kill(pid, signal.SIGSTOP)
            assert proc.poll() is None and "wrote" not in out_file.read_text(), err_file.read_text()
            if how == "kill rank 1":
                os.kill(ranks[1], signal.SIGKILL)
                os.kill(ranks[0], signal.SIGCONT)
            else:   # the CLI cancels the job: SIGTERM, then SIGKILL to what is still there (the frozen ranks)
                os.kill(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out, err = out_file.read_text(), err_file.read_text()
        assert proc.returncode != 0, (how, out, err)
        assert "wrote" not in out, (how, out, err)   # stopped while embedding
        if how == "ctrl-c":
            assert proc.returncode == 130 and "interrupted (Ctrl-C); nothing was written" in err, err
        else:
            assert "nothing was written (my.index is as it was)" in err, err
        assert "Traceback" not in err, err
        assert _files(tmp_path / "my.index") == before, how   # the old index, whole, and nothing else
        assert load_index(tmp_path / "my.index").count == 4


@pytest.mark.parametrize("nasty", ["$(touch pwned)", "a b'c\"d", "x\ny `id`"])
def test_the_index_job_script_keeps_user_strings_as_data(nasty, tmp_path):
    from swarm_hpc.knowledge.build import BuildPlan
    from swarm_hpc.knowledge.job import IndexJob

    plan = BuildPlan(nasty, nasty + ".index", threads=3)
    job = IndexJob(plan, 4, "10", nasty, workdir=tmp_path)
    plan_file = tmp_path / f"{nasty}.json"
    text = job.script(plan_file)
    assert subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
    lines = text.split("\n")
    header = lines[:lines.index("# --- values (shell-quoted: whatever they contain, they are data, never commands)")]
    assert all(line.startswith("#") or line == "" for line in header)
    assert "#SBATCH --ntasks=4" in header and "#SBATCH --cpus-per-task=3" in header
    block = "\n".join(lines[len(header):lines.index("# --- end of values")])
    got = subprocess.run(["bash", "-c", block + '\nprintf "%s" "$SWARM_PLAN"'], capture_output=True, cwd=tmp_path)
    assert got.stdout.decode() == str(plan_file) and not (tmp_path / "pwned").exists()
    assert text.rstrip().endswith('-m swarm_hpc.knowledge.rank "$SWARM_PLAN" --build')


@pytest.mark.slow
def test_build_as_a_slurm_job(bert, tmp_path, local_slurm):
    """--submit: the same build as an sbatch job of 2 tasks under srun; `logs` and the job index find it."""
    write_corpus(tmp_path / "docs", files=20, sentences=6)
    env = {**local_slurm.env, "SWARM_HPC_STATE": str(tmp_path / "state")}
    common = ("--model", bert, "--max-chars", "120", "--overlap", "40")
    r = run_cli("index", "build", "docs", "--out", "my.index", *common, "--np", "2", "--submit", "--time", "5",
                cwd=tmp_path, env=env)
    assert r.rc == 0, r.err
    job = r.out.split("submitted index build job ")[1].split()[0]
    result = local_slurm.wait(int(job), timeout=120)
    log = run_cli("logs", job, env=env)
    assert result.state == "COMPLETED", (result, log.out)
    assert log.rc == 0 and "wrote my.index:" in log.out and "on 2 ranks" in log.out, log.out
    r1 = run_cli("index", "build", "docs", "--out", "one.index", *common, cwd=tmp_path)
    assert r1.rc == 0, r1.err
    assert np.array_equal(vectors(tmp_path / "one.index"), vectors(tmp_path / "my.index"))
    assert {c.source for s in load_index(tmp_path / "my.index").shards for c in s.chunks} == {
        f"docs/doc{i:04d}.txt" for i in range(20)}
