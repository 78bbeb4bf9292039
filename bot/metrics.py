"""Prometheus metrics for one app instance (its own registry; nothing global)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.pricing import Usage


class Metrics:
    """Counters the bot updates as it works; `render()` is the /metrics text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "bot_http_requests", "Requests to /slack/events by outcome", ["status"], registry=r
        )
        self.ack_seconds = Histogram(
            "bot_ack_seconds",
            "Time to answer Slack's HTTP request",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 3),
        )
        self.jobs = Counter(
            "bot_jobs", "Jobs finished, by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.job_seconds = Histogram(
            "bot_job_seconds",
            "Time from a job's claim to its end",
            ["kind"],
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
        )
        self.model_calls = Counter(
            "bot_model_calls", "Messages API calls by outcome", ["outcome"], registry=r
        )
        self.prompt_tokens = Counter(
            "bot_prompt_tokens",
            "Prompt tokens by part (uncached, written, read)",
            ["part"],
            registry=r,
        )
        self.output_tokens = Counter("bot_output_tokens", "Output tokens", registry=r)
        self._lock = threading.Lock()
        self._read = 0
        self._prompt = 0

    def add_gauges(self, queue_depth: Callable[[], float], oldest: Callable[[], float]) -> None:
        """Queue depth and age, read when scraped."""
        self.registry.register(_QueueCollector(queue_depth, oldest))

    def observe_usage(self, usage: Usage) -> None:
        """Count one successful model call's tokens."""
        self.model_calls.labels("ok").inc()
        self.prompt_tokens.labels("uncached").inc(usage.input_tokens)
        self.prompt_tokens.labels("written").inc(usage.cache_creation_tokens)
        self.prompt_tokens.labels("read").inc(usage.cache_read_tokens)
        self.output_tokens.inc(usage.output_tokens)
        with self._lock:
            self._read += usage.cache_read_tokens
            self._prompt += usage.prompt_tokens

    def render(self) -> bytes:
        """The Prometheus text exposition, with the cache hit rate derived from the counters."""
        with self._lock:
            read, total = self._read, self._prompt
        extra = (
            "# HELP bot_cache_hit_ratio Share of prompt tokens read from cache since start\n"
            "# TYPE bot_cache_hit_ratio gauge\n"
            f"bot_cache_hit_ratio {read / total if total else 0.0}\n"
        )
        return generate_latest(self.registry) + extra.encode()


class _QueueCollector(Collector):
    def __init__(self, depth: Callable[[], float], oldest: Callable[[], float]) -> None:
        self._depth = depth
        self._oldest = oldest

    def describe(self):  # noqa: ANN201 - prometheus_client's interface
        # Registration asks for the names here, instead of calling collect: building the app
        # must not query (or, SQLite, create) the database before prepare's checks pass.
        yield GaugeMetricFamily("bot_queue_depth", "Jobs queued or running")
        yield GaugeMetricFamily("bot_queue_oldest_seconds", "Age of the oldest queued job")

    def collect(self):  # noqa: ANN201 - prometheus_client's interface
        try:
            depth, oldest = self._depth(), self._oldest()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            depth, oldest = float("nan"), float("nan")
        yield GaugeMetricFamily("bot_queue_depth", "Jobs queued or running", value=depth)
        yield GaugeMetricFamily(
            "bot_queue_oldest_seconds", "Age of the oldest queued job", value=oldest
        )
