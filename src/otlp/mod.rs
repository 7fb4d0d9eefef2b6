//! OpenTelemetry's protocol (OTLP) for logs: the protobuf messages, the
//! JSON form, gRPC framing, and the mapping between log records and sluice
//! events that the `otlp` source and sink share (docs/otlp.md).

pub(crate) mod grpc;
pub(crate) mod json;
pub(crate) mod logs;
pub(crate) mod proto;

/// The gRPC method of the logs service.
pub(crate) const LOGS_GRPC_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// The OTLP/HTTP path of logs.
pub(crate) const LOGS_HTTP_PATH: &str = "/v1/logs";
