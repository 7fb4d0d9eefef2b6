//! OTLP/JSON requests (the protobuf JSON mapping as the OTLP spec narrows
//! it: lowerCamelCase names, trace and span ids in hex, 64-bit integers as
//! strings or numbers, enums as integers) read into the protobuf messages.
//! The proto field names (`resource_logs`) are accepted too.

use base64::Engine as _;
use serde_json::{Map, Value as Json};

use super::proto::{
    AnyValue, ArrayValue, Buckets, ExponentialHistogram, ExponentialHistogramDataPoint, ExportLogsServiceRequest,
    ExportMetricsServiceRequest, Gauge, Histogram, HistogramDataPoint, InstrumentationScope, KeyValue, KeyValueList, LogRecord, Metric,
    MetricData, NumberDataPoint, NumberValue, Resource, ResourceLogs, ResourceMetrics, ScopeLogs, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, Value, ValueAtQuantile,
};

/// Why an OTLP/JSON request was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum JsonError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Syntax(String),
    /// JSON of the wrong shape at `path`.
    #[error("{path}: {message}")]
    Shape {
        /// Where, e.g. `resourceLogs[0].scopeLogs[1].logRecords[3].traceId`.
        path: String,
        /// What was expected.
        message: &'static str,
    },
}

type Result<T> = std::result::Result<T, JsonError>;

fn shape(path: &str, message: &'static str) -> JsonError {
    JsonError::Shape {
        path: path.to_owned(),
        message,
    }
}

/// Reads an `ExportLogsServiceRequest` from OTLP/JSON.
pub(crate) fn logs_request(body: &[u8]) -> Result<ExportLogsServiceRequest> {
    let v: Json = serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))?;
    let o = object(&v, "")?;
    Ok(ExportLogsServiceRequest {
        resource_logs: list(o, "resourceLogs", "resource_logs", "", resource_logs)?,
    })
}

/// Reads an `ExportMetricsServiceRequest` from OTLP/JSON.
pub(crate) fn metrics_request(body: &[u8]) -> Result<ExportMetricsServiceRequest> {
    let v: Json = serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))?;
    let o = object(&v, "")?;
    Ok(ExportMetricsServiceRequest {
        resource_metrics: list(o, "resourceMetrics", "resource_metrics", "", resource_metrics)?,
    })
}

fn object<'a>(v: &'a Json, path: &str) -> Result<&'a Map<String, Json>> {
    v.as_object().ok_or_else(|| shape(path, "expected an object"))
}

fn field<'a>(o: &'a Map<String, Json>, camel: &str, snake: &str) -> Option<&'a Json> {
    o.get(camel).or_else(|| o.get(snake)).filter(|v| !v.is_null())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn list<T>(o: &Map<String, Json>, camel: &str, snake: &str, path: &str, each: impl Fn(&Json, &str) -> Result<T>) -> Result<Vec<T>> {
    let Some(v) = field(o, camel, snake) else { return Ok(Vec::new()) };
    let here = join(path, camel);
    let items = v.as_array().ok_or_else(|| shape(&here, "expected an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| each(item, &format!("{here}[{i}]")))
        .collect()
}

fn string(o: &Map<String, Json>, camel: &str, snake: &str, path: &str) -> Result<String> {
    match field(o, camel, snake) {
        None => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => Err(shape(&join(path, camel), "expected a string")),
    }
}

/// An integer given as a JSON number or a decimal string.
fn integer(o: &Map<String, Json>, camel: &str, snake: &str, path: &str) -> Result<i128> {
    let bad = || shape(&join(path, camel), "expected an integer");
    match field(o, camel, snake) {
        None => Ok(0),
        Some(Json::Number(n)) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)).ok_or_else(bad),
        Some(Json::String(s)) => s.parse().map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn int_as<T: TryFrom<i128>>(o: &Map<String, Json>, camel: &str, snake: &str, path: &str) -> Result<T> {
    T::try_from(integer(o, camel, snake, path)?).map_err(|_| shape(&join(path, camel), "integer out of range"))
}

fn hex(o: &Map<String, Json>, camel: &str, snake: &str, path: &str) -> Result<Vec<u8>> {
    let s = string(o, camel, snake, path)?;
    super::logs::parse_hex(&s).ok_or_else(|| shape(&join(path, camel), "expected hex digits"))
}

fn resource_logs(v: &Json, path: &str) -> Result<ResourceLogs> {
    let o = object(v, path)?;
    Ok(ResourceLogs {
        resource: field(o, "resource", "resource")
            .map(|r| resource(r, &join(path, "resource")))
            .transpose()?,
        scope_logs: list(o, "scopeLogs", "scope_logs", path, scope_logs)?,
        schema_url: string(o, "schemaUrl", "schema_url", path)?,
    })
}

fn resource(v: &Json, path: &str) -> Result<Resource> {
    let o = object(v, path)?;
    Ok(Resource {
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: int_as(o, "droppedAttributesCount", "dropped_attributes_count", path)?,
    })
}

fn scope_logs(v: &Json, path: &str) -> Result<ScopeLogs> {
    let o = object(v, path)?;
    Ok(ScopeLogs {
        scope: field(o, "scope", "scope").map(|s| scope(s, &join(path, "scope"))).transpose()?,
        log_records: list(o, "logRecords", "log_records", path, log_record)?,
        schema_url: string(o, "schemaUrl", "schema_url", path)?,
    })
}

fn scope(v: &Json, path: &str) -> Result<InstrumentationScope> {
    let o = object(v, path)?;
    Ok(InstrumentationScope {
        name: string(o, "name", "name", path)?,
        version: string(o, "version", "version", path)?,
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: int_as(o, "droppedAttributesCount", "dropped_attributes_count", path)?,
    })
}

fn log_record(v: &Json, path: &str) -> Result<LogRecord> {
    let o = object(v, path)?;
    Ok(LogRecord {
        time_unix_nano: int_as(o, "timeUnixNano", "time_unix_nano", path)?,
        observed_time_unix_nano: int_as(o, "observedTimeUnixNano", "observed_time_unix_nano", path)?,
        severity_number: int_as(o, "severityNumber", "severity_number", path)?,
        severity_text: string(o, "severityText", "severity_text", path)?,
        body: field(o, "body", "body").map(|b| any_value(b, &join(path, "body"))).transpose()?,
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: int_as(o, "droppedAttributesCount", "dropped_attributes_count", path)?,
        flags: int_as(o, "flags", "flags", path)?,
        trace_id: hex(o, "traceId", "trace_id", path)?,
        span_id: hex(o, "spanId", "span_id", path)?,
        event_name: string(o, "eventName", "event_name", path)?,
    })
}

fn resource_metrics(v: &Json, path: &str) -> Result<ResourceMetrics> {
    let o = object(v, path)?;
    Ok(ResourceMetrics {
        resource: field(o, "resource", "resource")
            .map(|r| resource(r, &join(path, "resource")))
            .transpose()?,
        scope_metrics: list(o, "scopeMetrics", "scope_metrics", path, scope_metrics)?,
        schema_url: string(o, "schemaUrl", "schema_url", path)?,
    })
}

fn scope_metrics(v: &Json, path: &str) -> Result<ScopeMetrics> {
    let o = object(v, path)?;
    Ok(ScopeMetrics {
        scope: field(o, "scope", "scope").map(|s| scope(s, &join(path, "scope"))).transpose()?,
        metrics: list(o, "metrics", "metrics", path, metric)?,
        schema_url: string(o, "schemaUrl", "schema_url", path)?,
    })
}

fn metric(v: &Json, path: &str) -> Result<Metric> {
    let o = object(v, path)?;
    let data = if let Some(g) = field(o, "gauge", "gauge") {
        let here = join(path, "gauge");
        Some(MetricData::Gauge(Gauge {
            data_points: list(object(g, &here)?, "dataPoints", "data_points", &here, number_point)?,
        }))
    } else if let Some(s) = field(o, "sum", "sum") {
        let here = join(path, "sum");
        let so = object(s, &here)?;
        Some(MetricData::Sum(Sum {
            data_points: list(so, "dataPoints", "data_points", &here, number_point)?,
            aggregation_temporality: temporality(so, &here)?,
            is_monotonic: boolean(so, "isMonotonic", "is_monotonic", &here)?,
        }))
    } else if let Some(h) = field(o, "histogram", "histogram") {
        let here = join(path, "histogram");
        let ho = object(h, &here)?;
        Some(MetricData::Histogram(Histogram {
            data_points: list(ho, "dataPoints", "data_points", &here, histogram_point)?,
            aggregation_temporality: temporality(ho, &here)?,
        }))
    } else if let Some(h) = field(o, "exponentialHistogram", "exponential_histogram") {
        let here = join(path, "exponentialHistogram");
        let ho = object(h, &here)?;
        Some(MetricData::ExponentialHistogram(ExponentialHistogram {
            data_points: list(ho, "dataPoints", "data_points", &here, exponential_point)?,
            aggregation_temporality: temporality(ho, &here)?,
        }))
    } else if let Some(s) = field(o, "summary", "summary") {
        let here = join(path, "summary");
        Some(MetricData::Summary(Summary {
            data_points: list(object(s, &here)?, "dataPoints", "data_points", &here, summary_point)?,
        }))
    } else {
        None
    };
    Ok(Metric {
        name: string(o, "name", "name", path)?,
        description: string(o, "description", "description", path)?,
        unit: string(o, "unit", "unit", path)?,
        data,
        metadata: list(o, "metadata", "metadata", path, key_value)?,
    })
}

/// `aggregationTemporality`: its number, or its enum name.
fn temporality(o: &Map<String, Json>, path: &str) -> Result<i32> {
    match field(o, "aggregationTemporality", "aggregation_temporality") {
        Some(Json::String(s)) if s.starts_with("AGGREGATION_TEMPORALITY_") => Ok(match s.as_str() {
            "AGGREGATION_TEMPORALITY_DELTA" => 1,
            "AGGREGATION_TEMPORALITY_CUMULATIVE" => 2,
            _ => 0,
        }),
        _ => int_as(o, "aggregationTemporality", "aggregation_temporality", path),
    }
}

fn boolean(o: &Map<String, Json>, camel: &str, snake: &str, path: &str) -> Result<bool> {
    match field(o, camel, snake) {
        None => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(_) => Err(shape(&join(path, camel), "expected a boolean")),
    }
}

/// A double given as a JSON number, or as a string (`"NaN"`, `"Infinity"`,
/// `"1.5"`); `None` when absent.
fn double(o: &Map<String, Json>, camel: &str, snake: &str, path: &str) -> Result<Option<f64>> {
    let bad = || shape(&join(path, camel), "expected a number");
    match field(o, camel, snake) {
        None => Ok(None),
        Some(Json::Number(n)) => n.as_f64().map(Some).ok_or_else(bad),
        Some(Json::String(s)) => match s.as_str() {
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            s => s.parse().map(Some).map_err(|_| bad()),
        },
        Some(_) => Err(bad()),
    }
}

fn uint(v: &Json, path: &str) -> Result<u64> {
    let bad = || shape(path, "expected an unsigned integer");
    match v {
        Json::Number(n) => n.as_u64().ok_or_else(bad),
        Json::String(s) => s.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn number_point(v: &Json, path: &str) -> Result<NumberDataPoint> {
    let o = object(v, path)?;
    let value = if field(o, "asInt", "as_int").is_some() {
        Some(NumberValue::AsInt(int_as(o, "asInt", "as_int", path)?))
    } else {
        double(o, "asDouble", "as_double", path)?.map(NumberValue::AsDouble)
    };
    Ok(NumberDataPoint {
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        start_time_unix_nano: int_as(o, "startTimeUnixNano", "start_time_unix_nano", path)?,
        time_unix_nano: int_as(o, "timeUnixNano", "time_unix_nano", path)?,
        value,
        flags: int_as(o, "flags", "flags", path)?,
    })
}

fn histogram_point(v: &Json, path: &str) -> Result<HistogramDataPoint> {
    let o = object(v, path)?;
    Ok(HistogramDataPoint {
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        start_time_unix_nano: int_as(o, "startTimeUnixNano", "start_time_unix_nano", path)?,
        time_unix_nano: int_as(o, "timeUnixNano", "time_unix_nano", path)?,
        count: int_as(o, "count", "count", path)?,
        sum: double(o, "sum", "sum", path)?,
        bucket_counts: list(o, "bucketCounts", "bucket_counts", path, uint)?,
        explicit_bounds: list(o, "explicitBounds", "explicit_bounds", path, |v, p| {
            v.as_f64().ok_or_else(|| shape(p, "expected a number"))
        })?,
        flags: int_as(o, "flags", "flags", path)?,
        min: double(o, "min", "min", path)?,
        max: double(o, "max", "max", path)?,
    })
}

fn buckets(v: &Json, path: &str) -> Result<Buckets> {
    let o = object(v, path)?;
    Ok(Buckets {
        offset: int_as(o, "offset", "offset", path)?,
        bucket_counts: list(o, "bucketCounts", "bucket_counts", path, uint)?,
    })
}

fn exponential_point(v: &Json, path: &str) -> Result<ExponentialHistogramDataPoint> {
    let o = object(v, path)?;
    Ok(ExponentialHistogramDataPoint {
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        start_time_unix_nano: int_as(o, "startTimeUnixNano", "start_time_unix_nano", path)?,
        time_unix_nano: int_as(o, "timeUnixNano", "time_unix_nano", path)?,
        count: int_as(o, "count", "count", path)?,
        sum: double(o, "sum", "sum", path)?,
        scale: int_as(o, "scale", "scale", path)?,
        zero_count: int_as(o, "zeroCount", "zero_count", path)?,
        positive: field(o, "positive", "positive")
            .map(|b| buckets(b, &join(path, "positive")))
            .transpose()?,
        negative: field(o, "negative", "negative")
            .map(|b| buckets(b, &join(path, "negative")))
            .transpose()?,
        flags: int_as(o, "flags", "flags", path)?,
        min: double(o, "min", "min", path)?,
        max: double(o, "max", "max", path)?,
        zero_threshold: double(o, "zeroThreshold", "zero_threshold", path)?.unwrap_or(0.0),
    })
}

fn summary_point(v: &Json, path: &str) -> Result<SummaryDataPoint> {
    let o = object(v, path)?;
    Ok(SummaryDataPoint {
        attributes: list(o, "attributes", "attributes", path, key_value)?,
        start_time_unix_nano: int_as(o, "startTimeUnixNano", "start_time_unix_nano", path)?,
        time_unix_nano: int_as(o, "timeUnixNano", "time_unix_nano", path)?,
        count: int_as(o, "count", "count", path)?,
        sum: double(o, "sum", "sum", path)?.unwrap_or(0.0),
        quantile_values: list(o, "quantileValues", "quantile_values", path, |v, p| {
            let q = object(v, p)?;
            Ok(ValueAtQuantile {
                quantile: double(q, "quantile", "quantile", p)?.unwrap_or(0.0),
                value: double(q, "value", "value", p)?.unwrap_or(0.0),
            })
        })?,
        flags: int_as(o, "flags", "flags", path)?,
    })
}

fn key_value(v: &Json, path: &str) -> Result<KeyValue> {
    let o = object(v, path)?;
    Ok(KeyValue {
        key: string(o, "key", "key", path)?,
        value: field(o, "value", "value").map(|v| any_value(v, &join(path, "value"))).transpose()?,
    })
}

fn any_value(v: &Json, path: &str) -> Result<AnyValue> {
    let o = object(v, path)?;
    let value = if let Some(s) = field(o, "stringValue", "string_value") {
        Some(Value::String(
            s.as_str()
                .ok_or_else(|| shape(&join(path, "stringValue"), "expected a string"))?
                .to_owned(),
        ))
    } else if let Some(b) = field(o, "boolValue", "bool_value") {
        Some(Value::Bool(
            b.as_bool().ok_or_else(|| shape(&join(path, "boolValue"), "expected a boolean"))?,
        ))
    } else if field(o, "intValue", "int_value").is_some() {
        Some(Value::Int(int_as(o, "intValue", "int_value", path)?))
    } else if let Some(d) = field(o, "doubleValue", "double_value") {
        let bad = || shape(&join(path, "doubleValue"), "expected a number");
        Some(Value::Double(match d {
            Json::Number(n) => n.as_f64().ok_or_else(bad)?,
            Json::String(s) => s.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        }))
    } else if let Some(a) = field(o, "arrayValue", "array_value") {
        let here = join(path, "arrayValue");
        Some(Value::Array(ArrayValue {
            values: list(object(a, &here)?, "values", "values", &here, any_value)?,
        }))
    } else if let Some(l) = field(o, "kvlistValue", "kvlist_value") {
        let here = join(path, "kvlistValue");
        Some(Value::KvList(KeyValueList {
            values: list(object(l, &here)?, "values", "values", &here, key_value)?,
        }))
    } else if let Some(b) = field(o, "bytesValue", "bytes_value") {
        let bad = || shape(&join(path, "bytesValue"), "expected base64");
        let text = b.as_str().ok_or_else(bad)?;
        Some(Value::Bytes(
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| bad())?,
        ))
    } else {
        None
    };
    Ok(AnyValue { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_reads_into_the_messages() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
          "scopeLogs":[{"scope":{"name":"my.library","version":"1.0.0"},
          "logRecords":[{"timeUnixNano":"1544712660300000000","observedTimeUnixNano":1544712660300000000,
            "severityNumber":10,"severityText":"Information","traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","body":{"stringValue":"Example log record"},
            "attributes":[{"key":"int.attribute","value":{"intValue":"10"}},
              {"key":"double.attribute","value":{"doubleValue":637.704}},
              {"key":"array.attribute","value":{"arrayValue":{"values":[{"stringValue":"many"},{"boolValue":true}]}}},
              {"key":"map.attribute","value":{"kvlistValue":{"values":[{"key":"some.map.key","value":{"stringValue":"v"}}]}}},
              {"key":"bytes","value":{"bytesValue":"AQI="}}]}]}]}]}"#;
        let req = logs_request(body).unwrap();
        let r = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(r.time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(r.observed_time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(r.severity_number, 10);
        assert_eq!(r.trace_id.len(), 16);
        assert_eq!(r.span_id, vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]);
        assert_eq!(r.attributes[0].value.as_ref().unwrap().value, Some(Value::Int(10)));
        assert_eq!(r.attributes[4].value.as_ref().unwrap().value, Some(Value::Bytes(vec![1, 2])));
        assert_eq!(req.resource_logs[0].scope_logs[0].scope.as_ref().unwrap().name, "my.library");
    }

    #[test]
    fn a_metrics_request_reads_into_the_messages() {
        let body = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
          "scopeMetrics":[{"scope":{"name":"m"},"metrics":[
            {"name":"hits","unit":"1","sum":{"aggregationTemporality":2,"isMonotonic":true,
              "dataPoints":[{"asInt":"7","timeUnixNano":"1780000000000000000","attributes":[{"key":"route","value":{"stringValue":"/a"}}]}]}},
            {"name":"temp","gauge":{"dataPoints":[{"asDouble":21.5}]}},
            {"name":"lat","histogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA",
              "dataPoints":[{"count":"3","sum":4.5,"bucketCounts":["1",2],"explicitBounds":[1.0]}]}},
            {"name":"exp","exponentialHistogram":{"aggregationTemporality":2,
              "dataPoints":[{"count":"2","scale":1,"zeroCount":"1","positive":{"offset":-1,"bucketCounts":["1"]}}]}},
            {"name":"rpc","summary":{"dataPoints":[{"count":"2","sum":"NaN","quantileValues":[{"quantile":0.5,"value":1.5}]}]}}]}]}]}"#;
        let req = metrics_request(body).unwrap();
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(m.len(), 5);
        let Some(MetricData::Sum(s)) = &m[0].data else {
            panic!("{:?}", m[0])
        };
        assert!(s.is_monotonic);
        assert_eq!(s.data_points[0].value, Some(NumberValue::AsInt(7)));
        assert_eq!(s.data_points[0].time_unix_nano, 1_780_000_000_000_000_000);
        let Some(MetricData::Histogram(h)) = &m[2].data else {
            panic!("{:?}", m[2])
        };
        assert_eq!((h.aggregation_temporality, h.data_points[0].bucket_counts.clone()), (1, vec![1, 2]));
        let Some(MetricData::ExponentialHistogram(e)) = &m[3].data else {
            panic!("{:?}", m[3])
        };
        assert_eq!(e.data_points[0].positive.as_ref().unwrap().offset, -1);
        let Some(MetricData::Summary(s)) = &m[4].data else {
            panic!("{:?}", m[4])
        };
        assert!(s.data_points[0].sum.is_nan());
        let err =
            metrics_request(br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","sum":{"dataPoints":[{"asInt":"z"}]}}]}]}]}"#)
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].asInt: expected an integer"
        );
    }

    #[test]
    fn a_wrong_shape_is_named_by_its_path() {
        let err = logs_request(br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz1"}]}]}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resourceLogs[0].scopeLogs[0].logRecords[0].traceId: expected hex digits"
        );
        assert!(matches!(logs_request(b"{not json"), Err(JsonError::Syntax(_))));
        assert!(logs_request(br#"{"resourceLogs":{}}"#).is_err());
        assert!(logs_request(br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"x"}]}]}]}"#).is_err());
    }
}
