// Sends log records through the OpenTelemetry JS SDK to an OTLP endpoint.
//
//   node otel_logs.js grpc|http ENDPOINT COUNT FIRST
//
// The same records as otel_logs.py: logger "app.orders", body "order N
// placed", attributes order.id (int) and amount (double), ERROR for every
// tenth and INFO otherwise, a checkout service at release 1.4.2 in
// namespace shop. Prints "failed exports: N" once flushed.
const { LoggerProvider, BatchLogRecordProcessor } = require("@opentelemetry/sdk-logs");
const { resourceFromAttributes } = require("@opentelemetry/resources");
const { SeverityNumber } = require("@opentelemetry/api-logs");

const [protocol, endpoint, countArg, firstArg] = process.argv.slice(2);
const count = Number(countArg);
const first = Number(firstArg || 0);
let exporter;
if (protocol === "grpc") {
  const { OTLPLogExporter } = require("@opentelemetry/exporter-logs-otlp-grpc");
  exporter = new OTLPLogExporter({ url: endpoint, timeoutMillis: 30000 });
} else {
  const { OTLPLogExporter } = require("@opentelemetry/exporter-logs-otlp-proto");
  exporter = new OTLPLogExporter({ url: endpoint + "/v1/logs", timeoutMillis: 30000 });
}
let failed = 0;
const exportOnce = exporter.export.bind(exporter);
exporter.export = (records, done) =>
  exportOnce(records, (result) => {
    if (result.code !== 0) failed += 1;
    done(result);
  });
const provider = new LoggerProvider({
  resource: resourceFromAttributes({
    "service.name": "checkout",
    "service.version": "1.4.2",
    "k8s.namespace.name": "shop",
    "deployment.environment": "test",
  }),
  processors: [new BatchLogRecordProcessor({ exporter, maxExportBatchSize: 512, maxQueueSize: Math.max(2048, count) })],
});
const log = provider.getLogger("app.orders");
for (let i = first; i < first + count; i++) {
  const error = i % 10 === 0;
  log.emit({
    severityNumber: error ? SeverityNumber.ERROR : SeverityNumber.INFO,
    severityText: error ? "ERROR" : "INFO",
    body: `order ${i} placed`,
    attributes: { "order.id": i, amount: i * 1.5 },
  });
}
provider
  .forceFlush()
  .then(() => provider.shutdown())
  .then(() => console.log(`failed exports: ${failed}`));
