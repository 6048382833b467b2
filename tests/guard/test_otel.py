"""OpenTelemetry: with OTEL_EXPORTER_OTLP_ENDPOINT set, a real server sends one "ember.request"
span per request to an OTLP/HTTP receiver (here a tiny HTTP server on loopback)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MODEL = "smollm2:135m"


class _Receiver(BaseHTTPRequestHandler):
    posts: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.posts.append((self.path, self.headers.get("content-type", ""), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    posts: list[tuple[str, str, bytes]] = []
    handler = type("Receiver", (_Receiver,), {"posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()


def _spans(posts: list[tuple[str, str, bytes]]) -> list:
    spans = []
    for _, _, body in posts:
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    return spans


@pytest.mark.slow
def test_a_request_becomes_a_span_at_the_otlp_endpoint(fresh_home: Path, server_factory, receiver) -> None:
    endpoint, posts = receiver
    handle = server_factory(fresh_home, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
    client = openai.OpenAI(base_url=handle.url("/v1"), api_key="unused")
    client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    deadline = time.monotonic() + 15
    while not posts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert posts, handle.log()
    path, content_type, body = posts[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf") and body
    spans = _spans(posts)
    assert [s.name for s in spans] == ["ember.request"]
    attributes = {a.key: a.value for a in spans[0].attributes}
    assert attributes["ember.endpoint"].string_value == "/v1/chat/completions"
    assert attributes["ember.model"].string_value == MODEL
    assert attributes["ember.provider"].string_value == "local"
    assert attributes["ember.tokens_out"].int_value > 0
    assert attributes["http.response.status_code"].int_value == 200
    assert spans[0].end_time_unix_nano > spans[0].start_time_unix_nano > 0
