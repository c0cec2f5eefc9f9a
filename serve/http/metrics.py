"""GET /metrics: the service's counters in Prometheus' text format (prometheus_client, a registry per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serve.http.prefix_cache import PrefixCache

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """What an operator watches: requests by status, the batch, the queue, characters, tick time."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "charlstm_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.active = Gauge("charlstm_active_sequences", "sequences in the batch", registry=self.registry)
        self.queued = Gauge(
            "charlstm_queued_sequences", "sequences waiting for room in the batch", registry=self.registry
        )
        self.queued_requests = Gauge("charlstm_queued_requests", "requests waiting for room", registry=self.registry)
        self.reading = Gauge(
            "charlstm_prompts_read_beside",
            "requests whose long prompt is read beside the batch",
            registry=self.registry,
        )
        self.characters = Counter("charlstm_generated_characters", "characters generated", registry=self.registry)
        self.prompt_characters = Counter("charlstm_prompt_characters", "prompt characters read", registry=self.registry)
        tick_buckets = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
        self.tick_seconds = Histogram(
            "charlstm_tick_seconds",
            "seconds per tick (one batched step and its picks)",
            buckets=tick_buckets,
            registry=self.registry,
        )
        sizes, size = [], 1
        while size < max_batch:
            sizes.append(size)
            size *= 2
        self.batch_size = Histogram(
            "charlstm_batch_size", "sequences stepped per tick", buckets=(*sizes, max_batch), registry=self.registry
        )
        self.first_char_seconds = Histogram(
            "charlstm_time_to_first_character_seconds",
            "from a request's arrival to its first generated character",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

        self.prefix_hits = Gauge(
            "charlstm_prefix_cache_hits", "prompts that started from a kept prefix", registry=self.registry
        )
        self.prefix_misses = Gauge(
            "charlstm_prefix_cache_misses",
            "prompts long enough to have a prefix kept that found none",
            registry=self.registry,
        )
        self.prefix_bytes = Gauge(
            "charlstm_prefix_cache_bytes",
            "bytes the kept prefixes' states hold (--prefix-cache-mb)",
            registry=self.registry,
        )

    def prefix_cache(self, cache: PrefixCache) -> None:
        self.prefix_hits.set(cache.hits)
        self.prefix_misses.set(cache.misses)
        self.prefix_bytes.set(cache.bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
