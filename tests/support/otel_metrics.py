"""Exports metrics through the OpenTelemetry Python SDK to an OTLP endpoint.

    otel_metrics.py grpc|http ENDPOINT cumulative|delta

Meter "app.orders" on a checkout service at release 1.4.2 in namespace
shop records, in two phases with an export after each:

    orders.placed   counter           route=/a: 3 then 5; route=/b: 4 then 6
    orders.open     up-down counter   +10 -3, then -2
    cpu.temp        gauge             core=0: 21.5, then 23.25
    order.amount    histogram         bounds 10, 50, 100: 5 20 70, then 150 30
    order.latency   exponential hist  0.6 1.5 3 12, then 100 0

Counters, up-down counters and histograms use the temporality given.
Prints "points: N failed exports: F": N is every data point the exporter
was handed (each must arrive once), F the exports that failed.
"""
import sys

from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

protocol, endpoint, temporality = sys.argv[1], sys.argv[2], sys.argv[3]
kind = AggregationTemporality.DELTA if temporality == "delta" else AggregationTemporality.CUMULATIVE
preferred = {Counter: kind, UpDownCounter: kind, Histogram: kind}
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=30, preferred_temporality=preferred)
else:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    exporter = OTLPMetricExporter(endpoint=endpoint + "/v1/metrics", timeout=30, preferred_temporality=preferred)

failed = 0
points = 0
export = exporter.export


def counting_export(data, **kwargs):
    global failed, points
    result = export(data, **kwargs)
    if result.name != "SUCCESS":
        failed += 1
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points += len(m.data.data_points)
    return result


exporter.export = counting_export
resource = Resource.create(
    {
        "service.name": "checkout",
        "service.version": "1.4.2",
        "k8s.namespace.name": "shop",
        "deployment.environment": "test",
    }
)
# Exports only when flushed: one export per phase.
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
views = [
    View(instrument_name="order.amount", aggregation=ExplicitBucketHistogramAggregation(boundaries=[10.0, 50.0, 100.0])),
    View(instrument_name="order.latency", aggregation=ExponentialBucketHistogramAggregation()),
]
provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
meter = provider.get_meter("app.orders")
placed = meter.create_counter("orders.placed", unit="1", description="orders placed")
open_orders = meter.create_up_down_counter("orders.open")
temp = meter.create_gauge("cpu.temp", unit="Cel")
amount = meter.create_histogram("order.amount")
latency = meter.create_histogram("order.latency", unit="ms")

placed.add(3, {"route": "/a"})
placed.add(4, {"route": "/b"})
open_orders.add(10)
open_orders.add(-3)
temp.set(21.5, {"core": "0"})
for v in (5, 20, 70):
    amount.record(v)
for v in (0.6, 1.5, 3.0, 12.0):
    latency.record(v)
provider.force_flush(60_000)

placed.add(5, {"route": "/a"})
placed.add(6, {"route": "/b"})
open_orders.add(-2)
temp.set(23.25, {"core": "0"})
for v in (150, 30):
    amount.record(v)
for v in (100.0, 0.0):
    latency.record(v)
provider.force_flush(60_000)
provider.shutdown()
print(f"points: {points} failed exports: {failed}")
