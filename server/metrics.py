"""Prometheus metrics of one server (its own CollectorRegistry, so two servers can share a
process, e.g. in tests).

Interface:
    Metrics(stats_fn=None)        registry + metrics; stats_fn() -> {namespace: (stored, logical)}
                                  is called on each scrape for the stored/logical gauges
      .observe(method, code, seconds)
      .add_bytes(direction, n)    direction "in" | "out" (data path payload bytes) | "out_file" | "in_file"
                                  (bytes written into a client's inline file instead of a
                                  message: GetChunks' raw pieces, which "out" counts too, and
                                  ReadDir's inline bytes)
      .cache(hit: bool)
      .registry.register(ListingCacheCollector(lambda: listing cache))   the listing cache's
                                  aifs_listing_cache_* gauges and counters, read on scrape
      .interceptor()              grpc.ServerInterceptor counting RPCs and their latency
      .serve(port, host="127.0.0.1") -> port   start the HTTP exporter (0 = any free port)
      .render() -> bytes          the text exposition (what a scrape returns)
      .stop()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from aifs_server.deadline import Deadline, bounded_by

StatsFn = Callable[[], dict[str, tuple[int, int]]]
SCRAPE_WAIT = 2.0   # seconds a scrape waits for the metadata database's stored-bytes figures


class ListingCacheCollector:
    """The server's listing cache (listing_cache.py), read on scrape: what it holds, and how
    many directory bodies hashings made from a kept listing (spliced) or made listings of."""

    def __init__(self, cache_fn: Callable[[], Any]) -> None:
        self._fn = cache_fn

    def collect(self) -> Iterable[Any]:
        c = self._fn()
        yield GaugeMetricFamily("aifs_listing_cache_bytes", "Bytes of large directories' "
                                "listings kept between hashings", value=c.bytes)
        yield GaugeMetricFamily("aifs_listing_cache_directories", "Directories whose listing "
                                "is kept", value=len(c))
        yield CounterMetricFamily("aifs_listing_cache_spliced", "Directory bodies a hashing "
                                  "made from a kept listing and its changes", value=c.spliced)
        yield CounterMetricFamily("aifs_listing_cache_made", "Listings a hashing made to keep",
                                  value=c.made)


class _StoredBytesCollector:
    """Stored vs logical bytes per namespace, computed on scrape."""

    def __init__(self, stats_fn: StatsFn) -> None:
        self._fn = stats_fn

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stored = GaugeMetricFamily("aifs_stored_bytes", "Envelope bytes on the chunk store",
                                   labels=["namespace"])
        logical = GaugeMetricFamily("aifs_logical_bytes", "Plaintext bytes of stored chunks",
                                    labels=["namespace"])
        try:
            # a database that went away must not hold the scrape past a scraper's timeout
            with bounded_by(Deadline.after(SCRAPE_WAIT)):
                stats = self._fn()
        except Exception:  # a scrape must not fail because the store is busy
            stats = {}
        for ns, (s, lg) in sorted(stats.items()):
            stored.add_metric([ns], float(s))
            logical.add_metric([ns], float(lg))
        yield stored
        yield logical


class Metrics:
    def __init__(self, stats_fn: StatsFn | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpcs = Counter("aifs_rpc_total", "RPCs handled", ["method", "code"],
                            registry=self.registry)
        self.latency = Histogram(
            "aifs_rpc_seconds", "RPC latency", ["method", "code"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30))
        self.data_bytes = Counter("aifs_data_bytes_total", "Payload bytes on the data path",
                                  ["direction"], registry=self.registry)
        self.cache_events = Counter("aifs_cache_total", "Server cache lookups", ["result"],
                                    registry=self.registry)
        if stats_fn is not None:
            self.registry.register(_StoredBytesCollector(stats_fn))  # type: ignore[arg-type]
        self._http: Any = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def add_bytes(self, direction: str, n: int) -> None:
        if n:
            self.data_bytes.labels(direction).inc(n)

    def cache(self, hit: bool) -> None:
        self.cache_events.labels("hit" if hit else "miss").inc()

    def interceptor(self) -> grpc.ServerInterceptor:
        return _MetricsInterceptor(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = None
    try:
        code = context.code()  # type: ignore[attr-defined]
    except Exception:
        code = None
    if code is None:
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class _MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        m = self._m

        def wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def inner(request: Any, context: grpc.ServicerContext) -> Any:
                t0 = time.perf_counter()
                failed = True
                try:
                    result = behavior(request, context)
                    failed = False
                    return result
                finally:
                    m.observe(method, _code_name(context, failed), time.perf_counter() - t0)
            return inner

        def wrap_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def inner(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                t0 = time.perf_counter()
                failed = True
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    m.observe(method, _code_name(context, failed), time.perf_counter() - t0)
            return inner

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary), handler.request_deserializer,
                handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream), handler.request_deserializer,
            handler.response_serializer)
