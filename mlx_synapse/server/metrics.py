"""Prometheus metrics of one server (its own registry: two apps in a process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("synapse_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("synapse_prompt_tokens", "prompt tokens read", registry=r)
        self.generated_tokens = Counter("synapse_generated_tokens", "tokens generated (rate() gives tokens/s)",
                                        registry=r)
        self.ttft = Histogram("synapse_time_to_first_token_seconds", "admission to first token, by kind", ["kind"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("synapse_request_duration_seconds", "request duration by endpoint", ["endpoint"],
                                  registry=r)
        Gauge("synapse_queue_depth", "requests waiting for a generation slot", registry=r).set_function(
            lambda: engine.waiting)
        Gauge("synapse_active_generations", "generations running", registry=r).set_function(lambda: engine.active)
        Gauge("synapse_cancelled_generations", "generations stopped because the client left",
              registry=r).set_function(lambda: engine.cancelled)
