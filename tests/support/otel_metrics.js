// Exports metrics through the OpenTelemetry JS SDK to an OTLP endpoint.
//
//   node otel_metrics.js grpc|http ENDPOINT cumulative|delta
//
// The same instruments and values as otel_metrics.py, in two phases with
// an export after each. Prints "points: N failed exports: F".
const {
  MeterProvider,
  PeriodicExportingMetricReader,
  AggregationType,
} = require("@opentelemetry/sdk-metrics");
const { AggregationTemporalityPreference } = require("@opentelemetry/exporter-metrics-otlp-http");
const { resourceFromAttributes } = require("@opentelemetry/resources");

const [protocol, endpoint, temporality] = process.argv.slice(2);
const temporalityPreference =
  temporality === "delta" ? AggregationTemporalityPreference.DELTA : AggregationTemporalityPreference.CUMULATIVE;
let exporter;
if (protocol === "grpc") {
  const { OTLPMetricExporter } = require("@opentelemetry/exporter-metrics-otlp-grpc");
  exporter = new OTLPMetricExporter({ url: endpoint, timeoutMillis: 30000, temporalityPreference });
} else {
  const { OTLPMetricExporter } = require("@opentelemetry/exporter-metrics-otlp-proto");
  exporter = new OTLPMetricExporter({ url: endpoint + "/v1/metrics", timeoutMillis: 30000, temporalityPreference });
}
let failed = 0;
let points = 0;
const exportOnce = exporter.export.bind(exporter);
exporter.export = (metrics, done) => {
  for (const sm of metrics.scopeMetrics) for (const m of sm.metrics) points += m.dataPoints.length;
  exportOnce(metrics, (result) => {
    if (result.code !== 0) failed += 1;
    done(result);
  });
};
const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3600000 });
const provider = new MeterProvider({
  resource: resourceFromAttributes({
    "service.name": "checkout",
    "service.version": "1.4.2",
    "k8s.namespace.name": "shop",
    "deployment.environment": "test",
  }),
  readers: [reader],
  views: [
    {
      instrumentName: "order.amount",
      aggregation: { type: AggregationType.EXPLICIT_BUCKET_HISTOGRAM, options: { boundaries: [10, 50, 100] } },
    },
    { instrumentName: "order.latency", aggregation: { type: AggregationType.EXPONENTIAL_HISTOGRAM } },
  ],
});
const meter = provider.getMeter("app.orders");
const placed = meter.createCounter("orders.placed", { unit: "1", description: "orders placed" });
const open = meter.createUpDownCounter("orders.open");
const temp = meter.createGauge("cpu.temp", { unit: "Cel" });
const amount = meter.createHistogram("order.amount");
const latency = meter.createHistogram("order.latency", { unit: "ms" });

async function main() {
  placed.add(3, { route: "/a" });
  placed.add(4, { route: "/b" });
  open.add(10);
  open.add(-3);
  temp.record(21.5, { core: "0" });
  for (const v of [5, 20, 70]) amount.record(v);
  for (const v of [0.6, 1.5, 3.0, 12.0]) latency.record(v);
  await provider.forceFlush();

  placed.add(5, { route: "/a" });
  placed.add(6, { route: "/b" });
  open.add(-2);
  temp.record(23.25, { core: "0" });
  for (const v of [150, 30]) amount.record(v);
  for (const v of [100.0, 0.0]) latency.record(v);
  await provider.forceFlush();
  await provider.shutdown();
  console.log(`points: ${points} failed exports: ${failed}`);
}
main();
