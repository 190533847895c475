#!/usr/bin/env python3
"""A small OTLP/HTTP receiver for the end-to-end telemetry tests (tests/e2e/telemetry.rs).

    otlp_receiver.py --out FILE

Binds 127.0.0.1 on a port the kernel chooses and prints `port N` as its first stdout line.
Requests are decoded with the official protobuf classes (PyPI `opentelemetry-proto`, in the
test bed's `otel` venv, $FLOW_TEST_OTEL_PYTHON) and appended to FILE as JSON lines, flushed
after each request. Routes (`Content-Type: application/x-protobuf`, `Content-Encoding: gzip`
optional):

  POST /v1/traces   a line per span: {"signal": "span", service, resource, scope, trace_id,
                    span_id, parent_span_id ("" for a root), name, kind, start_ns, end_ns,
                    attributes, status_code, status_message, events: [{name, attributes}]}
  POST /v1/metrics  a line per data point: {"signal": "metric", service, name, unit, type (sum,
                    gauge, histogram, exponential_histogram, summary), monotonic (sums only),
                    attributes, value, count, sum, bucket_counts, explicit_bounds}, null where
                    a field does not apply
  POST /v1/logs     parsed and counted on stderr, nothing written

Answers 200 with the empty Export*ServiceResponse, 400 (and a stderr line) for a body that does
not parse, 404 for any other path. Stops cleanly on SIGTERM or SIGINT.
"""

import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def any_value(v):
    """An AnyValue as the Python value it holds (bytes as hex, unset as None)."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def spans(req):
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {"signal": "span", "service": resource.get("service.name"),
                       "resource": resource, "scope": ss.scope.name,
                       "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                       "parent_span_id": s.parent_span_id.hex(), "name": s.name,
                       "kind": s.kind, "start_ns": s.start_time_unix_nano,
                       "end_ns": s.end_time_unix_nano, "attributes": attributes(s.attributes),
                       "status_code": s.status.code, "status_message": s.status.message,
                       "events": [{"name": e.name, "attributes": attributes(e.attributes)}
                                  for e in s.events]}


def data_point(kind, p, monotonic):
    """One data point's fields: a sum's or gauge's value, or the others' count and sum."""
    out = {"type": kind, "monotonic": monotonic, "attributes": attributes(p.attributes),
           "value": None, "count": None, "sum": None,
           "bucket_counts": None, "explicit_bounds": None}
    if kind in ("sum", "gauge"):
        which = p.WhichOneof("value")  # as_int or as_double
        out["value"] = getattr(p, which) if which else None
        return out
    out["count"] = p.count
    if kind == "summary" or p.HasField("sum"):  # optional in histograms, not in a summary
        out["sum"] = p.sum
    if kind == "histogram":
        out["bucket_counts"] = list(p.bucket_counts)
        out["explicit_bounds"] = list(p.explicit_bounds)
    return out


def metric_points(req):
    for rm in req.resource_metrics:
        service = attributes(rm.resource.attributes).get("service.name")
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(m, kind)
                monotonic = data.is_monotonic if kind == "sum" else None
                for p in data.data_points:
                    yield {"signal": "metric", "service": service, "name": m.name,
                           "unit": m.unit, **data_point(kind, p, monotonic)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect; every answer has a length
    out = None  # the output file, set in main
    lock = threading.Lock()  # keeps one request's lines together in FILE

    # path -> (request class, response class, the JSON lines for a request or None)
    routes = {
        "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                       trace_service_pb2.ExportTraceServiceResponse, spans),
        "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                        metrics_service_pb2.ExportMetricsServiceResponse, metric_points),
        "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest,
                     logs_service_pb2.ExportLogsServiceResponse, None),
    }

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            return self.answer(404, b"not found\n", "text/plain")
        request_class, response_class, lines = route
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            req = request_class()
            req.ParseFromString(body)
        except Exception as e:  # gzip and protobuf errors alike
            msg = f"{self.path}: bad {request_class.__name__}: {e}"
            print(f"otlp_receiver: {msg}", file=sys.stderr, flush=True)
            return self.answer(400, (msg + "\n").encode(), "text/plain")
        if lines is None:
            n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
            print(f"otlp_receiver: {n} log records", file=sys.stderr, flush=True)
        else:
            text = "".join(json.dumps(x) + "\n" for x in lines(req))
            with self.lock:
                self.out.write(text)
                self.out.flush()
        self.answer(200, response_class().SerializeToString(), "application/x-protobuf")

    def answer(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no line per request; do_POST reports the errors


def main():
    parser = argparse.ArgumentParser(description="A small OTLP/HTTP receiver for tests.")
    parser.add_argument("--out", required=True, help="JSON lines file, appended to")
    args = parser.parse_args()
    # SIGTERM unwinds serve_forever as Ctrl-C does, so the server and FILE are closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(args.out, "a", encoding="utf-8") as out:
        Handler.out = out
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print(f"port {server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
