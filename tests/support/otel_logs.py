"""Sends log records through the OpenTelemetry Python SDK to an OTLP endpoint.

    otel_logs.py grpc|http ENDPOINT COUNT [FIRST]

Records FIRST..FIRST+COUNT-1 go through the logging bridge (logger
"app.orders"): message "order N placed", attributes order.id (int) and
amount (double), ERROR for every tenth, INFO otherwise; the resource is a
checkout service at release 1.4.2 in namespace shop. Exits 0 once the
exporter has flushed, and prints how many exports failed (the SDK logs a
failed export and moves on).
"""
import logging
import sys

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

protocol, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    exporter = OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=30)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    exporter = OTLPLogExporter(endpoint=endpoint + "/v1/logs", timeout=30)

failed = 0
export = exporter.export


def counting_export(batch):
    global failed
    result = export(batch)
    # The result enum was renamed across SDK versions; its member was not.
    if result.name != "SUCCESS":
        failed += 1
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
provider = LoggerProvider(resource=resource)
# A queue that holds every record: the SDK's default (2,048) drops records
# while a busy receiver makes it retry.
provider.add_log_record_processor(
    BatchLogRecordProcessor(exporter, max_export_batch_size=512, max_queue_size=max(2048, count))
)
handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
log = logging.getLogger("app.orders")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(handler)
for i in range(first, first + count):
    level = logging.ERROR if i % 10 == 0 else logging.INFO
    log.log(level, "order %d placed", i, extra={"order.id": i, "amount": i * 1.5})
provider.force_flush(60_000)
provider.shutdown()
print(f"failed exports: {failed}")
