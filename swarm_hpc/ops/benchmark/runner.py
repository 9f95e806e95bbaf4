"""Run benchmark tasks: each model in its own subprocess (measure.py), its result kept whatever happens.

A model that cannot be found, is not a GGUF file, does not fit in the node's memory, fails to load, crashes,
is killed or runs past `timeout` gives a result with status "error" and a one-line reason; the next model
runs as usual. Used by the local run (`run_local`) and by each SLURM array task (task.py).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.errors import UserError
from swarm_hpc.experts.models import resolve_model
from swarm_hpc.ops.benchmark.bandwidth import measure_bandwidth
from swarm_hpc.ops.benchmark.config import ModelRun
from swarm_hpc.ops.benchmark.measure import PROGRESS, MeasureJob
from swarm_hpc.ops.benchmark.plan import Plan, Task, raw_path, this_node
from swarm_hpc.ops.benchmark.results import ERROR, OK, Measurement, ModelResult

Progress = Callable[[dict[str, Any]], None]
MB = 1_000_000  # decimal megabytes, as the README gives model sizes


def cpu_description() -> str:
    """The board or CPU model, for the report."""
    try:
        model = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
        if model:
            return model
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Bandwidths:
    """The node's copy bandwidth per thread count, measured once each (before any model runs with it)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], float] = {}

    def get(self, size_mb: int, threads: int, progress: Progress | None = None) -> float:
        key = (size_mb, threads)
        if key not in self._cache:
            if progress:
                progress({"stage": "bandwidth", "threads": threads})
            self._cache[key] = measure_bandwidth(size_mb, threads)
        return self._cache[key]


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def run_measure(job: MeasureJob, timeout: float, progress: Progress) -> tuple[dict[str, Any], int]:
    """Run measure.py in a subprocess; returns (its result or an error record, its ru_maxrss in bytes)."""
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        out = Path(tmp) / "measure.json"
        err_path = Path(tmp) / "stderr.txt"
        with open(err_path, "w+b") as err:
            proc = subprocess.Popen([sys.executable, "-m", "swarm_hpc.ops.benchmark.measure", job.to_json(), str(out)],
                                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                    bufsize=1, start_new_session=True)
            timed_out = threading.Event()

            def kill() -> None:
                timed_out.set()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith(PROGRESS):
                        try:
                            progress(json.loads(line[len(PROGRESS):]))
                        except ValueError:
                            pass
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            finally:
                timer.cancel()
                if proc.returncode is None:  # interrupted: do not leave the model process behind
                    kill()
                    proc.wait()
            maxrss = usage.ru_maxrss * 1024
            err.seek(0)
            stderr_tail = " ".join(err.read().decode("utf-8", "replace").split())[-300:]
        rc = proc.returncode
        if out.exists():
            record = json.loads(out.read_text(encoding="utf-8"))
            if record.get("status") == OK and rc == 0:
                return record, maxrss
            if record.get("status") == ERROR:
                return record, maxrss
        if timed_out.is_set():
            reason = f"stopped after the timeout of {timeout:g} s (raise `timeout` in the benchmark file)"
        elif rc < 0:
            sig = _signal_name(-rc)
            hint = f"; out of memory? its peak was {maxrss / MB:.0f} MB" if -rc == signal.SIGKILL else ""
            reason = f"the model process was killed by {sig}{hint}"
        else:
            reason = f"the model process exited with code {rc} without a result"
        if stderr_tail:
            reason += f" (stderr: {stderr_tail})"
        return {"status": ERROR, "error": reason}, maxrss


def run_task(plan: Plan, task: Task, run_dir: Path, bandwidths: Bandwidths, progress: Progress,
             slurm_job: str = "") -> ModelResult:
    """Measure one (model, node) task in a subprocess and write its raw result file; never raises for a bad model."""
    run: ModelRun = plan.runs[task.model]
    node = this_node()
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    common: dict[str, Any] = {"index": task.index, "run": run, "node": node, "started": started,
                              "cpu": cpu_description(), "slurm_job": slurm_job}

    def failed(reason: str, **kw: Any) -> ModelResult:
        return ModelResult(status=ERROR, error=reason, seconds=time.perf_counter() - t0, **common, **kw)

    try:
        resolved = resolve_model(run.model, Path(plan.base_dir), where=plan.config_path,
                                 field=f"models[{task.model}].model")
    except UserError as e:
        result = failed(str(e))
    else:
        size = resolved.path.stat().st_size
        avail = mem_available()
        files: dict[str, Any] = {"model_path": str(resolved.path), "model_bytes": size}
        if avail is not None and size > avail:
            result = failed(f"{run.model}: the model is too large for {node}: {size / MB:.0f} MB, but only "
                            f"{avail / MB:.0f} MB of memory is available (use a smaller quantization or a bigger node)",
                            **files)
        else:
            bw = bandwidths.get(run.bandwidth_mb, run.threads, progress)
            progress({"stage": "start"})
            job = MeasureJob(run, str(resolved.path), run.chat_format or resolved.chat_format)
            record, maxrss = run_measure(job, run.timeout, progress)
            if record.get("status") == OK:
                result = ModelResult(status=OK, measurement=Measurement.from_dict(record["measurement"]),
                                     bandwidth_bytes_s=bw, max_rss_bytes=maxrss,
                                     seconds=time.perf_counter() - t0, **common, **files)
            else:
                extra = {"traceback": record["traceback"]} if record.get("traceback") else {}
                result = failed(f"{run.model}: {record.get('error', 'failed')}", bandwidth_bytes_s=bw,
                                max_rss_bytes=maxrss, extra=extra, **files)
    atomic_write_json(raw_path(run_dir, plan, task, node), result.to_dict())
    progress({"stage": "done", "status": result.status, "error": result.error})
    return result


def run_local(plan: Plan, run_dir: Path, progress: Callable[[Task, dict[str, Any]], None]) -> list[ModelResult]:
    """Every task of the plan, one after the other, on this machine."""
    bandwidths = Bandwidths()
    def report(task: Task) -> Callable[[dict[str, Any]], None]:
        return lambda event: progress(task, event)

    return [run_task(plan, task, run_dir, bandwidths, report(task)) for task in plan.tasks]

