#!/usr/bin/env python3
"""Soak benchmark: a 100-round debate on real mpiexec ranks, killed again and again at random times and resumed
after each kill, until it finishes; writes bench/results/soak.json.

    .venv/bin/python bench/soak.py [--rounds 100] [--faults 30] [--seed 17] [--stall 0.3]

Each fault: wait a random time (0.5-7 s) after a start or resume, then send SIGKILL or SIGTERM (at random) to
a random target: rank 0, an expert rank, mpiexec, or the `swarm-hpc run` command itself. After each fault it
checks (targets: 0 and 0):
- records lost: every step the transcript had finished before the signal is still there, byte for byte;
- orphaned processes: within 20 s no process of the run is left (any that is, is counted and SIGKILLed).
A fault is survived when neither happened and the run later resumed past it. After the last fault the run is
resumed to its end, and the whole transcript is checked: every step once, in order, and a final answer.

The experts are tiny GGUF models the test suite writes (tests/tinygguf.py: a scripted sentence and random
weights), so no model hub is needed; one expert stalls `--stall` seconds a turn (tests/expert_faults.py, the
suite's fault-injection wrapper) so that a round takes about that long and a kill lands mid-round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tinygguf import write_tiny_gguf  # noqa: E402

from swarm_hpc.atomic import atomic_write_json  # noqa: E402
from swarm_hpc.procs import mpiexec_pid, rank_pids, run_processes  # noqa: E402

TARGETS = ["rank 0", "expert rank", "mpiexec", "cli"]
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}


def target_pid(target: str, run_dir: Path, cli: subprocess.Popen[str]) -> int | None:
    if target == "cli":
        return cli.pid
    if target == "mpiexec":
        return mpiexec_pid(run_dir)
    return rank_pids(run_dir).get(0 if target == "rank 0" else 1)


def transcript(run_dir: Path) -> bytes:
    path = run_dir / "transcript.jsonl"
    return path.read_bytes() if path.exists() else b""


def finished(data: bytes) -> bytes:
    """The transcript up to the end of its last finished step."""
    end = data.rfind(b'"type": "step_end"')
    return data[:data.index(b"\n", end) + 1] if end >= 0 else b""


def lost_records(kept: bytes, now: bytes) -> int:
    """Records (lines) of `kept` that are not where they were, byte for byte, in `now`."""
    old, new = kept.splitlines(), now.splitlines()
    return sum(1 for i, line in enumerate(old) if i >= len(new) or new[i] != line)


def step_numbers(data: bytes) -> list[int]:
    return [json.loads(line)["step"] for line in data.splitlines() if b'"step_end"' in line]


def spec_file(folder: Path, rounds: int) -> Path:
    paris = write_tiny_gguf(folder / "paris.gguf", "Paris is the capital.")
    noise = write_tiny_gguf(folder / "random.gguf")
    experts = [("alice", paris, 24), ("bob", noise, 16)]
    lines = ['task = "What is the capital of France?"', 'strategy = "debate"', f"rounds = {rounds}",
             "round_timeout = 30"]
    for name, model, max_tokens in experts:
        lines += ["[[experts]]", f'name = "{name}"', f'model = "{model}"', f'persona = "You are {name}."',
                  "temperature = 0.0", f"max_tokens = {max_tokens}", "n_ctx = 512"]
    path = folder / "soak.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "swarm_hpc", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--faults", type=int, default=30, help="the most faults to inject (fewer if the run ends first)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--stall", type=float, default=0.3, help="seconds bob stalls each turn")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "SWARM_HPC_EXPERT_WRAPPER": "expert_faults:wrap", "SWARM_HPC_TEST_STALL": f"bob:{args.stall}"}
    t_start = time.monotonic()
    faults: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        cli = start(["run", str(spec_file(folder, args.rounds)), "--out", str(folder / "runs")], env)
        first = cli.stdout.readline() if cli.stdout else ""
        run_dir = Path(first.split(": ", 1)[1].strip())
        while len(faults) < args.faults:
            delay = rng.uniform(0.5, 7.0)
            target, sig_name = rng.choice(TARGETS), rng.choice(sorted(SIGNALS))
            t0 = time.monotonic()
            pid = None
            while time.monotonic() - t0 < delay + 10 and cli.poll() is None:
                pid = target_pid(target, run_dir, cli) if time.monotonic() - t0 >= delay else None
                if pid is not None:
                    break
                time.sleep(0.05)
            if cli.poll() is not None:  # the run ended (finished) before the fault: no more faults
                break
            if pid is None:
                continue
            kept = finished(transcript(run_dir))
            try:
                os.kill(pid, SIGNALS[sig_name])
            except ProcessLookupError:
                continue
            at = time.monotonic() - t0
            rc = cli.wait(timeout=120)
            t_kill = time.monotonic()
            left: dict[int, list[str]] = {}
            while time.monotonic() - t_kill < 20 and (left := run_processes(run_dir)):
                time.sleep(0.1)
            for orphan in left:
                os.kill(orphan, signal.SIGKILL)
            lost = lost_records(kept, transcript(run_dir))
            fault = {"n": len(faults) + 1, "target": target, "signal": sig_name, "after_s": round(at, 2),
                     "steps_finished": len(step_numbers(kept)), "cli_exit": rc,
                     "ended_s": round(time.monotonic() - t_kill, 2), "orphans": len(left), "records_lost": lost}
            faults.append(fault)
            print(json.dumps(fault), flush=True)
            time.sleep(rng.uniform(0.0, 2.0))  # resume at a random time
            cli = start(["run", "--resume", str(run_dir)], env)
        rc = cli.wait(timeout=600)
        final = transcript(run_dir)
        left = run_processes(run_dir)
        for orphan in left:
            os.kill(orphan, signal.SIGKILL)
        steps = step_numbers(final)
        summary = json.loads((run_dir / "summary.json").read_text())
        complete = rc == 0 and summary["status"] == "complete" and (run_dir / "final.md").exists()
    for f in faults:  # survived: nothing lost, nothing left, and the run went on past it to its end
        f["survived"] = f["records_lost"] == 0 and f["orphans"] == 0 and complete
    result = {
        "bench": "soak", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.monotonic() - t_start, 1),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "params": {"rounds": args.rounds, "max_faults": args.faults, "seed": args.seed, "stall_s": args.stall,
                   "targets": TARGETS, "signals": sorted(SIGNALS), "delay_s": [0.5, 7.0], "resume_pause_s": [0.0, 2.0]},
        "faults_injected": len(faults),
        "faults_survived": sum(f["survived"] for f in faults),
        "records_lost": sum(f["records_lost"] for f in faults),
        "orphaned_processes": sum(f["orphans"] for f in faults) + len(left),
        "by_target": {f"{t} {s}": sum(1 for f in faults if f["target"] == t and f["signal"] == s)
                      for t in TARGETS for s in sorted(SIGNALS)},
        "final": {"exit_code": rc, "complete": complete, "steps": len(steps),
                  "steps_once_in_order": steps == list(range(1, len(steps) + 1)),
                  "expected_steps": args.rounds + 2},
        "faults": faults,
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "faults"}, indent=1))
    ok = (result["faults_injected"] == result["faults_survived"] and result["records_lost"] == 0
          and result["orphaned_processes"] == 0 and result["final"]["steps_once_in_order"]
          and result["final"]["steps"] == args.rounds + 2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
