"""Prometheus text exposition of ``Server.stats()`` (replaces gev's ``MetricsServer``).

Needs the optional ``prometheus_client`` package (``pip install gevwire[metrics]``).
The collector reads ``stats()`` at scrape time, so serving metrics adds nothing to the
hot path: the loops only bump their own plain-int counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MetricsServer", "StatsCollector"]


class StatsCollector:
    """A ``prometheus_client`` collector over a ``stats()`` callable."""

    def __init__(self, stats: Callable[[], dict[str, Any]], prefix: str = "gevwire") -> None:
        self._stats = stats
        self._prefix = prefix

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by prometheus_client on every scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._stats()
        p = self._prefix
        gauge = GaugeMetricFamily(f"{p}_connections_open", "Connections open now",
                                  labels=["loop"])
        for loop in s["loops"]:
            gauge.add_metric([loop["name"]], loop["connections_open"])
        yield gauge
        yield CounterMetricFamily(f"{p}_connections", "Connections accepted",
                                  value=s["connections_total"])
        yield CounterMetricFamily(f"{p}_connections_refused",
                                  "Connections refused over max_connections",
                                  value=s["connections_refused"])
        for key, help_text in (
            ("frames_in", "Frames received"),
            ("frames_out", "Frames sent"),
            ("bytes_in", "Bytes received"),
            ("bytes_out", "Bytes sent"),
            ("turns", "Event loop turns"),
            ("busy_seconds", "Seconds the loop spent handling events, not waiting"),
        ):
            counter = CounterMetricFamily(f"{p}_{key}", help_text, labels=["loop"])
            for loop in s["loops"]:
                counter.add_metric([loop["name"]], loop[key])
            yield counter
        waiting = GaugeMetricFamily(f"{p}_frames_waiting",
                                    "Frames whose async or blocking handler runs now",
                                    labels=["loop"])
        for loop in s["loops"]:
            waiting.add_metric([loop["name"]], loop["frames_waiting"])
        yield waiting
        for key, help_text in (
            ("frames_offloaded", "Frames handed to an async or blocking handler"),
            ("offload_wait_seconds", "Seconds frames handed off took to end"),
        ):
            counter = CounterMetricFamily(f"{p}_{key}", help_text, labels=["loop"])
            for loop in s["loops"]:
                counter.add_metric([loop["name"]], loop[key])
            yield counter
        errors = CounterMetricFamily(f"{p}_errors", "Errors by kind", labels=["kind"])
        for kind, count in sorted(s["errors"].items()):
            errors.add_metric([kind], count)
        yield errors
        tls = CounterMetricFamily(f"{p}_tls_failures", "TLS failures by OpenSSL's reason",
                                  labels=["reason"])
        for reason, count in sorted(s.get("tls_failures", {}).items()):
            tls.add_metric([reason], count)
        yield tls
        if "buffered_bytes" in s:  # Server(max_buffered_bytes=...)
            yield GaugeMetricFamily(f"{p}_buffered_bytes",
                                    "Bytes held by connection buffers (last sample)",
                                    value=s["buffered_bytes"])
            yield CounterMetricFamily(f"{p}_budget_pauses",
                                      "Connections paused by max_buffered_bytes",
                                      value=s["budget_pauses"])
            yield CounterMetricFamily(f"{p}_budget_closes",
                                      "Connections closed by buffered_hard_limit",
                                      value=s["budget_closes"])


class MetricsServer:
    """Serves ``/metrics`` over HTTP on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str, port: int) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:
            raise RuntimeError(
                "metrics_address needs prometheus_client: pip install 'gevwire[metrics]'"
            ) from exc
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(stats))
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.address: tuple[str, int] = self._httpd.server_address[:2]  # type: ignore[assignment]
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop serving (idempotent)."""
        with self._lock:
            if self._httpd is not None:
                self._httpd.shutdown()
                self._httpd.server_close()
                self._thread.join(5)
                self._httpd = None  # type: ignore[assignment]
