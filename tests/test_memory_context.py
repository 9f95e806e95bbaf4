"""Dynamic context: an expert's llama.cpp context grows in steps of 256 on the same weights, within a budget."""

from __future__ import annotations

import pytest
from conftest import expert, messages, run_dir_from
from test_memory_compress import debate
from tinygguf import write_tiny_gguf

from swarm_hpc.experts.llama import LlamaExpert
from swarm_hpc.experts.models import ResolvedModel
from swarm_hpc.memory.context import default_budget_mb, target_size
from swarm_hpc.memory.options import ExpertMemory


@pytest.fixture(scope="module")
def paris(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "paris.gguf", "Paris is the capital.")
    return ResolvedModel(ref=str(path), path=path, chat_format=None, bundled=False)


def mappings(path) -> list[str]:
    """This process's memory mappings of `path` (address ranges): llama.cpp mmaps the weights once per load."""
    with open("/proc/self/maps") as f:
        return [line.split()[0] for line in f if line.rstrip().endswith(str(path))]


def test_sizes_are_steps_of_256_within_the_budget():
    assert target_size(300, 256, 256, 2048, 512, None) == 512
    assert target_size(100, 512, 256, 2048, 512, None) == 256
    assert target_size(100, 512, 512, 2048, 512, None) == 512           # never below the spec's n_ctx
    assert target_size(5000, 512, 512, 2048, 512, None) == 2048         # n_ctx_max
    assert target_size(5000, 512, 512, 4096, 1024, 1.0) == 1024         # 1 MB of KV at 1 KB a token


def test_the_budget_is_a_share_of_the_jobs_memory(monkeypatch):
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "4000")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")
    assert default_budget_mb(300.0) == (700.0, "SLURM_MEM_PER_NODE")
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    budget, source = default_budget_mb(300.0)
    assert source == "MemAvailable" and budget is not None and budget > 0


def test_a_resize_keeps_the_weights_and_the_cache(paris):
    e = LlamaExpert("alice", paris, n_ctx=256, threads=1, temperature=0.0, seed=1, max_tokens=24,
                    memory=ExpertMemory(n_ctx_max=1536, budget_mb=64))
    model, maps = e.llm._model.model, mappings(paris.path)
    assert maps
    _, gens = debate(e, 6)
    resizes = [r for g in gens for r in (g.memory or {}).get("resizes", [])]
    assert len(resizes) >= 2 and all(r["to"] % 256 == 0 and r["to"] > r["from"] for r in resizes)
    assert e.n_ctx == resizes[-1]["to"] > 256 and e.llm.n_ctx() == e.n_ctx
    assert all(g.dropped_messages == 0 and g.finish_reason == "stop" for g in gens)
    # the same llama_model, and its file mapped once at the same addresses: no weight was read again
    assert e.llm._model.model == model and mappings(paris.path) == maps
    # the cached tokens moved to the new context: a round after a resize evaluated only its new tokens
    for i, g in enumerate(gens[1:], 1):
        if g.memory and g.memory.get("resizes"):
            assert g.memory["resizes"][0]["kept_tokens"] > 0
            assert g.prompt_eval_tokens <= g.prompt_tokens - gens[i - 1].prompt_tokens + 8


def test_the_budget_stops_growth(paris):
    # 2 layers x 4 KV heads x (16 + 16) values x 2 bytes = 512 bytes a token: 0.3 MB holds 614 tokens -> 512
    e = LlamaExpert("alice", paris, n_ctx=256, threads=1, temperature=0.0, seed=1, max_tokens=24,
                    memory=ExpertMemory(n_ctx_max=4096, budget_mb=0.3))
    _, gens = debate(e, 6)
    assert e.n_ctx == 512 and any(g.dropped_messages for g in gens)


def test_a_swarm_grows_its_contexts_on_its_ranks(write_spec, tiny, tmp_path, cli):
    spec = write_spec([expert("alice", tiny["paris"], n_ctx=512), expert("bob", tiny["rome"], n_ctx=512)], rounds=6)
    spec.write_text(spec.read_text() + "\n[memory]\nn_ctx_max = 2048\ncontext_budget_mb = 64\n")
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 0, res.err
    replies = [r for r in messages(run_dir_from(res.out)) if r["role"] == "expert" and r["round"] <= 6]
    assert len(replies) == 12 and all(r["dropped_messages"] == 0 for r in replies)
    grown = [s for r in replies for s in r["memory"].get("resizes", [])]
    assert {r["expert"] for r in replies if r["memory"].get("resizes")} == {"alice", "bob"}
    assert all(s["to"] > s["from"] and s["seconds"] < 5 and "rss_mb" in s for s in grown)
    assert max(r["memory"]["n_ctx"] for r in replies) > 512


@pytest.mark.parametrize(("table", "field"), [('policy = "forget"', "memory.policy"), ("n_ctx_max = 300", "memory.n_ctx_max"),
                                               ('store = "/proc/version"', "memory.store"), ("recall = -1", "memory.recall"),
                                               ('retriever = "vectors"', "memory.retriever")])
def test_bad_memory_settings_are_one_line(write_spec, tiny, tmp_path, cli, table, field):
    spec = write_spec([expert("alice", tiny["paris"])])
    spec.write_text(spec.read_text() + f"\n[memory]\n{table}\n")
    res = cli("run", spec, "--out", tmp_path / "runs")
    assert res.rc == 2 and len(res.err.strip().splitlines()) == 1 and field in res.err, res.err
    assert not (tmp_path / "runs").exists()
