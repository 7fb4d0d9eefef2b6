"""The round trip of tests/otlp.rs: one OTLP logs request with every kind
of value, sent to sluice, and the check that what an independent receiver
got from sluice's otlp sink is the same records.

    otlp_roundtrip.py send URL          POST the request to URL (OTLP/HTTP)
    otlp_roundtrip.py check FILE        FILE: the receiver's /received JSON;
                                        prints "same" or the differences
    otlp_roundtrip.py send-metrics URL  POST the metrics request to URL
    otlp_roundtrip.py check-metrics FILE  the same check for its data points
    otlp_roundtrip.py bench FILE N      writes a request of N records shaped
                                        like an SDK's (scripts/bench-otlp)
    otlp_roundtrip.py bench-metrics FILE N  a metrics request of N data
                                        points: half counter, a quarter
                                        gauge, a quarter histogram
"""
import json
import sys
import urllib.request

from google.protobuf.json_format import MessageToDict, ParseDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as svc
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as msvc
from opentelemetry.proto.logs.v1 import logs_pb2 as l
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1 import resource_pb2 as r


def kv(key, value):
    return c.KeyValue(key=key, value=value)


def s(v):
    return c.AnyValue(string_value=v)


def request():
    resources = [
        r.Resource(attributes=[kv("service.name", s("checkout")), kv("service.version", s("1.4.2")),
                               kv("process.pid", c.AnyValue(int_value=4242)),
                               kv("k8s.namespace.name", s("shop")), kv("k8s.pod.name", s("checkout-7d9")),
                               kv("k8s.pod.label.app", s("checkout")), kv("host.name", s("node-1")),
                               kv("cloud.region", s("eu-west-1"))]),
        r.Resource(attributes=[kv("service.name", s("cart")), kv("deployment.environment", s("prod"))]),
    ]
    out = svc.ExportLogsServiceRequest()
    seq = 0
    for res in resources:
        rl = out.resource_logs.add(resource=res)
        for scope in (c.InstrumentationScope(name="app.orders", version="2.1",
                                             attributes=[kv("lib", s("orders"))]),
                      c.InstrumentationScope(name="app.db")):
            sl = rl.scope_logs.add(scope=scope)
            for i in range(5):
                seq += 1
                rec = sl.log_records.add(
                    time_unix_nano=1780000000000000000 + seq * 1001,
                    observed_time_unix_nano=1780000000000000500 + seq,
                    severity_number=[9, 13, 17, 5, 21][i],
                    severity_text=["INFO", "WARN", "ERROR", "DEBUG", "FATAL"][i],
                    flags=1 if i % 2 else 0,
                    event_name="order.placed" if i == 3 else "",
                    dropped_attributes_count=i,
                )
                if i == 4:
                    rec.body.kvlist_value.values.extend([kv("k", s("v")), kv("n", c.AnyValue(int_value=-3))])
                else:
                    rec.body.string_value = f"record {seq} \"quoted\" ✓\n"
                if i != 2:
                    rec.trace_id = bytes(range(seq, seq + 16))
                    rec.span_id = bytes(range(seq, seq + 8))
                arr = c.AnyValue()
                arr.array_value.values.extend([s("a"), c.AnyValue(bool_value=True), c.AnyValue(double_value=2.5)])
                rec.attributes.extend([
                    kv("seq", c.AnyValue(int_value=seq)),
                    kv("ratio", c.AnyValue(double_value=1.0)),
                    kv("big", c.AnyValue(int_value=-(2**62))),
                    kv("ok", c.AnyValue(bool_value=bool(i % 2))),
                    kv("tags", arr),
                    kv("empty", c.AnyValue()),
                ])
    return out


def records(req_dicts):
    """(resource, scope, record) triples with attribute lists sorted, by seq."""
    out = []
    for d in req_dicts:
        req = ParseDict(d, svc.ExportLogsServiceRequest())
        for rl in req.resource_logs:
            res = sorted(json.dumps(MessageToDict(a), sort_keys=True) for a in rl.resource.attributes)
            for sl in rl.scope_logs:
                scope = json.dumps(MessageToDict(sl.scope), sort_keys=True)
                for rec in sl.log_records:
                    d = MessageToDict(rec)
                    seq = next(a.value.int_value for a in rec.attributes if a.key == "seq")
                    out.append((seq, res, scope, json.dumps(d, sort_keys=True)))
    return sorted(out)


def bench_request(n):
    """N records as the Python SDK's logging bridge makes them."""
    out = svc.ExportLogsServiceRequest()
    rl = out.resource_logs.add(resource=r.Resource(attributes=[
        kv("service.name", s("checkout")), kv("service.version", s("1.4.2")),
        kv("telemetry.sdk.language", s("python")), kv("telemetry.sdk.name", s("opentelemetry")),
        kv("k8s.namespace.name", s("shop")), kv("k8s.pod.name", s("checkout-7d9f8c6b5-x2x9z"))]))
    sl = rl.scope_logs.add(scope=c.InstrumentationScope(name="app.orders"))
    for i in range(n):
        rec = sl.log_records.add(
            time_unix_nano=1780000000000000000 + i * 250000, observed_time_unix_nano=1780000000000000000 + i * 250000 + 40,
            severity_number=9, severity_text="INFO", trace_id=bytes(range(16)), span_id=bytes(range(8)), flags=1)
        rec.body.string_value = f"order {i} placed for customer u-{i * 7919 % 100000}"
        rec.attributes.extend([
            kv("order.id", c.AnyValue(int_value=i)), kv("amount", c.AnyValue(double_value=i * 1.5)),
            kv("code.filepath", s("/srv/app/orders.py")), kv("code.function", s("place_order")),
            kv("code.lineno", c.AnyValue(int_value=118)), kv("http.route", s("/api/v1/orders"))])
    return out


def metrics_request():
    """Every metric kind that maps onto a sample kind and back unchanged:
    monotonic cumulative Sums (integer values), Gauges (doubles with a
    fraction), Histograms and Summaries, string attributes, times in whole
    milliseconds."""
    out = msvc.ExportMetricsServiceRequest()
    resources = [
        r.Resource(attributes=[kv("service.name", s("checkout")), kv("service.version", s("1.4.2")),
                               kv("process.pid", c.AnyValue(int_value=4242)), kv("k8s.namespace.name", s("shop")),
                               kv("k8s.pod.label.app", s("checkout")), kv("host.name", s("node-1")),
                               kv("cloud.region", s("eu-west-1"))]),
        r.Resource(attributes=[kv("service.name", s("cart"))]),
    ]
    t0 = 1780000000000000000
    for ri, res in enumerate(resources):
        rm = out.resource_metrics.add(resource=res)
        for scope in (c.InstrumentationScope(name="app.orders", version="2.1", attributes=[kv("lib", s("orders"))]),
                      c.InstrumentationScope(name="app.db")):
            sm = rm.scope_metrics.add(scope=scope)
            placed = sm.metrics.add(name="orders.placed", unit="1", description="orders placed")
            placed.sum.is_monotonic = True
            placed.sum.aggregation_temporality = m.AGGREGATION_TEMPORALITY_CUMULATIVE
            for i, route in enumerate(("/a", "/b")):
                placed.sum.data_points.add(attributes=[kv("route", s(route)), kv("zone", s("z1"))],
                                           start_time_unix_nano=t0, time_unix_nano=t0 + (i + 1) * 1_000_000,
                                           as_int=ri * 100 + i * 7 + 3)
            temp = sm.metrics.add(name="cpu.temp", unit="Cel")
            temp.gauge.data_points.add(attributes=[kv("core", s("0"))], time_unix_nano=t0 + 5_000_000, as_double=21.5 + ri)
            amount = sm.metrics.add(name="order.amount", description="amounts")
            amount.histogram.aggregation_temporality = m.AGGREGATION_TEMPORALITY_CUMULATIVE
            amount.histogram.data_points.add(start_time_unix_nano=t0, time_unix_nano=t0 + 6_000_000, count=5, sum=275.5,
                                             bucket_counts=[1, 2, 1, 1], explicit_bounds=[10.0, 50.0, 100.0])
            rpc = sm.metrics.add(name="rpc.latency", unit="s")
            rpc.summary.data_points.add(time_unix_nano=t0 + 7_000_000, count=10, sum=12.5, quantile_values=[
                m.SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=1.25),
                m.SummaryDataPoint.ValueAtQuantile(quantile=0.99, value=3.5)])
    return out


def data_points(req_dicts):
    """(resource, scope, metric, point) with attribute lists sorted."""
    out = []
    for d in req_dicts:
        if "resourceMetrics" not in d:
            continue
        req = ParseDict(d, msvc.ExportMetricsServiceRequest())
        for rm in req.resource_metrics:
            res = sorted(json.dumps(MessageToDict(a), sort_keys=True) for a in rm.resource.attributes)
            for sm in rm.scope_metrics:
                scope = json.dumps(MessageToDict(sm.scope), sort_keys=True)
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    shape = {k: v for k, v in MessageToDict(data).items() if k != "dataPoints"}
                    head = json.dumps([metric.name, metric.unit, metric.description, kind, shape], sort_keys=True)
                    for p in data.data_points:
                        attrs = sorted(json.dumps(MessageToDict(a), sort_keys=True) for a in p.attributes)
                        del p.attributes[:]
                        out.append((head, res, scope, attrs, json.dumps(MessageToDict(p), sort_keys=True)))
    return sorted(out)


if sys.argv[1] in ("send", "send-metrics"):
    body = (request() if sys.argv[1] == "send" else metrics_request()).SerializeToString()
    req = urllib.request.Request(sys.argv[2], data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, resp.status
    print("sent")
elif sys.argv[1] == "check-metrics":
    got = data_points(json.load(open(sys.argv[2])))
    want = data_points([MessageToDict(metrics_request())])
    if got == want:
        print("same")
    else:
        print(f"{len(got)} data points received, {len(want)} sent")
        for g in got:
            if g not in want:
                print("got ", g)
                break
        for w in want:
            if w not in got:
                print("want", w)
                break
elif sys.argv[1] == "bench-metrics":
    n = int(sys.argv[3])
    req = msvc.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add(resource=r.Resource(attributes=[
        kv("service.name", s("checkout")), kv("service.version", s("1.4.2")),
        kv("telemetry.sdk.language", s("python")), kv("k8s.namespace.name", s("shop"))]))
    sm = rm.scope_metrics.add(scope=c.InstrumentationScope(name="app.orders"))
    t0 = 1780000000000000000
    counter = sm.metrics.add(name="http.server.requests", unit="1")
    counter.sum.is_monotonic = True
    counter.sum.aggregation_temporality = m.AGGREGATION_TEMPORALITY_CUMULATIVE
    for i in range(n // 2):
        counter.sum.data_points.add(attributes=[kv("http.route", s(f"/api/v1/r{i}")), kv("http.method", s("GET"))],
                                    start_time_unix_nano=t0, time_unix_nano=t0 + 10**9, as_int=i * 13)
    gauge = sm.metrics.add(name="queue.depth")
    for i in range(n // 4):
        gauge.gauge.data_points.add(attributes=[kv("queue", s(f"q{i}"))], time_unix_nano=t0 + 10**9, as_double=i + 0.5)
    hist = sm.metrics.add(name="http.server.duration", unit="ms")
    hist.histogram.aggregation_temporality = m.AGGREGATION_TEMPORALITY_CUMULATIVE
    bounds = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]
    for i in range(n - n // 2 - n // 4):
        hist.histogram.data_points.add(attributes=[kv("http.route", s(f"/api/v1/r{i}"))], start_time_unix_nano=t0,
                                       time_unix_nano=t0 + 10**9, count=16, sum=1234.5, explicit_bounds=bounds,
                                       bucket_counts=[1] * 16)
    open(sys.argv[2], "wb").write(req.SerializeToString())
elif sys.argv[1] == "bench":
    open(sys.argv[2], "wb").write(bench_request(int(sys.argv[3])).SerializeToString())
else:
    got = records(json.load(open(sys.argv[2])))
    want = records([MessageToDict(request())])
    if got == want:
        print("same")
    else:
        print(f"{len(got)} records received, {len(want)} sent")
        for g, w in zip(got, want):
            if g != w:
                print("got ", g)
                print("want", w)
                break
