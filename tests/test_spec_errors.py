"""Bad input: each is one clear line naming the file, the field and the fix; exit code 2; nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import expert

from swarm_hpc.core.spec import load_spec
from swarm_hpc.errors import UserError
from swarm_hpc.fed.spec import load_fed_spec


def assert_one_line_error(res, *needles: str) -> None:
    assert res.rc == 2, (res.rc, res.out, res.err)
    lines = [l for l in res.err.splitlines() if l.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("swarm-hpc: error: ")
    assert "Traceback" not in res.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_valid_spec_applies_defaults(write_spec, tiny):
    path = write_spec([{"name": "a", "model": str(tiny["paris"]), "persona": "p"}])
    spec = load_spec(path)
    assert spec.experts[0].n_ctx == 2048 and spec.experts[0].threads == 1
    assert spec.ranks_needed == 1 and spec.synthesizer_name == "a"


def test_every_example_spec_is_valid():
    examples = sorted(Path(__file__).parent.parent.glob("jobs/examples/*.toml"))
    assert len(examples) >= 4
    for path in examples:
        if path.name.startswith("fed-"):  # a federated-learning spec (`swarm-hpc fed`)
            assert load_fed_spec(path).ranks_needed >= 2
        else:
            load_spec(path)


CASES = {
    "malformed TOML": ("task = 'x'\nrounds = = 2\n", ["not valid TOML", "line 2"]),
    "unknown field": ("task='t'\nstrategy='debate'\nrounds=1\nroundz=2\n[[experts]]\nname='a'\npersona='p'\n",
                      ["roundz", "unknown field", "did you mean `rounds`"]),
    "unknown expert field": ("task='t'\nstrategy='debate'\nrounds=1\n[[experts]]\nname='a'\npersona='p'\ntemp=1\n",
                             ["experts[0].temp", "temperature"]),
    "zero experts": ("task='t'\nstrategy='debate'\nrounds=1\nexperts=[]\n", ["experts", "zero experts"]),
    "missing experts": ("task='t'\nstrategy='debate'\nrounds=1\n", ["experts", "required", "[[experts]]"]),
    "bad strategy": ("task='t'\nstrategy='chaos'\nrounds=1\n[[experts]]\nname='a'\npersona='p'\n",
                     ["strategy", "debate, vote, moa, round-robin"]),
    "n_ctx not a multiple of 256": ("task='t'\nstrategy='vote'\nrounds=1\n[[experts]]\nname='a'\npersona='p'\nn_ctx=1000\n",
                                    ["experts[0].n_ctx", "multiple of 256"]),
    "duplicate names": ("task='t'\nstrategy='vote'\nrounds=1\n[[experts]]\nname='a'\npersona='p'\n[[experts]]\nname='a'\npersona='q'\n",
                        ["experts", "unique"]),
    "endless round_timeout": ("task='t'\nstrategy='debate'\nrounds=1\nround_timeout=inf\n[[experts]]\nname='a'\npersona='p'\n",
                              ["round_timeout", "86400"]),
    "rounds as a bool": ("task='t'\nstrategy='debate'\nrounds=true\n[[experts]]\nname='a'\npersona='p'\n", ["rounds"]),
    "rounds as a string": ("task='t'\nstrategy='debate'\nrounds='2'\n[[experts]]\nname='a'\npersona='p'\n", ["rounds"]),
    "rank0_hosts_expert as a string": ("task='t'\nstrategy='debate'\nrounds=1\nrank0_hosts_expert='yes'\n"
                                       "[[experts]]\nname='a'\npersona='p'\n", ["rank0_hosts_expert"]),
    "rank0_hosts_expert as a number": ("task='t'\nstrategy='debate'\nrounds=1\nrank0_hosts_expert=0\n"
                                       "[[experts]]\nname='a'\npersona='p'\n", ["rank0_hosts_expert"]),
    "temperature as a string": ("task='t'\nstrategy='debate'\nrounds=1\n[[experts]]\nname='a'\npersona='p'\n"
                                "temperature='0.5'\n", ["experts[0].temperature"]),
    "unknown synthesizer": ("task='t'\nstrategy='debate'\nrounds=1\nsynthesizer='zed'\n[[experts]]\nname='a'\npersona='p'\n",
                            ["synthesizer", "'zed'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_is_one_line(case, tmp_path, cli):
    text, needles = CASES[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    res = cli("run", path, "--out", tmp_path / "runs")
    assert_one_line_error(res, str(path), *needles)
    assert not (tmp_path / "runs").exists()


def test_missing_model_file(write_spec, tmp_path, cli):
    path = write_spec([expert("a", tmp_path / "nope.gguf")])
    res = cli("run", path, "--out", tmp_path / "runs")
    assert_one_line_error(res, "experts[0].model", "does not exist", "bundled name")
    assert not (tmp_path / "runs").exists()


def test_model_that_is_not_gguf(write_spec, tmp_path, cli):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model")
    path = write_spec([expert("a", fake)])
    res = cli("run", path, "--out", tmp_path / "runs")
    assert_one_line_error(res, "experts[0].model", "not a GGUF file")
    assert not (tmp_path / "runs").exists()


def test_n_ctx_too_small_for_persona(write_spec, tiny, tmp_path, cli):
    path = write_spec([expert("a", tiny["paris"], persona="word " * 400, n_ctx=256, max_tokens=16)])
    res = cli("run", path, "--out", tmp_path / "runs")
    assert_one_line_error(res, "experts[0].n_ctx", "too small for the persona", "at least")
    assert not (tmp_path / "runs").exists()


def test_model_without_chat_template(write_spec, tmp_path, cli):
    from tinygguf import write_tiny_gguf

    bare = write_tiny_gguf(tmp_path / "base.gguf", "Paris", chat_template=False)
    res = cli("run", write_spec([expert("a", bare)]), "--out", tmp_path / "runs")
    assert_one_line_error(res, "experts[0].chat_format", "no chat template", "plain")
    assert res.rc == 2 and not (tmp_path / "runs").exists()
    ok = cli("run", write_spec([expert("a", bare, chat_format="plain")], name="plain"), "--out", tmp_path / "runs")
    assert ok.rc == 0, ok.err


def test_more_experts_than_ranks(write_spec, tiny, tmp_path, cli):
    path = write_spec([expert("a", tiny["paris"]), expert("b", tiny["rome"]), expert("c", tiny["note"])])
    res = cli("run", path, "--np", "2", "--out", tmp_path / "runs")
    assert_one_line_error(res, "3 experts need 3 MPI ranks", "--np 3")
    assert not (tmp_path / "runs").exists()


def test_not_a_run_directory(tmp_path, cli):
    res = cli("run", "--resume", tmp_path)
    assert_one_line_error(res, "not a swarm-hpc run directory")


def test_user_error_is_always_one_line():
    e = UserError("f.toml", "bad\nthing", "do\nthis", "x.y")
    assert str(e) == "f.toml: x.y: bad thing (fix: do this)"


def test_a_spec_that_is_a_fifo_or_a_symlink_loop_is_one_line_not_a_hang(tmp_path, cli):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    res = cli("run", fifo, "--out", tmp_path / "runs", timeout=30)
    assert_one_line_error(res, str(fifo), "not a regular file")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    assert_one_line_error(cli("run", loop, "--out", tmp_path / "runs"), str(loop), "symlink loop")
    assert not (tmp_path / "runs").exists()


def test_a_model_path_that_is_a_fifo_or_a_symlink_loop_is_one_line(write_spec, tmp_path, cli):
    os.mkfifo(tmp_path / "fifo.gguf")
    (tmp_path / "loop.gguf").symlink_to(tmp_path / "loop.gguf")
    for name, needle in (("fifo.gguf", "not a regular file"), ("loop.gguf", "symlink loop")):
        res = cli("run", write_spec([expert("a", name)], name=name[:4]), "--out", tmp_path / "runs", timeout=30)
        assert_one_line_error(res, "experts[0].model", needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("snapshot", ["not json", "{}", '{"spec_dir": ".", "spec": {"rounds": 0}}', "directory"])
def test_resume_of_a_damaged_spec_snapshot_is_one_line(snapshot, tmp_path, cli):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if snapshot == "directory":
        (run_dir / "spec.json").mkdir()
    else:
        (run_dir / "spec.json").write_text(snapshot)
    res = cli("run", "--resume", run_dir)
    assert_one_line_error(res, str(run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == ["spec.json"]  # nothing written
