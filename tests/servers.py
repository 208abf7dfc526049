"""Test servers on 127.0.0.1, started and stopped by the tests: an HTTP file server with Range
support that counts what it serves and can fail on purpose, and moto's S3 server."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    """Serves ``files`` (URL path -> local file) over HTTP/1.0 (one request per connection,
    so a stopped server refuses every later request), answering ``Range: bytes=a-b`` with 206.

    Counters: ``requests`` (method, path, range header) and ``bytes_served`` (body bytes sent).
    ``drop_next``: the next that many GET requests are answered by closing the connection
    after sending half the body (the client sees a connection lost mid-read).
    ``status_next``: the next GET requests answered with these statuses instead, in order.
    ``port``: 0 picks a free one; a stopped server's port starts it again at the same URLs.
    """

    def __init__(self, files: dict[str, Path], port: int = 0) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_served = 0
        self.drop_next = 0
        self.status_next: list[int] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                owner._serve(self, body=False)

            def do_GET(self) -> None:
                owner._serve(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_served = 0

    def stop(self) -> None:
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self.running = False

    def _serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        header = handler.headers.get("Range")
        with self._lock:
            self.requests.append((handler.command, handler.path, header))
            status = self.status_next.pop(0) if body and self.status_next else None
            drop = body and self.drop_next > 0
            if drop:
                self.drop_next -= 1
        if status is not None:
            handler.send_error(status)
            return
        file = self.files.get(path)
        if file is None:
            handler.send_error(404)
            return
        size = os.path.getsize(file)
        start, end = 0, size - 1
        match = _RANGE.match(header or "")
        if match:
            first, last = match.groups()
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:  # a suffix range: the last N bytes
                start = max(0, size - int(last))
            if start >= size:
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{size}")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            handler.send_response(200)
        length = end - start + 1
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(length))
        handler.send_header("ETag", f'"{size}-{int(os.path.getmtime(file))}"')
        handler.end_headers()
        if not body:
            return
        with open(file, "rb") as f:
            f.seek(start)
            data = f.read(length)
        if drop:
            data = data[: len(data) // 2]
        with self._lock:  # counted before sending: the client may go on as soon as it has them
            self.bytes_served += len(data)
        handler.wfile.write(data)
        handler.wfile.flush()
        if drop:
            handler.close_connection = True
            handler.connection.shutdown(2)


@contextmanager
def range_server(files: dict[str, Path]) -> Iterator[RangeServer]:
    server = RangeServer(files)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, reached through the environment only (as a user's real
    endpoint would be): yields its endpoint URL. Needs moto[server], boto3 and s3fs."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FSSPEC_S3_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would keep an old endpoint
        yield endpoint
    finally:
        server.stop()
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
