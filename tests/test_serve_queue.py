"""`swarm-hpc serve`'s parts that need no ranks: the queue (swarm_hpc/serve/scheduler.py: first come first served
over the experts a request needs, bounded, never overtaking a request for good), its listening socket, and the
service job's script (serve.sbatch.j2)."""

from __future__ import annotations

import asyncio

import pytest

from swarm_hpc.serve.scheduler import Closed, QueueFull, Scheduler


def test_requests_start_when_their_experts_are_free_in_order():
    async def main() -> None:
        s = Scheduler(capacity=4)
        swarm = s.enter(frozenset({"a", "b"}))
        alone_a = s.enter(frozenset({"a"}))
        alone_c = s.enter(frozenset({"c"}))
        alone_b = s.enter(frozenset({"b"}))
        assert swarm.started.done() and alone_c.started.done()          # c is free: it runs beside the swarm
        assert not alone_a.started.done() and not alone_b.started.done()
        swarm2 = s.enter(frozenset({"a", "b"}))
        s.leave(swarm)
        assert alone_a.started.done() and alone_b.started.done()
        late_b = s.enter(frozenset({"b"}))
        s.leave(alone_b)
        assert not late_b.started.done()   # b is free, but swarm2 came first and waits for it: no overtaking
        s.leave(alone_a)
        assert swarm2.started.done() and not late_b.started.done()
        s.leave(swarm2)
        assert late_b.started.done()

    asyncio.run(main())


def test_a_full_queue_refuses_at_once_and_a_closed_one_fails_the_waiting():
    async def main() -> None:
        s = Scheduler(capacity=1)
        s.enter(frozenset({"a"}))
        waiting = s.enter(frozenset({"a"}))
        with pytest.raises(QueueFull) as e:
            s.enter(frozenset({"a"}))
        assert e.value.retry_after >= 1
        s.close("stopping")
        with pytest.raises(Closed):
            await s.wait(waiting)
        with pytest.raises(Closed):
            s.enter(frozenset({"b"}))

    asyncio.run(main())


def test_a_cancelled_wait_leaves_the_queue():
    async def main() -> None:
        s = Scheduler(capacity=1)
        s.enter(frozenset({"a"}))
        waiting = s.enter(frozenset({"a"}))
        task = asyncio.ensure_future(s.wait(waiting))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.waiting == []
        s.enter(frozenset({"a"}))   # there is room again

    asyncio.run(main())


def test_the_services_connections_send_without_nagle():
    """A response's header and body go out as two writes: with Nagle's algorithm on, the body waited for the
    client's delayed ACK (40 ms a request). asyncio turns it off only on sockets that say they are TCP."""
    import socket

    from swarm_hpc.serve.server import listen

    async def main() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.start_server(accepted, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        nodelay = await asyncio.wait_for(got, 10)
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(main()) != 0


def test_the_service_job_script_keeps_a_hostile_folder_name_as_data(tmp_path):
    """serve.sbatch.j2: the service folder reaches the script shell-quoted; the script parses; the rank runs
    with --serve on it."""
    import subprocess
    from pathlib import Path

    from conftest import ROOT

    from swarm_hpc.core.spec import load_spec
    from swarm_hpc.slurm.job import SwarmJob

    folder = Path("/opt/runs/serve-x'; touch /tmp/pwned; echo '$(id)\nrm -rf ~")
    job = SwarmJob(load_spec(ROOT / "jobs" / "examples" / "demo.toml"), ROOT / "jobs" / "examples" / "demo.toml",
                   folder.parent, python="/opt/swarm/.venv/bin/python", run_dir=folder, serve=True)
    text = job.script()
    assert job.job_name == "serve-demo" and "#SBATCH --job-name=serve-demo" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    values = text.split("# --- values", 1)[1].split("# --- end of values", 1)[0]
    echo = subprocess.run(["bash", "-c", values + 'printf %s "$SWARM_SERVICE"'], capture_output=True, text=True)
    assert echo.stdout == str(folder)
    assert '-m swarm_hpc.mpi.rank "$SWARM_SERVICE" --serve' in text and "--signal=B:USR1@" in text
