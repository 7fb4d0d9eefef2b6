//! OTLP/JSON requests (the protobuf JSON mapping as the OTLP spec narrows
//! it: lowerCamelCase names, trace and span ids in hex, 64-bit integers as
//! strings or numbers, enums as integers) read into the protobuf messages.
//! The proto field names (`resource_logs`) are accepted too.

use base64::Engine as _;
use serde_json::{Map, Value as Json};

use super::proto::{
    AnyValue, ArrayValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, KeyValueList, LogRecord, Resource, ResourceLogs,
    ScopeLogs, Value,
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
