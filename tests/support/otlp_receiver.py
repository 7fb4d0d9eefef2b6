"""An independent OTLP logs and metrics receiver, built from
opentelemetry-proto's generated classes: gRPC (grpcio) and OTLP/HTTP
protobuf (gzip or not).

    otlp_receiver.py [--count-only] [--save-nth N PATH]

Prints "ready GRPC_PORT HTTP_PORT" once both listen on 127.0.0.1. Keeps
every request it accepted; on the HTTP port:

    GET  /received          the accepted requests, as a JSON list of
                            protobuf-JSON ExportLogsServiceRequest and
                            ExportMetricsServiceRequest objects
    GET  /count             records (and metric data points) accepted so far
    POST /control/fail?n=N  the next N exports (either protocol) fail with
                            503 / UNAVAILABLE, nothing kept

--count-only keeps the count and not the requests (scripts/bench-otlp).
--save-nth N PATH writes the Nth logs request that comes over HTTP, as
protobuf without compression, to PATH, and its record count to
PATH.count: scripts/bench-otlp measures the receiver's ceiling with a
request sluice sent, past its first ones.
"""
import gzip
import json
import os
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as svc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as svc_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as msvc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as msvc_grpc

lock = threading.Lock()
received = []
fail_next = [0]
count = [0]
count_only = "--count-only" in sys.argv
save_nth, save_path = ((int(sys.argv[sys.argv.index("--save-nth") + 1]), sys.argv[sys.argv.index("--save-nth") + 2])
                       if "--save-nth" in sys.argv else (0, None))
seen = [0]


def take(request):
    """True when the export is kept, False when it must fail."""
    with lock:
        if fail_next[0] > 0:
            fail_next[0] -= 1
            return False
        if isinstance(request, msvc.ExportMetricsServiceRequest):
            count[0] += sum(points(m) for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
        else:
            count[0] += sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        if not count_only:
            received.append(MessageToDict(request))
        return True


def points(metric):
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def save(body, request):
    with lock:
        seen[0] += 1
        if seen[0] != save_nth:
            return
    with open(save_path + ".tmp", "wb") as f:
        f.write(body)
    records = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    with open(save_path + ".count", "w") as f:
        f.write(str(records))
    os.rename(save_path + ".tmp", save_path)


class Metrics(msvc_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        if not take(request):
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        return msvc.ExportMetricsServiceResponse()


class Logs(svc_grpc.LogsServiceServicer):
    def Export(self, request, context):
        if not take(request):
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        return svc.ExportLogsServiceResponse()


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/count":
            with lock:
                return self.reply(200, str(count[0]).encode(), "text/plain")
        if self.path != "/received":
            return self.reply(404, b"", "text/plain")
        with lock:
            body = json.dumps(received).encode()
        self.reply(200, body, "application/json")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/control/fail"):
            with lock:
                fail_next[0] = int(self.path.split("n=")[1])
            return self.reply(200, b"ok", "text/plain")
        services = {
            "/v1/logs": (svc.ExportLogsServiceRequest, svc.ExportLogsServiceResponse),
            "/v1/metrics": (msvc.ExportMetricsServiceRequest, msvc.ExportMetricsServiceResponse),
        }
        if self.path not in services:
            return self.reply(404, b"", "text/plain")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.reply(415, b"", "text/plain")
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message, answer = services[self.path]
        request = message()
        try:
            request.ParseFromString(body)
        except Exception:
            return self.reply(400, b"", "text/plain")
        if not take(request):
            return self.reply(503, b"", "text/plain")
        if save_path and self.path == "/v1/logs":
            save(body, request)
        self.reply(200, answer().SerializeToString(), "application/x-protobuf")


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
svc_grpc.add_LogsServiceServicer_to_server(Logs(), server)
msvc_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
grpc_port = server.add_insecure_port("127.0.0.1:0")
server.start()
http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
print(f"ready {grpc_port} {http.server_address[1]}", flush=True)
http.serve_forever()
