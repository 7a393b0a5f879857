"""Prometheus metrics at GET /metrics, per model (what the request named) and variant (what served it).

    tuneforge_requests_total{endpoint,model,variant,status}       every answered request, errors included
    tuneforge_request_latency_seconds{endpoint,model,variant}     histogram of successful requests
    tuneforge_time_to_first_token_seconds{endpoint,model,variant} histogram (streams and plain)
    tuneforge_prompt_tokens_total / tuneforge_completion_tokens_total{model,variant}
    tuneforge_tokens_per_second                                   completion tokens over the last 60 s
    tuneforge_engine_<stat>                                       each number in engine.stats() (queue depth, ...)
    tuneforge_in_flight_requests, tuneforge_draining
    tuneforge_monitor_signal{route,variant,signal}                the latest `tuneforge monitor` figures (drift
    tuneforge_monitor_updated_seconds{route}                      p-values, invalid rate, scores, failed checks)
                                                                  and when they were computed (monitor/store.py)

Each app gets its own registry, so several servers (tests) in one process do not mix counts.
`model` and `variant` only ever hold served names or route names ("" before a request named a
known one), so label cardinality is bounded by the configuration, not by callers.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300)
WINDOW_S = 60.0


class _EngineCollector:
    """Reads engine.stats() at scrape time, so gauges are never stale."""

    def __init__(self, stats: Callable[[], dict[str, Any]], life):
        self._stats, self._life = stats, life

    def collect(self):
        try:
            values = self._stats()
        except Exception:  # a scrape must not fail because the engine is busy or closing
            values = {}
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name = "tuneforge_engine_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
                yield GaugeMetricFamily(name, f"engine.stats()['{key}']", value=value)
        yield GaugeMetricFamily("tuneforge_in_flight_requests", "requests being handled", value=self._life.in_flight)
        yield GaugeMetricFamily("tuneforge_draining", "1 while shutting down", value=int(self._life.draining))


class _MonitorCollector:
    """The figures `tuneforge monitor` last pushed into the log DB, read at scrape time: the
    monitor computes them (it has the training data and evals), the server only shows them."""

    def __init__(self, log_db):
        self._db = log_db

    def collect(self):
        from tuneforge.monitor.store import latest_signals
        from tuneforge.serve.log import connect

        try:
            conn = connect(self._db, readonly=True)
            try:
                rows = latest_signals(conn)
            finally:
                conn.close()
        except Exception:  # no log yet, or busy: a scrape must not fail
            rows = []
        value = GaugeMetricFamily("tuneforge_monitor_signal", "latest tuneforge monitor figure",
                                  labels=["route", "variant", "signal"])
        updated = GaugeMetricFamily("tuneforge_monitor_updated_seconds", "unix time of the last monitor run",
                                    labels=["route"])
        seen = set()
        for row in rows:
            value.add_metric([row["route"], row["variant"], row["signal"]], row["value"])
            if row["route"] not in seen:
                seen.add(row["route"])
                updated.add_metric([row["route"]], row["time"])
        yield value
        yield updated


class Metrics:
    def __init__(self, engine_stats: Callable[[], dict[str, Any]], life, log_db=None):
        self.registry = CollectorRegistry()
        self.requests = Counter("tuneforge_requests", "requests answered, by status",
                                ["endpoint", "model", "variant", "status"], registry=self.registry)
        self.latency = Histogram("tuneforge_request_latency_seconds", "latency of successful requests",
                                 ["endpoint", "model", "variant"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("tuneforge_time_to_first_token_seconds", "time to the first token",
                                     ["endpoint", "model", "variant"], buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
        self.prompt_tokens = Counter("tuneforge_prompt_tokens", "prompt tokens processed", ["model", "variant"],
                                     registry=self.registry)
        self.completion_tokens = Counter("tuneforge_completion_tokens", "tokens generated", ["model", "variant"],
                                         registry=self.registry)
        Gauge("tuneforge_tokens_per_second", f"completion tokens per second over the last {WINDOW_S:g} s",
              registry=self.registry).set_function(self._rate)
        self.registry.register(_EngineCollector(engine_stats, life))
        if log_db is not None:
            self.registry.register(_MonitorCollector(log_db))
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def observe(self, endpoint: str, model: str | None, variant: str | None, status: int, latency_s: float = 0.0,
                prompt_tokens: int = 0, completion_tokens: int = 0, first_token_s: float | None = None) -> None:
        labels = (endpoint, model or "", variant or "")
        self.requests.labels(*labels, str(status)).inc()
        if status == 200:
            self.latency.labels(*labels).observe(latency_s)
        if first_token_s is not None:
            self.first_token.labels(*labels).observe(first_token_s)
        if prompt_tokens:
            self.prompt_tokens.labels(model or "", variant or "").inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(model or "", variant or "").inc(completion_tokens)
            with self._lock:
                self._window.append((time.monotonic(), completion_tokens))

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0][0] < now - WINDOW_S:
                self._window.popleft()
            return sum(n for _, n in self._window) / WINDOW_S

    def render(self) -> bytes:
        return generate_latest(self.registry)
