"""`swarm-hpc serve`: the real openai SDK against the real HTTP server on rank 0 of real mpiexec ranks, with
tiny GGUF experts (tests/tinygguf.py). Slow experts are injected from outside (tests/stall_expert.py)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, wait_for
from tinygguf import write_tiny_gguf

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


@dataclass
class Svc:
    url: str
    key: str
    folder: Path
    proc: subprocess.Popen

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(**{"base_url": self.url, "api_key": self.key, "max_retries": 0, "timeout": 120, **kw})

    def raw(self, method: str, path: str, body: bytes | None = None, key: str | None = None,
            headers: dict | None = None) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) of one plain HTTP call."""
        req = urllib.request.Request(self.url.removesuffix("/v1") + path, data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.key if key is None else key}",
                                              "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), _json(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), _json(e.read())


def _json(data: bytes) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        return {"text": data.decode(errors="replace")}


def start(spec: Path, out: Path, env: dict | None = None, *args: str) -> Svc:
    full = {k: v for k, v in os.environ.items() if k != "SWARM_HPC_API_KEY"} | (env or {})
    proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "serve", str(spec), "--port", "0", "--out", str(out),
                             *args], cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("service folder: "), line + proc.stderr.read()
    folder = Path(line.split(": ", 1)[1].strip())
    wait_for(lambda: (folder / "service.json").exists() or proc.poll() is not None, 120, "the service to listen")
    assert proc.poll() is None, proc.stderr.read()
    info = json.loads((folder / "service.json").read_text())
    key = Path(info["key_file"]).read_text().strip()
    return Svc(info["url"], key, folder, proc)


def stop(svc: Svc) -> None:
    if svc.proc.poll() is None:
        os.killpg(svc.proc.pid, signal.SIGINT)
    svc.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    """alice (rank 0's own expert) says 'Paris is the capital.', bob 'Rome is the answer.'; one debate round and
    alice's synthesis."""
    d = tmp_path_factory.mktemp("serve")
    paris = write_tiny_gguf(d / "paris.gguf", "Paris is the capital.")
    rome = write_tiny_gguf(d / "rome.gguf", "Rome is the answer.")
    lines = ['task = "unused: every request brings its own"', 'strategy = "debate"', "rounds = 1",
             "round_timeout = 30", 'synthesizer = "alice"']
    for name, model in (("alice", paris), ("bob", rome)):
        lines += ["[[experts]]", f'name = "{name}"', f'model = "{model}"', f'persona = "You are {name}."',
                  "temperature = 0.0", "max_tokens = 24", "n_ctx = 512"]
    path = d / "duo.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def svc(spec, tmp_path_factory):
    s = start(spec, tmp_path_factory.mktemp("out"))
    yield s
    stop(s)


def ask(text: str = "What is the capital of France?") -> list[dict]:
    return [{"role": "user", "content": text}]


def test_models_lists_the_swarm_and_each_expert(svc):
    ids = [m.id for m in svc.client().models.list()]
    assert ids == ["duo", "duo/alice", "duo/bob"]


def test_chat_completion_is_the_swarms_final_answer_with_usage(svc):
    r = svc.client().chat.completions.create(model="duo", messages=ask())
    text = r.choices[0].message.content
    assert text == "Paris is the capital."          # alice's synthesis
    assert r.choices[0].finish_reason == "stop"
    extra = r.model_extra["swarm"]
    assert 0 < extra["engine_seconds"] < 60 and extra["by"] == "alice"
    steps = extra["steps"]
    assert [s["label"] for s in steps] == ["round 1", "final"]
    replies = [x for s in steps for x in s["replies"]]
    assert {x["expert"] for x in replies} == {"alice", "bob"} and len(replies) == 3
    assert r.usage.completion_tokens == sum(x["completion_tokens"] for x in replies) > 0
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the request is an ordinary run directory
    run_dir = Path(extra["run_dir"])
    assert run_dir.parent == svc.folder / "requests"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final"]["content"] == text
    assert (run_dir / "final.md").exists()
    task = json.loads((run_dir / "transcript.jsonl").read_text().splitlines()[0])
    assert task["role"] == "task" and task["content"] == "What is the capital of France?"


def test_one_expert_alone_and_request_options(svc):
    c = svc.client()
    r = c.chat.completions.create(model="duo/bob", messages=ask())
    assert r.choices[0].message.content == "Rome is the answer."
    assert [s["replies"][0]["expert"] for s in r.model_extra["swarm"]["steps"]] == ["bob"]
    # stop cuts the final answer; max_tokens lowers every expert's limit
    r = c.chat.completions.create(model="duo/bob", messages=ask(), stop=[" the"])
    assert r.choices[0].message.content == "Rome is"
    r = c.chat.completions.create(model="duo/bob", messages=ask(), max_tokens=2)
    assert r.usage.completion_tokens <= 2 and r.choices[0].message.content == "Rome is"
    # earlier turns and a system message become context of the task
    r = c.chat.completions.create(model="duo/alice", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Capital of France?"}])
    task = json.loads((Path(r.model_extra["swarm"]["run_dir"]) / "transcript.jsonl").read_text().splitlines()[0])
    assert task["content"].startswith("Instructions: Be brief.") and "User: Hello\nAssistant: Hi." in task["content"]
    assert task["content"].endswith("Now answer: Capital of France?")


def test_streaming_chunks_add_up_to_the_final_text_with_usage(svc):
    c = svc.client()
    whole = c.chat.completions.create(model="duo", messages=ask()).choices[0].message.content
    chunks = list(c.chat.completions.create(model="duo", messages=ask(), stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole and len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1
    progress = [ch.model_extra["swarm"]["label"] for ch in chunks if ch.model_extra.get("swarm", {}).get("label")]
    assert progress == ["round 1", "final"]                 # each step as it finished, before the text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == ["stop"]
    # without include_usage no usage chunk
    plain = list(c.chat.completions.create(model="duo", messages=ask(), stream=True))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices


def test_every_call_needs_the_key(svc):
    with pytest.raises(openai.AuthenticationError):
        svc.client(api_key="wrong").chat.completions.create(model="duo", messages=ask())
    for path in ("/v1/models", "/health", "/metrics"):
        status, _, body = svc.raw("GET", path, key="")
        assert status == 401 and body["error"]["code"] == "invalid_api_key", path
    assert svc.raw("GET", "/health")[0] == 200
    # the generated key is the user's alone
    key_file = svc.folder / "api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_unknown_model_is_404_listing_the_names(svc):
    with pytest.raises(openai.NotFoundError) as e:
        svc.client().chat.completions.create(model="gpt-4o", messages=ask())
    assert "duo, duo/alice, duo/bob" in e.value.body["message"]


def test_bad_requests_are_413_and_422(svc):
    big = json.dumps({"model": "duo", "messages": ask("x" * 1_100_000)}).encode()
    status, _, body = svc.raw("POST", "/v1/chat/completions", big)
    assert status == 413 and "larger than" in body["error"]["message"]
    for bad, what in ((b"{not json", "not JSON"), (json.dumps({"model": "duo"}).encode(), "messages"),
                      (json.dumps({"model": "duo", "messages": [{"role": "user", "content": "hi"}],
                                   "temperature": 9}).encode(), "temperature"),
                      (json.dumps({"model": "duo", "messages": [{"role": "assistant", "content": "hi"}]}).encode(),
                       "last message"),
                      (json.dumps({"model": "duo", "messages": ask() * 65}).encode(), "at most 64"),
                      (json.dumps({"model": "duo", "messages": ask(), "n": 2}).encode(), "n:"),
                      (json.dumps({"model": "duo", "messages": ask(), "tools": [{"type": "function", "function": {
                          "name": "f"}}]}).encode(), "calls no tools")):
        status, _, body = svc.raw("POST", "/v1/chat/completions", bad)
        assert status == 422 and what in body["error"]["message"], (what, body)
    with pytest.raises(openai.UnprocessableEntityError):
        svc.client().chat.completions.create(model="duo", messages=[])


def test_metrics_in_prometheus_format(svc):
    svc.client().chat.completions.create(model="duo/alice", messages=ask())
    status, _, body = svc.raw("GET", "/metrics")
    text = body["text"]
    assert status == 200
    assert 'swarm_requests_total{code="200",model="duo/alice"}' in text
    assert 'swarm_expert_tokens_total{expert="alice",kind="completion"}' in text
    assert "swarm_queue_length 0.0" in text and "swarm_rounds_total" in text


# --- a slow swarm: the queue and clients that go away --------------------------------------------------------------

@pytest.fixture(scope="module")
def slow(spec, tmp_path_factory):
    """bob stalls 4 s before each turn; one request may wait; a silent stream says it is alive every second."""
    s = start(spec, tmp_path_factory.mktemp("slowout"), {"SWARM_HPC_TEST_STALL": "bob:4",
                                                         "SWARM_HPC_SERVE_KEEP_ALIVE": "1"}, "--queue", "1")
    yield s
    stop(s)


def test_full_queue_is_429_with_retry_after_never_a_hang(slow):
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = slow.client().chat.completions.create(model="duo", messages=ask()).choices[0].message.content
        except Exception as e:
            results[i] = e

    first = threading.Thread(target=call, args=(0,))
    first.start()
    wait_for(lambda: slow.raw("GET", "/health")[2]["running"] == 1, 30, "the first request to run")
    second = threading.Thread(target=call, args=(1,))
    second.start()
    wait_for(lambda: slow.raw("GET", "/health")[2]["queued"] == 1, 30, "the second request to queue")
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as e:
        slow.client().chat.completions.create(model="duo", messages=ask())
    assert time.monotonic() - t0 < 3
    assert int(e.value.response.headers["retry-after"]) >= 1
    first.join(60)
    second.join(60)
    assert results == {0: "Paris is the capital.", 1: "Paris is the capital."}


def test_requests_on_different_experts_run_at_the_same_time(slow):
    done: dict[str, float] = {}

    def call(model: str) -> None:
        slow.client().chat.completions.create(model=model, messages=ask())
        done[model] = time.monotonic()

    bob = threading.Thread(target=call, args=("duo/bob",))
    bob.start()
    wait_for(lambda: slow.raw("GET", "/health")[2]["running"] == 1, 30, "bob's request to run")
    call("duo/alice")            # alice is free: answered while bob still stalls
    assert slow.raw("GET", "/health")[2]["running"] == 1 and "duo/bob" not in done
    bob.join(60)
    assert done["duo/alice"] < done["duo/bob"]


def test_a_client_that_leaves_mid_stream_does_not_stop_the_service(slow):
    u = urlsplit(slow.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "duo", "messages": ask(), "stream": True}),
                 {"Authorization": f"Bearer {slow.key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()
    assert first.startswith(b"data: ") and b'"role": "assistant"' in first
    assert resp.readline() == b"\n" and resp.readline().startswith(b": ")   # a keep-alive comment while bob stalls
    conn.close()  # mid-stream: bob is still stalling in round 1
    runs = slow.folder / "requests"
    wait_for(lambda: any(json.loads((d / "summary.json").read_text()).get("status") == "cancelled"
                         for d in runs.iterdir() if (d / "summary.json").exists()), 30, "the request to be given up")
    r = slow.client().chat.completions.create(model="duo", messages=ask())
    assert r.choices[0].message.content == "Paris is the capital."
    assert slow.raw("GET", "/health")[2]["status"] == "ok"


def test_sigterm_fails_the_running_request_with_a_clear_error_and_stops(spec, tmp_path):
    s = start(spec, tmp_path, {"SWARM_HPC_TEST_STALL": "bob:30"})
    got: list[BaseException] = []

    def call() -> None:
        try:
            s.client().chat.completions.create(model="duo", messages=ask())
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: s.raw("GET", "/health")[2]["running"] == 1, 30, "the request to run")
    os.kill(json.loads((s.folder / "service.json").read_text())["pid"], signal.SIGTERM)   # rank 0, as scancel does
    t.join(30)
    assert len(got) == 1 and isinstance(got[0], openai.APIStatusError) and got[0].status_code == 503
    assert "the service is stopping (SIGTERM)" in got[0].message
    assert s.proc.wait(timeout=60) == 0   # the ranks ended; `serve` says why and ends
    assert json.loads((s.folder / "service.json").read_text())["status"] == "cancelled"
    (run,) = (s.folder / "requests").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "cancelled"
    err = s.proc.stderr.read()
    assert "the service was stopped" in err and "Traceback" not in err


def test_ctrl_c_stops_the_service_cleanly(spec, tmp_path):
    """Ctrl-C right after the service listens: rank 0 stops it (and the experts) itself and says so; SIGTERM to
    every rank at once ended the experts first, and Open MPI killed rank 0 before it could (1 run in 6)."""
    for _ in range(3):
        s = start(spec, tmp_path)
        stop(s)
        info = json.loads((s.folder / "service.json").read_text())
        assert info["status"] == "cancelled"
        err = s.proc.stderr.read()
        assert "swarm-hpc: the service was stopped (SIGTERM or Ctrl-C)" in err and "Traceback" not in err


def test_a_port_in_use_is_one_line(spec, tmp_path, svc):
    port = str(urlsplit(svc.url).port)
    p = subprocess.run([sys.executable, "-m", "swarm_hpc", "serve", str(spec), "--port", port, "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--port {port}: cannot listen there" in lines[0] and "Traceback" not in p.stderr


def test_autogens_own_openai_client_through_it(svc):
    """AutoGen's OpenAIChatCompletionClient, as the README shows it, and an AssistantAgent on top of it."""
    pytest.importorskip("autogen_ext.models.openai")
    import asyncio

    from autogen_agentchat.agents import AssistantAgent
    from autogen_core.models import UserMessage
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def main() -> tuple[str, int, str]:
        client = OpenAIChatCompletionClient(
            model="duo", base_url=svc.url, api_key=svc.key, max_retries=0,
            model_info={"vision": False, "function_calling": False, "json_output": False,
                        "structured_output": False, "family": "unknown"})
        r = await client.create([UserMessage(content="What is the capital of France?", source="user")])
        agent = AssistantAgent("asker", model_client=client)
        result = await agent.run(task="What is the capital of France?")
        await client.close()
        return str(r.content), r.usage.completion_tokens, str(result.messages[-1].content)

    content, tokens, agent_said = asyncio.run(main())
    assert content == "Paris is the capital." and tokens > 0
    assert agent_said == "Paris is the capital."
