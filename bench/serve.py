#!/usr/bin/env python3
"""Benchmark of `swarm-hpc serve` on a bundled model, side by side in one run; writes bench/results/serve.json.

    .venv/bin/python bench/serve.py [--model smollm2] [--max-tokens 32] [--requests 20] [--clients 8]
                                    [--seconds 60] [--batch 3]

What it measures (targets in brackets):
1. the server's own overhead per request: a plain HTTP client's wall time of a request minus the time the conversation
   itself took on rank 0 (the response's `swarm.engine_seconds`: the request's run directory made, every step
   run over the Exchange and recorded), so HTTP, JSON, the queue and the conversions, one request at a time
   [p50 <= 5 ms and <= 2 % of the request's wall time];
2. `--clients` clients sending requests back to back for `--seconds`: every request answered or refused with 429
   (nothing lost, no other error), p50/p95 latency of the answered ones, total completion tok/s;
3. requests per hour of the service against one batch job per request (`swarm-hpc run`, model load included),
   measured in the same run.
The swarm: two experts on the model, one debate round and the synthesis.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from swarm_hpc.atomic import atomic_write_json  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name one use of a Raspberry Pi cluster.",
             "Why is the sky blue?", "What is 12 times 7?", "Name a prime number above 50."]


def spec_text(model: str, max_tokens: int) -> str:
    lines = ['task = "What is the capital of France?"', 'strategy = "debate"', "rounds = 1", "round_timeout = 120",
             'synthesizer = "moderator"']
    for name in ("engineer", "moderator"):
        lines += ["[[experts]]", f'name = "{name}"', f'model = "{model}"', f'persona = "You are a helpful {name}."',
                  "temperature = 0.0", f"max_tokens = {max_tokens}", "n_ctx = 1024"]
    return "\n".join(lines) + "\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20, help="sequential requests for the overhead")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--batch", type=int, default=3, help="batch runs (`swarm-hpc run`) to compare with")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.json")
    args = ap.parse_args()
    from openai import OpenAI, RateLimitError

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    spec = work / "swarm.toml"
    spec.write_text(spec_text(args.model, args.max_tokens))
    env = {k: v for k, v in os.environ.items() if k != "SWARM_HPC_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc", "serve", str(spec), "--port", "0", "--out",
                             str(work / "out"), "--queue", str(args.clients)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    folder = Path(proc.stdout.readline().split(": ", 1)[1].strip())
    while not (folder / "service.json").exists():
        if proc.poll() is not None:
            sys.exit("the service did not start")
        time.sleep(0.2)
    info = json.loads((folder / "service.json").read_text())
    key = (folder / "api-key").read_text().strip()
    client = OpenAI(base_url=info["url"], api_key=key, max_retries=0, timeout=600)
    try:
        # 1. overhead, one request at a time, each on a connection of its own (http.client: the openai SDK's own
        # client-side cost, measured too, is not the server's)
        client.chat.completions.create(model="swarm", messages=[{"role": "user", "content": "Hello"}])  # warm-up
        u = urlsplit(info["url"])
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        walls, engine, sdk = [], [], []
        for i in range(args.requests):
            body = json.dumps({"model": "swarm", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]})
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
            conn.request("POST", "/v1/chat/completions", body, headers)
            r = json.loads(conn.getresponse().read())
            walls.append(time.perf_counter() - t0)
            conn.close()
            engine.append(r["swarm"]["engine_seconds"])
            t0 = time.perf_counter()
            o = client.chat.completions.create(model="swarm", messages=[
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
            sdk.append(time.perf_counter() - t0 - o.model_extra["swarm"]["engine_seconds"])
        over = [w - e for w, e in zip(walls, engine, strict=True)]
        share = [o / w for o, w in zip(over, walls, strict=True)]
        print(f"overhead: p50 {statistics.median(over) * 1000:.2f} ms, p95 {pct(over, 0.95) * 1000:.2f} ms, "
              f"{statistics.median(share) * 100:.2f} % of a request ({statistics.median(walls):.2f} s); with the "
              f"openai SDK as the client: p50 {statistics.median(sdk) * 1000:.2f} ms", flush=True)

        # 2. concurrent clients
        lock = threading.Lock()
        codes: dict[str, int] = {}
        latencies: list[float] = []
        tokens = [0]
        end = time.monotonic() + args.seconds

        def worker(n: int) -> None:
            i = n
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    r = client.chat.completions.create(model="swarm", messages=[
                        {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
                    with lock:
                        codes["200"] = codes.get("200", 0) + 1
                        latencies.append(time.perf_counter() - t0)
                        tokens[0] += r.usage.completion_tokens
                except RateLimitError as e:
                    with lock:
                        codes["429"] = codes.get("429", 0) + 1
                    time.sleep(min(float(e.response.headers.get("retry-after", "1")), 5))
                except Exception as e:
                    with lock:
                        codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1
                i += args.clients

        t_start = time.monotonic()
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        duration = time.monotonic() - t_start
        answered = codes.get("200", 0)
        lost = sum(v for k, v in codes.items() if k not in ("200", "429"))
        print(f"{args.clients} clients for {duration:.0f} s: {codes}; p50 {pct(latencies, 0.5):.2f} s, "
              f"p95 {pct(latencies, 0.95):.2f} s; {tokens[0] / duration:.1f} completion tok/s", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)

    # 3. one batch job per request, model load included
    batch = []
    for _ in range(args.batch):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "swarm_hpc", "run", str(spec), "--out", str(work / "batch")], cwd=ROOT,
                       env=env, check=True, capture_output=True)
        batch.append(time.perf_counter() - t0)
    per_hour_service = answered / duration * 3600
    per_hour_batch = 3600 / statistics.median(batch)
    print(f"requests per hour: service {per_hour_service:.0f}, one batch job per request {per_hour_batch:.0f} "
          f"({statistics.median(batch):.2f} s each); {per_hour_service / per_hour_batch:.1f}x", flush=True)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "model": args.model, "max_tokens": args.max_tokens,
        "overhead": {"requests": args.requests, "p50_ms": round(statistics.median(over) * 1000, 3),
                     "p95_ms": round(pct(over, 0.95) * 1000, 3), "share_p50": round(statistics.median(share), 5),
                     "request_p50_s": round(statistics.median(walls), 4),
                     "openai_sdk_client_p50_ms": round(statistics.median(sdk) * 1000, 3),
                     "targets": {"p50_ms": 5, "share": 0.02}},
        "concurrent": {"clients": args.clients, "seconds": round(duration, 1), "codes": codes, "lost": lost,
                       "p50_s": round(pct(latencies, 0.5), 3), "p95_s": round(pct(latencies, 0.95), 3),
                       "completion_tok_s": round(tokens[0] / duration, 2)},
        "per_hour": {"service": round(per_hour_service), "batch": round(per_hour_batch),
                     "batch_run_s": [round(b, 3) for b in batch]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
