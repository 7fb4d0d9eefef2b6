#!/usr/bin/env python3
"""A Loki push receiver for sluice's integration tests.

It speaks the two wire formats of Loki's push API:

* ``application/x-protobuf`` (the default when no Content-Type is sent):
  a ``logproto.PushRequest`` compressed as a raw snappy block (not the framed
  snappy stream format), decoded here by a small, strict protobuf decoder;
* ``application/json``, optionally with ``Content-Encoding: gzip``.

Accepted entries are kept in memory per (tenant, stream) and returned by
``GET /control/received``. ``POST /control/mode`` makes the next pushes fail
the way a real Loki does (429, 500, 400 with Loki's own messages), and the
``strict-order`` mode applies Loki's per-stream ordering rule.

Usage: ``loki_receiver.py --port N`` (0 picks a free port). Listens on
127.0.0.1 only and prints ``ready port=N`` on stdout once it accepts
connections.
"""

import argparse
import datetime
import gzip
import json
import sys
import threading
import traceback
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cramjam

# A push larger than this is refused: tests never send it, and a runaway
# client must not exhaust the test machine's memory.
MAX_BODY_BYTES = 64 * 1024 * 1024

# Loki's tenant when auth is disabled and no X-Scope-OrgID is sent.
DEFAULT_TENANT = "fake"

FAULT_MODES = ("429", "500", "400-out-of-order", "400-too-old", "400-partial", "400-bare-out-of-order")
BASE_MODES = ("ok", "204", "strict-order")


class BadRequest(Exception):
    """The push cannot be decoded; answered with 400 and this message."""


# --------------------------------------------------------------------------
# Protobuf wire format
# --------------------------------------------------------------------------

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


def read_varint(buf, pos):
    """Returns (value, new_pos); a varint is at most 10 bytes."""
    result = 0
    shift = 0
    for i in range(10):
        if pos >= len(buf):
            raise BadRequest("protobuf: truncated varint")
        b = buf[pos]
        pos += 1
        if i == 9 and b > 1:
            raise BadRequest("protobuf: varint overflows 64 bits")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise BadRequest("protobuf: varint longer than 10 bytes")


def iter_fields(buf):
    """Yields (field_number, wire_type, value) for each field of a message.

    value is an int for varints, bytes for length-delimited fields and
    fixed-width fields. Groups (wire types 3 and 4) and anything else are
    rejected: Loki's messages never use them.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise BadRequest("protobuf: field number 0")
        if wire == WIRE_VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == WIRE_I64:
            if pos + 8 > end:
                raise BadRequest("protobuf: truncated fixed64")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == WIRE_LEN:
            length, pos = read_varint(buf, pos)
            if length > end - pos:
                raise BadRequest("protobuf: length-delimited field runs past the end")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == WIRE_I32:
            if pos + 4 > end:
                raise BadRequest("protobuf: truncated fixed32")
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise BadRequest(f"protobuf: unsupported wire type {wire} for field {field}")
        yield field, wire, value


def expect_wire(field, wire, want, message):
    if wire != want:
        raise BadRequest(f"protobuf: {message} field {field} has wire type {wire}, expected {want}")


def to_int64(v):
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


def to_int32(v):
    # int32 negatives are sign-extended to 10-byte varints on the wire.
    v &= 0xFFFFFFFFFFFFFFFF
    v = v - (1 << 64) if v >= 1 << 63 else v
    if not -(1 << 31) <= v < (1 << 31):
        raise BadRequest("protobuf: int32 out of range")
    return v


def decode_utf8(b, what):
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"protobuf: {what} is not valid UTF-8: {e}") from None


def decode_timestamp(buf):
    seconds, nanos = 0, 0
    for field, wire, value in iter_fields(buf):
        if field == 1:
            expect_wire(field, wire, WIRE_VARINT, "Timestamp")
            seconds = to_int64(value)
        elif field == 2:
            expect_wire(field, wire, WIRE_VARINT, "Timestamp")
            nanos = to_int32(value)
    if not 0 <= nanos < 1_000_000_000:
        raise BadRequest(f"protobuf: Timestamp.nanos {nanos} out of range")
    return seconds * 1_000_000_000 + nanos


def decode_label_pair(buf):
    name, value_ = "", ""
    for field, wire, value in iter_fields(buf):
        if field == 1:
            expect_wire(field, wire, WIRE_LEN, "LabelPairAdapter")
            name = decode_utf8(value, "structured metadata name")
        elif field == 2:
            expect_wire(field, wire, WIRE_LEN, "LabelPairAdapter")
            value_ = decode_utf8(value, "structured metadata value")
    return name, value_


def decode_entry(buf):
    ts_ns, line, metadata = None, "", {}
    for field, wire, value in iter_fields(buf):
        if field == 1:
            expect_wire(field, wire, WIRE_LEN, "EntryAdapter")
            ts_ns = decode_timestamp(value)
        elif field == 2:
            expect_wire(field, wire, WIRE_LEN, "EntryAdapter")
            line = decode_utf8(value, "line")
        elif field == 3:
            expect_wire(field, wire, WIRE_LEN, "EntryAdapter")
            name, v = decode_label_pair(value)
            metadata[name] = v
    if ts_ns is None:
        # Loki's zero time; a client that omits it has a bug worth seeing.
        raise BadRequest("protobuf: entry without timestamp")
    return {"ts_ns": ts_ns, "line": line, "structured_metadata": metadata}


def decode_stream(buf):
    labels, entries = None, []
    for field, wire, value in iter_fields(buf):
        if field == 1:
            expect_wire(field, wire, WIRE_LEN, "StreamAdapter")
            labels = decode_utf8(value, "labels")
        elif field == 2:
            expect_wire(field, wire, WIRE_LEN, "StreamAdapter")
            entries.append(decode_entry(value))
        elif field == 3:
            expect_wire(field, wire, WIRE_VARINT, "StreamAdapter")  # hash, ignored
    if labels is None:
        raise BadRequest("protobuf: stream without labels")
    return {"labels": parse_labels(labels), "entries": entries}


def decode_push_request(buf):
    streams = []
    for field, wire, value in iter_fields(buf):
        if field == 1:
            expect_wire(field, wire, WIRE_LEN, "PushRequest")
            streams.append(decode_stream(value))
    return streams


# --------------------------------------------------------------------------
# LogQL stream selector text: {name="value", ...}
# --------------------------------------------------------------------------

SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}


def parse_labels(text):
    """Parses Loki's label text into a dict; values are Go-quoted strings."""
    s = text.strip()
    pos = 0

    def fail(msg):
        raise BadRequest(f"invalid labels {text!r}: {msg} at offset {pos}")

    def skip_ws():
        nonlocal pos
        while pos < len(s) and s[pos] in " \t\r\n":
            pos += 1

    if not s.startswith("{"):
        fail("expected '{'")
    pos = 1
    labels = {}
    skip_ws()
    if pos < len(s) and s[pos] == "}":
        pos += 1
    else:
        while True:
            skip_ws()
            start = pos
            while pos < len(s) and (s[pos] == "_" or s[pos].isascii() and s[pos].isalnum()):
                pos += 1
            name = s[start:pos]
            if not name or name[0].isdigit():
                fail("expected a label name")
            skip_ws()
            if pos >= len(s) or s[pos] != "=" or s[pos : pos + 2] == "=~":
                fail("expected '='")
            pos += 1
            skip_ws()
            value, pos = parse_go_string(s, pos, fail)
            if name in labels:
                fail(f"duplicate label name {name!r}")
            labels[name] = value
            skip_ws()
            if pos < len(s) and s[pos] == ",":
                pos += 1
                continue
            if pos < len(s) and s[pos] == "}":
                pos += 1
                break
            fail("expected ',' or '}'")
    if pos != len(s):
        fail("trailing characters")
    if not labels:
        # Loki's own message for an empty stream selector.
        raise BadRequest("error at least one label pair is required per stream")
    return labels


def parse_go_string(s, pos, fail):
    if pos >= len(s) or s[pos] not in "\"`":
        fail("expected a quoted value")
    quote = s[pos]
    pos += 1
    if quote == "`":
        end = s.find("`", pos)
        if end < 0:
            fail("unterminated raw string")
        return s[pos:end], end + 1
    out = []
    while True:
        if pos >= len(s):
            fail("unterminated string")
        c = s[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c == "\n":
            fail("newline in string")
        if c != "\\":
            out.append(c)
            pos += 1
            continue
        pos += 1
        if pos >= len(s):
            fail("unterminated escape")
        e = s[pos]
        if e in SIMPLE_ESCAPES:
            out.append(SIMPLE_ESCAPES[e])
            pos += 1
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = s[pos + 1 : pos + 1 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                fail(f"bad \\{e} escape")
            out.append(chr(int(digits, 16)))
            pos += 1 + width
        elif e in "01234567":
            digits = s[pos : pos + 3]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                fail("bad octal escape")
            out.append(chr(int(digits, 8)))
            pos += 3
        else:
            fail(f"unknown escape \\{e}")


def format_labels(labels):
    """Renders labels the way Loki prints a stream in error messages."""
    inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items()))
    return "{" + inner + "}"


# --------------------------------------------------------------------------
# JSON push format
# --------------------------------------------------------------------------


def decode_json_push(body):
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list):
        raise BadRequest('JSON: expected an object with a "streams" array')
    streams = []
    for st in doc["streams"]:
        if not isinstance(st, dict):
            raise BadRequest("JSON: a stream must be an object")
        labels = st.get("stream")
        if isinstance(labels, str):
            labels = parse_labels(labels)
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest('JSON: "stream" must be an object of string labels')
        if not labels:
            raise BadRequest("error at least one label pair is required per stream")
        values = st.get("values")
        if not isinstance(values, list):
            raise BadRequest('JSON: "values" must be an array')
        entries = []
        for v in values:
            if not isinstance(v, list) or len(v) not in (2, 3):
                raise BadRequest("JSON: each value must be [ts, line] or [ts, line, metadata]")
            ts, line = v[0], v[1]
            if not isinstance(ts, str) or not ts.isdigit():
                raise BadRequest(f"JSON: timestamp {ts!r} is not a string of unix nanoseconds")
            if not isinstance(line, str):
                raise BadRequest("JSON: line must be a string")
            metadata = v[2] if len(v) == 3 else {}
            if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(x, str) for k, x in metadata.items()
            ):
                raise BadRequest("JSON: structured metadata must be an object of strings")
            entries.append({"ts_ns": int(ts), "line": line, "structured_metadata": metadata})
        streams.append({"labels": labels, "entries": entries})
    return streams


# --------------------------------------------------------------------------
# Loki's timestamps in messages
# --------------------------------------------------------------------------


def go_time_string(ts_ns):
    """Go's time.Time.String() in UTC: 2024-01-02 03:04:05.123456789 +0000 UTC."""
    secs, nanos = divmod(ts_ns, 1_000_000_000)
    dt = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    return dt.strftime("%Y-%m-%d %H:%M:%S") + frac + " +0000 UTC"


def rfc3339(ts_ns):
    secs = ts_ns // 1_000_000_000
    return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


class State:
    """Everything the receiver accepted, and how it answers the next pushes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.streams = {}  # (tenant, labels tuple) -> stream record, insertion-ordered
        self.newest = {}  # (tenant, labels tuple) -> (ts_ns, line) of newest accepted entry
        self.stats = {
            "pushes": 0,
            "by_status": {},
            "by_content_type": {},
            "accepted_entries": 0,
            "rejected_entries": 0,
        }
        self.strict_order = False
        self.order_window_ns = 0
        self.fault = None  # one of FAULT_MODES, or None
        self.fault_remaining = None  # pushes left in the fault mode; None: until reset

    def set_mode(self, mode, count, window_ns):
        if mode in ("ok", "204"):
            self.fault, self.fault_remaining = None, None
            self.strict_order = False
        elif mode == "strict-order":
            self.fault, self.fault_remaining = None, None
            self.strict_order = True
            self.order_window_ns = window_ns
        else:
            self.fault, self.fault_remaining = mode, count

    def take_fault(self):
        """The fault mode for this push, counting it down."""
        fault = self.fault
        if fault is not None and self.fault_remaining is not None:
            self.fault_remaining -= 1
            if self.fault_remaining <= 0:
                self.fault, self.fault_remaining = None, None
        return fault

    def record(self, tenant, labels, entry):
        key = (tenant, tuple(sorted(labels.items())))
        rec = self.streams.get(key)
        if rec is None:
            rec = {"tenant": tenant, "labels": dict(labels), "entries": []}
            self.streams[key] = rec
        rec["entries"].append(entry)
        newest = self.newest.get(key)
        if newest is None or entry["ts_ns"] >= newest[0]:
            self.newest[key] = (entry["ts_ns"], entry["line"])
        self.stats["accepted_entries"] += 1

    def order_check(self, tenant, labels, entry):
        """None if the entry may be stored; "dup" if Loki drops it silently;
        else Loki's reason for rejecting it."""
        newest = self.newest.get((tenant, tuple(sorted(labels.items()))))
        if newest is None:
            return None
        newest_ts, newest_line = newest
        ts = entry["ts_ns"]
        if ts == newest_ts and entry["line"] == newest_line:
            return "dup"
        if self.order_window_ns == 0:
            if ts < newest_ts:
                return "entry out of order"
            return None
        oldest_ok = newest_ts - self.order_window_ns
        if ts < oldest_ok:
            return (
                f"entry too far behind, entry timestamp is: {rfc3339(ts)}, "
                f"oldest acceptable timestamp is: {rfc3339(oldest_ok)}"
            )
        return None


STATE = State()


def stream_rejection(tenant, labels, failed, total):
    """Loki's ingester message for a stream with rejected entries."""
    lines = [f"entry with timestamp {go_time_string(e['ts_ns'])} ignored, reason: '{reason}',\n" for e, reason in failed]
    lines.append(
        f"user '{tenant}', total ignored: {len(failed)} out of {total} for stream: {format_labels(labels)}"
    )
    return "".join(lines)


def apply_push(tenant, streams):
    """Stores what Loki would store; returns (status, body). Caller holds the lock."""
    fault = STATE.take_fault()
    n_entries = sum(len(s["entries"]) for s in streams)
    if fault == "429":
        size = sum(len(e["line"]) for s in streams for e in s["entries"])
        STATE.stats["rejected_entries"] += n_entries
        return 429, (
            f"Ingestion rate limit exceeded for user {tenant} (limit: 4194304 bytes/sec) while attempting "
            f"to ingest '{n_entries}' lines totaling '{size}' bytes, reduce log volume or contact your Loki "
            "administrator to see if the limit can be increased"
        )
    if fault == "500":
        STATE.stats["rejected_entries"] += n_entries
        return 500, "rpc error: code = Unavailable desc = at least 2 live replicas required, could only find 0"
    if fault == "400-too-old":
        # The distributor's validation: reported for the first offending entry.
        STATE.stats["rejected_entries"] += n_entries
        for s in streams:
            for e in s["entries"]:
                ts = e["ts_ns"]
                return 400, (
                    f"entry for stream '{format_labels(s['labels'])}' has timestamp too old: "
                    f"{rfc3339(ts)}, oldest acceptable timestamp is: {rfc3339(ts + 1_000_000_000)}"
                )
        return 400, "entry too old"
    if fault == "400-bare-out-of-order":
        # A whole push refused by a Loki (or a gateway in front of it) that
        # says only why, not how many: nothing is stored.
        STATE.stats["rejected_entries"] += n_entries
        return 400, "entry out of order"

    errors = []
    for s in streams:
        labels, entries = s["labels"], s["entries"]
        failed = []
        for i, e in enumerate(entries):
            if fault == "400-out-of-order":
                reason = "entry out of order"
            elif fault == "400-partial":
                # Deterministic: every second entry of each stream is refused.
                reason = "entry out of order" if i % 2 == 1 else None
            elif STATE.strict_order:
                reason = STATE.order_check(tenant, labels, e)
                if reason == "dup":
                    continue
            else:
                reason = None
            if reason is None:
                STATE.record(tenant, labels, e)
            else:
                failed.append((e, reason))
        if failed:
            STATE.stats["rejected_entries"] += len(failed)
            errors.append(stream_rejection(tenant, labels, failed, len(entries)))
    if errors:
        return 400, "\n".join(errors)
    return 204, ""


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sluice-test-loki/1"

    def log_message(self, fmt, *args):  # stderr stays quiet unless debugging
        if self.server.verbose:
            super().log_message(fmt, *args)

    def reply(self, status, body=b"", content_type="text/plain; charset=utf-8"):
        if isinstance(body, str):
            body = body.encode("utf-8")
        if status == 204:
            body = b""
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def reply_json(self, status, obj):
        self.reply(status, json.dumps(obj), "application/json")

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise BadRequest("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        return self.rfile.read(length)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/ready":
            self.reply(200, "ready")
        elif path == "/control/received":
            with STATE.lock:
                out = json.loads(json.dumps(list(STATE.streams.values())))
            self.reply_json(200, out)
        elif path == "/control/stats":
            with STATE.lock:
                out = json.loads(json.dumps(STATE.stats))
                out["mode"] = STATE.fault or ("strict-order" if STATE.strict_order else "ok")
                out["mode_remaining"] = STATE.fault_remaining
            self.reply_json(200, out)
        else:
            self.reply(404, "not found")

    def do_POST(self):
        path = self.path.split("?")[0]
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.reply(400, str(e))
            return
        if path == "/loki/api/v1/push":
            try:
                self.handle_push(body)
            except Exception:  # a receiver bug: say so instead of dropping the connection
                traceback.print_exc(file=sys.stderr)
                self.close_connection = True
                self.reply(500, "loki_receiver.py internal error:\n" + traceback.format_exc())
        elif path == "/control/mode":
            self.handle_mode(body)
        elif path == "/control/reset":
            with STATE.lock:
                STATE.reset()
            self.reply(204)
        else:
            self.reply(404, "not found")

    def handle_mode(self, body):
        try:
            doc = json.loads(body or b"{}")
            mode = doc.get("mode")
            count = doc.get("count")
            window_ns = doc.get("window_ns", 0)
            if mode not in FAULT_MODES + BASE_MODES:
                raise ValueError(f"unknown mode {mode!r}")
            if count is not None and (not isinstance(count, int) or count < 1):
                raise ValueError("count must be a positive integer or null")
            if not isinstance(window_ns, int) or window_ns < 0:
                raise ValueError("window_ns must be a non-negative integer")
        except (ValueError, AttributeError) as e:
            self.reply(400, f"bad mode request: {e}")
            return
        with STATE.lock:
            STATE.set_mode(mode, count, window_ns)
        self.reply(204)

    def handle_push(self, body):
        tenant = self.headers.get("X-Scope-OrgID") or DEFAULT_TENANT
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        status, text = 400, ""
        try:
            if encoding == "gzip":
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError, zlib.error) as e:
                    raise BadRequest(f"gzip: {e}") from None
            elif encoding == "deflate":
                try:
                    body = zlib.decompress(body)
                except zlib.error as e:
                    raise BadRequest(f"deflate: {e}") from None
            elif encoding not in ("", "identity"):
                raise BadRequest(f"Content-Encoding {encoding!r} not supported")
            if ctype == "application/json":
                streams = decode_json_push(body)
            elif ctype in ("", "application/x-protobuf"):
                try:
                    raw = bytes(cramjam.snappy.decompress_raw(body))
                except Exception as e:  # cramjam raises its own DecompressionError
                    raise BadRequest(f"snappy: {e}") from None
                streams = decode_push_request(raw)
            else:
                raise BadRequest(f"unsupported Content-Type {ctype!r}")
        except BadRequest as e:
            text = str(e)
            streams = None
        with STATE.lock:
            if streams is not None:
                status, text = apply_push(tenant, streams)
            STATE.stats["pushes"] += 1
            by = STATE.stats["by_status"]
            by[str(status)] = by.get(str(status), 0) + 1
            by = STATE.stats["by_content_type"]
            by[ctype] = by.get(ctype, 0) + 1
        self.reply(status, text)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    verbose = False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1; 0 picks a free one")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    server.verbose = args.verbose
    print(f"ready port={server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
