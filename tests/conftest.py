"""Shared fixtures: synthetic Kvasir-SEG data on disk, as a folder and as a zip, a local HTTP server, and a
stand-in for a full disk that works without root's help."""

import functools
import http.server
import os
import resource
import signal
import subprocess
import sys
import threading

import pytest

from dataset.synthetic import make_kvasir_folder, zip_folder
from tests.scripts import REPO

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def kvasir_dir(tmp_path):
    """A data folder holding an extracted synthetic Kvasir-SEG."""
    make_kvasir_folder(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def kvasir_zip(tmp_path_factory):
    """A synthetic kvasir-seg.zip, built once per test session."""
    workspace = tmp_path_factory.mktemp("zip")
    root = make_kvasir_folder(workspace / "source")
    return zip_folder(root, workspace / "kvasir-seg.zip")


@pytest.fixture
def http_server(tmp_path):
    """Serve files from a folder on 127.0.0.1, plus misbehaving routes; yields (folder, base URL, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    requests_seen = []
    handler = functools.partial(TestHandler, requests_seen, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", requests_seen
    server.shutdown()
    server.server_close()


class TestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, and: /drops-mid-file (closes after 1 kB of a promised 100 kB), /server-error (HTTP 500),
    /html-page.zip (an HTML page where a zip was expected). Logs request paths instead of printing them."""

    def __init__(self, requests_seen, *args, **kwargs):
        self.requests_seen = requests_seen
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requests_seen.append(self.path)
        if self.path == "/drops-mid-file":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK" + b"x" * 1000)
            self.close_connection = True
        elif self.path == "/server-error":
            self.send_error(500)
        elif self.path == "/html-page.zip":
            body = b"<!DOCTYPE html><html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def full_disk():
    """`full_disk(code, limit)` runs Python `code` in a subprocess (from the repository root) whose files cannot
    grow past `limit` bytes (RLIMIT_FSIZE, with SIGXFSZ ignored so a write past it fails with EFBIG, as a write
    to a full disk fails with ENOSPC); returns the completed process."""

    def limit_file_size(limit: int):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    def run(code: str, limit: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=functools.partial(limit_file_size, limit),
        )

    return run
