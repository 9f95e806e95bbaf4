"""Rank 0 of `swarm-hpc serve`: the HTTP server (uvicorn) on the service folder's address, until a signal.

- SIGTERM or SIGINT (scancel, the end of a local `serve`, Ctrl-C): new requests get 503, waiting and running
  ones are given up with a clear error (their runs are marked `cancelled`; every finished step is in their
  transcripts), the server closes; how = "cancelled".
- SIGUSR1 (a SLURM service job's time limit is near): new requests get 503, running ones may finish within
  $SWARM_HPC_STOP_WITHIN seconds (then they are given up); how = "requeued" (the job script requeues the job;
  it serves again from the same folder, at the URL it then writes) or "stopped".

The socket is bound before anything else, so a port in use is one line, and service.json (the URL) is written
only once the address is taken.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from swarm_hpc.core.passages import Reader
from swarm_hpc.core.routing import Learned
from swarm_hpc.core.rundir import load_snapshot
from swarm_hpc.errors import UserError
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor
from swarm_hpc.serve.app import Service
from swarm_hpc.serve.runner import Requester, Runner
from swarm_hpc.serve.service import (
    KEY_ENV,
    KEY_FILE,
    REQUESTS,
    ServiceInfo,
    bind_host,
    read_config,
    read_key,
    url_host,
    write_info,
)

STOP_WITHIN_DEFAULT = 60.0


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service first when SIGTERM or SIGINT arrives."""

    on_signal: Callable[[int], None] = staticmethod(lambda sig: None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_signal(sig)
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP; with proto 0 a
    # response's header and body segments waited for the client's delayed ACK, 40 ms a request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}", f"cannot listen there: {e.strerror}",
                        "give another --port (0: any free port), or a --host this machine has") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run_service(folder: Path, requester: Requester, ranks: list[Any], node: str, stale: Callable[[], int],
                learned: Learned | None = None, reader: Reader | None = None,
                recall: RetrieverFor = LexicalRetriever) -> str:
    """Serve the swarm of the service folder until a signal; how it ended: cancelled, requeued or stopped.
    `learned`: the spec's learned router, which routes each request (None: the keyword rules alone); `reader`:
    the spec's [knowledge], from which each request's experts read; `recall`: what ranks the memory store's facts
    for a request (by meaning, from rank.py; BM25 by default)."""
    folder = Path(folder)
    spec, _ = load_snapshot(folder)
    spec_path = Path(json.loads((folder / "spec.json").read_text(encoding="utf-8"))["spec_path"])
    config = read_config(folder)
    key = read_key(folder)
    host = bind_host(config.host)
    sock = listen(host, config.port)
    port = sock.getsockname()[1]
    url = f"http://{url_host(host)}:{port}/v1"
    (folder / REQUESTS).mkdir(exist_ok=True)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        runner = Runner(requester, loop, ranks, node, stale, folder / REQUESTS, spec_path, len(spec.experts) + 1,
                        learned=learned, reader=reader, recall=recall)
        service = Service(spec, config, key, runner)
        server = _Server(uvicorn.Config(service.app, log_level="warning", access_log=False, lifespan="off",
                                        timeout_graceful_shutdown=5))
        how = ["cancelled"]
        tasks: set[asyncio.Task[None]] = set()

        def on_term(sig: int) -> None:
            why = f"the service is stopping ({signal.Signals(sig).name}): this request was given up"
            loop.call_soon_threadsafe(service.stop, why, True)
            # said at once: mpiexec kills its ranks soon after it passes SIGTERM on (srun waits KillWait)
            write_info(folder, info.model_copy(update={"status": how[0]}))

        async def drain() -> None:
            within = float(os.environ.get("SWARM_HPC_STOP_WITHIN") or STOP_WITHIN_DEFAULT)
            service.stop("the service is stopping before its time limit; retry once it is back", False)
            if not await service.drained(within):
                service.stop("the service reached its time limit: this request was given up", True)
            server.should_exit = True

        def on_usr1() -> None:
            if service.stopping is None:
                how[0] = "requeued" if os.environ.get("SWARM_HPC_ON_STOP") == "requeue" else "stopped"
                tasks.add(loop.create_task(drain()))

        server.on_signal = on_term
        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        info = ServiceInfo(url=url, key_file=None if os.environ.get(KEY_ENV) else str(folder / KEY_FILE), node=node,
                           pid=os.getpid(), status="listening", started=time.time(), models=service.models,
                           job_id=os.environ.get("SLURM_JOB_ID"))
        # until uvicorn puts in its own handlers (and after, when it raises what it caught again), SIGTERM and
        # SIGINT reach the server too: one that comes right after service.json is written still stops it
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, server.handle_exit)
        write_info(folder, info)
        print(f"swarm-hpc: serving {config.model} at {url} ({len(spec.experts)} experts, queue {config.queue})",
              flush=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            service.stop(f"the service is stopping ({how[0]})", True)
            try:
                await asyncio.wait_for(asyncio.to_thread(runner.pool.shutdown, True), 10)
            except TimeoutError:
                pass
            write_info(folder, info.model_copy(update={"status": how[0]}))
        return how[0]

    try:
        return asyncio.run(main())
    finally:   # the loop is gone: a second signal while rank 0 stops the ranks changes nothing
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
