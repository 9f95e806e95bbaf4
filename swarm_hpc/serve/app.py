"""The HTTP side (Starlette): /v1/models, /v1/chat/completions (whole or streamed), /health, /metrics.

Every call needs the API key (`Authorization: Bearer KEY`, else 401). A body over the size bound is 413, one
that is not a valid request 422, an unknown model 404 with the list of names, a full queue 429 with
Retry-After, a stopping service 503: each an OpenAI-style error body ({"error": {"message", "type", "code"}}).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.serve import api
from swarm_hpc.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from swarm_hpc.serve.runner import Outcome, Progress, RequestCancelled, Runner
from swarm_hpc.serve.runner import Request as SwarmRequest
from swarm_hpc.serve.scheduler import Closed, QueueFull, Scheduler, Ticket
from swarm_hpc.serve.service import ServeConfig

# seconds of silence in a stream (a long round) after which an SSE comment is sent, so that a proxy's read
# timeout does not cut it; $SWARM_HPC_SERVE_KEEP_ALIVE overrides
KEEP_ALIVE = float(os.environ.get("SWARM_HPC_SERVE_KEEP_ALIVE") or 15.0)


class TooLarge(Exception):
    pass


def fail(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
         headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(api.error(message, type_, code, param), status_code=status, headers=headers)


class Guard:
    """ASGI middleware: the API key on every call (401), and a declared body size over the bound (413)."""

    def __init__(self, app: ASGIApp, key: str, max_body: int):
        self.app = app
        self.key = key.encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.key):
            await fail(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' (the key is in "
                       "the file `swarm-hpc serve` printed, or $SWARM_HPC_API_KEY)", "invalid_request_error",
                       "invalid_api_key")(scope, receive, send)
            return
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            if int(length) <= DRAIN_FACTOR * self.max_body:
                await _drain(receive)   # read it (and drop it), so that the client, still sending, gets the 413
            await _too_large(self.max_body)(scope, receive, send)
            return
        await self.app(scope, receive, send)


DRAIN_FACTOR = 16   # a body up to this many times the bound is read and dropped before the 413; a larger one is not


async def _drain(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            return


def _too_large(limit: int) -> JSONResponse:
    return fail(413, f"the request body is larger than {limit} bytes", "invalid_request_error", "request_too_large")


class Service:
    """The endpoint of one swarm (see the module docstring)."""

    def __init__(self, spec: SwarmSpec, config: ServeConfig, key: str, runner: Runner):
        self.spec = spec
        self.config = config
        self.runner = runner
        self.scheduler = Scheduler(config.queue)
        self.metrics = Metrics()
        self.active: set[SwarmRequest] = set()
        self.started = int(time.time())
        self.stopping: str | None = None
        self.models = [config.model] + [f"{config.model}/{n}" for n in spec.expert_names]
        routes = [Route("/v1/models", self.list_models, methods=["GET"]),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/metrics", self.prometheus, methods=["GET"])]
        self.app = Guard(Starlette(routes=routes), key, config.max_body_bytes)

    # --- stopping -----------------------------------------------------------------------------------------------

    def stop(self, why: str, cancel_running: bool) -> None:
        """Refuse new requests (503); fail the waiting ones; with `cancel_running` also give up those running
        (their clients get `why`, their runs are marked cancelled), else let them finish."""
        self.stopping = why
        self.scheduler.close(why)
        if cancel_running:
            for r in list(self.active):
                r.cancel(why)

    async def drained(self, timeout: float) -> bool:
        """Wait until no request runs (at most `timeout` seconds)."""
        end = time.monotonic() + timeout
        while self.active and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return not self.active

    # --- endpoints ----------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "stopping" if self.stopping else "ok", "model": self.config.model,
                             "queued": len(self.scheduler.waiting), "running": len(self.active)})

    async def prometheus(self, request: Request) -> Response:
        self.metrics.queued.set(len(self.scheduler.waiting))
        self.metrics.running.set(len(self.active))
        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def list_models(self, request: Request) -> Response:
        data = [{"id": self.config.model, "object": "model", "created": self.started, "owned_by": "swarm-hpc",
                 "swarm": {"strategy": self.spec.strategy, "rounds": self.spec.rounds,
                           "experts": self.spec.expert_names}}]
        data += [{"id": f"{self.config.model}/{e.name}", "object": "model", "created": self.started,
                  "owned_by": "swarm-hpc", "swarm": {"expert": e.name, "model": e.model}} for e in self.spec.experts]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        try:
            body = await _read_body(request, self.config.max_body_bytes)
        except TooLarge:
            return _too_large(self.config.max_body_bytes)
        try:
            req = api.ChatRequest.model_validate(json.loads(body))
        except ValueError as e:   # JSONDecodeError, UnicodeDecodeError and ValidationError are ValueErrors
            return fail(422, _invalid(e), "invalid_request_error", "invalid_request")
        if len(req.messages) > self.config.max_messages:
            return fail(422, f"{len(req.messages)} messages: at most {self.config.max_messages} are allowed",
                        "invalid_request_error", "too_many_messages", "messages")
        if req.model not in self.models:
            return fail(404, f"the model {req.model!r} does not exist; the models are: {', '.join(self.models)}",
                        "invalid_request_error", "model_not_found", "model")
        expert = req.model.partition("/")[2] or None
        # passages are retrieved for the question itself (the last message), not the conversation around it
        planned = self.runner.prepare(api.request_spec(self.spec, req, expert, self.config.max_tokens), req.model,
                                      query=req.messages[-1].text)
        if self.stopping:
            return self._unavailable(self.stopping)
        try:
            ticket = self.scheduler.enter(frozenset(planned.spec.expert_names))
        except QueueFull as e:
            self.metrics.requests.labels(req.model, "429").inc()
            return fail(429, f"the swarm is busy: {len(self.scheduler.waiting)} requests wait already; retry after "
                        f"{e.retry_after} s", "rate_limit_error", "queue_full", headers={"Retry-After": str(e.retry_after)})
        except Closed as e:
            return self._unavailable(str(e))
        cid = f"chatcmpl-{secrets.token_hex(12)}"
        if req.stream:
            return StreamingResponse(self._stream(cid, req, planned, ticket), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        task = asyncio.ensure_future(self._execute(ticket, planned, req.model))
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                planned.cancel("the client went away")
                task.cancel()
                return Response(status_code=499)
        try:
            out = task.result()
        except (RequestCancelled, Closed) as e:
            return self._unavailable(str(e))
        except Exception as e:
            return self._failed(req.model, e)
        text = api.cut_at_stop(out.final.content, req.stops)
        self.metrics.requests.labels(req.model, "200").inc()
        return JSONResponse(api.completion(cid, req.model, text, out.prompt_tokens, out.completion_tokens,
                                           self._swarm_field(out)))

    # --- running ------------------------------------------------------------------------------------------------

    async def _execute(self, ticket: Ticket, planned: SwarmRequest, model: str,
                       on_progress: Callable[[Progress], None] = lambda p: None) -> Outcome:
        t0 = time.perf_counter()
        try:
            await self.scheduler.wait(ticket)
            if self.stopping:
                raise Closed(self.stopping)
            self.active.add(planned)

            def progress(p: Progress) -> None:
                self.metrics.rounds.labels(model).inc()
                for r in p.replies:
                    self.metrics.tokens.labels(r["expert"], "prompt").inc(r["prompt_tokens"])
                    self.metrics.tokens.labels(r["expert"], "completion").inc(r["completion_tokens"])
                    if r["tok_s"]:
                        self.metrics.tok_s.labels(r["expert"]).set(r["tok_s"])
                on_progress(p)

            out = await self.runner.run(planned, progress)
            self.metrics.seconds.labels(model).observe(time.perf_counter() - t0)
            return out
        finally:
            self.active.discard(planned)
            self.scheduler.leave(ticket)

    async def _stream(self, cid: str, req: api.ChatRequest, planned: SwarmRequest,
                      ticket: Ticket) -> AsyncIterator[str]:
        events: asyncio.Queue[Progress] = asyncio.Queue()
        task = asyncio.ensure_future(self._execute(ticket, planned, req.model, events.put_nowait))
        try:
            yield _sse(api.chunk(cid, req.model, {"role": "assistant", "content": ""}))
            while not task.done() or not events.empty():
                got = asyncio.ensure_future(events.get())
                await asyncio.wait({got, task}, timeout=KEEP_ALIVE, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    if not task.done():
                        yield ": waiting for the experts\n\n"   # an SSE comment: proxies see the stream is alive
                    continue
                p = got.result()
                yield _sse(api.chunk(cid, req.model, {}, swarm={"round": p.round, "label": p.label,
                                                                 "answered": p.answered, "turns": p.turns}))
            try:
                out = task.result()
            except (RequestCancelled, Closed) as e:
                yield _sse(api.error(str(e), "service_unavailable", "stopping"))
                return
            except Exception as e:
                self._failed(req.model, e)
                yield _sse(api.error(f"the swarm failed: {type(e).__name__}: {e}", "server_error", "swarm_failed"))
                return
            for piece in api.pieces(api.cut_at_stop(out.final.content, req.stops)):
                yield _sse(api.chunk(cid, req.model, {"content": piece}))
            yield _sse(api.chunk(cid, req.model, {}, "stop", swarm=self._swarm_field(out)))
            if req.include_usage:
                yield _sse(api.chunk(cid, req.model, None, usage=api.usage(out.prompt_tokens, out.completion_tokens)))
            yield "data: [DONE]\n\n"
            self.metrics.requests.labels(req.model, "200").inc()
        finally:
            if not task.done():   # the client went away mid-stream: give the request up, keep serving
                planned.cancel("the client went away")
                task.cancel()
                self.metrics.errors.labels("client_gone").inc()

    # --- helpers ------------------------------------------------------------------------------------------------

    def _unavailable(self, why: str) -> JSONResponse:
        self.metrics.errors.labels("unavailable").inc()
        return fail(503, why, "service_unavailable", "stopping", headers={"Retry-After": "30"})

    def _failed(self, model: str, e: BaseException) -> JSONResponse:
        self.metrics.errors.labels("failed").inc()
        self.metrics.requests.labels(model, "500").inc()
        return fail(500, f"the swarm failed: {type(e).__name__}: {e}", "server_error", "swarm_failed")

    def _swarm_field(self, out: Outcome) -> dict[str, Any]:
        return {"run_dir": str(out.run_dir), "by": out.final.by, "method": out.final.method,
                "engine_seconds": round(out.seconds, 6),
                "steps": [{"round": p.round, "label": p.label, "answered": p.answered, "turns": p.turns,
                           "replies": [{k: r[k] for k in ("expert", "status", "completion_tokens", "content")}
                                       for r in p.replies]} for p in out.steps]}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, but never more than `limit` bytes of it (a body sent without Content-Length too)."""
    got = bytearray()
    async for part in request.stream():
        got += part
        if len(got) > limit:
            raise TooLarge
    return bytes(got)


def _invalid(e: ValueError) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        return f"invalid request: {where}: {err['msg']}"
    return f"the body is not JSON: {e}"


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

