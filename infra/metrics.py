"""``GET /metrics`` in Prometheus' text format (OA served one too): requests and latency by
route, and the service's own figures, read at scrape time: the log's position, each view's
lag behind it, the Kafka relay's lag, the write model's position.

Each app has its own registry (tests build many apps in one process); the request figures
come from a plain ASGI middleware, a dictionary update and a histogram observation per
request, cheaper than Litestar's Prometheus plugin on the hot path.
"""

from __future__ import annotations

import asyncio
import time

from litestar import Request, Response, get
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar appends the charset
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceFigures(Collector):
    """Gauges computed when scraped, from what the app holds."""

    def __init__(self):
        self.state = None  # the app's state, bound once the app exists
        self.log_position = 0
        self.relay_position: int | None = None
        self._relay_positions = None  # made once: making it creates its table

    async def refresh(self) -> None:
        """The figures that need the database, read off the event loop before a scrape."""
        state = self.state
        self.log_position = await asyncio.to_thread(state.service.store.max_position)
        if state.settings.kafka.bootstrap:
            self.relay_position = await asyncio.to_thread(self._relay_position)

    def _relay_position(self) -> int:
        if self._relay_positions is None:
            from infra.relay import RelayPositions  # only where Kafka is configured

            self._relay_positions = RelayPositions(self.state.service.store)
        return self._relay_positions.get(self.state.settings.kafka.events_topic)

    def collect(self):
        position = GaugeMetricFamily("oasst_log_position", "Position of the last event in the log")
        position.add_metric([], self.log_position)
        yield position
        service = self.state.service
        if service.model is not None:
            model = GaugeMetricFamily("oasst_write_model_position", "Log position the write model has folded")
            model.add_metric([], service.model.position)
            yield model
        runner = self.state.runner
        if runner is not None:
            lag = GaugeMetricFamily(
                "oasst_view_lag_events", "Events in the log a view has not folded yet", labels=["view"]
            )
            for view in runner.views:
                lag.add_metric([view.name], max(0, self.log_position - view.position))
            yield lag
        if self.relay_position is not None:
            relay = GaugeMetricFamily("oasst_relay_lag_events", "Events in the log not yet published to Kafka")
            relay.add_metric([], max(0, self.log_position - self.relay_position))
            yield relay


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "oasst_http_request_duration_seconds",
            "Time to answer a request, by route",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=BUCKETS,
        )
        self.figures = ServiceFigures()
        self.registry.register(self.figures)

    def middleware(self, app):
        """An ASGI middleware that times each HTTP request under its route's template."""
        latency = self.latency

        async def timed(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            status = 500
            started = time.perf_counter()

            async def send_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                route = scope.get("path_template") or "unrouted"
                latency.labels(scope["method"], route, str(status)).observe(time.perf_counter() - started)

        return timed


@get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    await m.figures.refresh()
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE)
