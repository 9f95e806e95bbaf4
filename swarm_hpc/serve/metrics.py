"""/metrics: the service in Prometheus's text format (prometheus-client, on a registry of its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("swarm_requests", "Chat requests answered, by model and HTTP status", ["model", "code"],
                                registry=r)
        self.errors = Counter("swarm_errors", "Requests that failed, by kind", ["kind"], registry=r)
        self.queued = Gauge("swarm_queue_length", "Requests waiting for their experts", registry=r)
        self.running = Gauge("swarm_requests_running", "Requests being answered", registry=r)
        self.rounds = Counter("swarm_rounds", "Steps (rounds, syntheses) finished", ["model"], registry=r)
        self.tokens = Counter("swarm_expert_tokens", "Tokens per expert", ["expert", "kind"], registry=r)
        self.tok_s = Gauge("swarm_expert_tokens_per_second", "Generation speed of the expert's last reply",
                           ["expert"], registry=r)
        self.seconds = Histogram("swarm_request_seconds", "Wall time of a chat request", ["model"], registry=r,
                                 buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")))

    def text(self) -> bytes:
        return generate_latest(self.registry)
