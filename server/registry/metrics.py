"""The registry's Prometheus metrics (prometheus-client), served at /metrics.

What an operator watches: pulls and "not modified" answers per channel, refusals by call
and reason, publishes, promotions and metadata changes, publish streams holding a slot,
request latency per call, and each channel's current version per base. Each registry has
its own CollectorRegistry (no process-global state), served on its own port over TLS with
the registry's certificate when the registry runs TLS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RegistryMetrics:
    def __init__(self) -> None:
        self.collectors = CollectorRegistry()
        self.pulls = Counter("fedpeft_registry_pulls", "GetLatest answers, by channel and answer "
                             "(release, not-modified, not-found)", ["channel", "answer"], registry=self.collectors)
        self.refusals = Counter("fedpeft_registry_refusals", "calls refused, by call and named reason",
                                ["call", "reason"], registry=self.collectors)
        self.changes = Counter("fedpeft_registry_changes", "accepted changes: publish, promote, metadata",
                               ["kind", "channel"], registry=self.collectors)
        self.metadata = Counter("fedpeft_registry_tuf_metadata", "TUF metadata served, by role", ["role"],
                                registry=self.collectors)
        self.publish_streams = Gauge("fedpeft_registry_publish_streams", "publish streams holding a slot now",
                                     registry=self.collectors)
        self.channel_version = Gauge("fedpeft_registry_channel_version", "version each channel serves, per base",
                                     ["base", "channel"], registry=self.collectors)
        self.reports = Counter("fedpeft_registry_device_reports", "device health reports accepted, by channel",
                               ["channel"], registry=self.collectors)
        self.drifting = Counter("fedpeft_registry_drifting_reports", "device reports whose drift is above the "
                                "registry's threshold, by channel", ["channel"], registry=self.collectors)
        self.decisions = Counter("fedpeft_registry_canary_decisions", "automated canary decisions",
                                 ["channel", "action"], registry=self.collectors)
        self.latency = Histogram("fedpeft_registry_request_seconds", "handler time per call", ["call"],
                                 buckets=LATENCY_BUCKETS, registry=self.collectors)

    @contextmanager
    def timed(self, call: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(call).observe(time.perf_counter() - start)

    def serve(self, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None) -> int:
        """Serve /metrics on `host:port` (0: a free port) in a thread; returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.collectors,
                                      certfile=str(tls_cert) if tls_cert else None,
                                      keyfile=str(tls_key) if tls_key else None)
        return server.server_port
