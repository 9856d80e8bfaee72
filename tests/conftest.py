"""Shared fixtures: synthetic Kvasir-SEG data on disk, as a folder and as a zip, a local HTTP server, and
stand-ins for a read-only folder and a full disk that work without root's help (root ignores chmod)."""

import errno
import functools
import gzip
import http.server
import os
import resource
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch

from dataset.synthetic import make_kvasir_folder, zip_folder
from tests.scripts import REPO

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


FRESH_THREADS = torch.get_num_threads()  # what a new process computes with


@pytest.fixture(autouse=True)
def fresh_thread_count():
    """Every test starts on a fresh process's PyTorch thread count: a script run in this process (its THREADS, or
    evaluate.py's one CPU thread) sets it for the whole process, and sums over one thread and over two round
    differently, so a later in-process run would differ from a subprocess run in the last bits."""
    torch.set_num_threads(FRESH_THREADS)
    yield
    torch.set_num_threads(FRESH_THREADS)


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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", requests_seen
    server.shutdown()
    server.server_close()


class TestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, and: /drops-mid-file (closes after 1 kB of a promised 100 kB), /server-error (HTTP 500),
    /html-page.zip (an HTML page where a zip was expected), /stalls (sends 1 KiB of 1 MiB, then nothing for
    3 s), /gzip/NAME (the file NAME sent gzip-encoded), /cut-zip (the start of a zip, then closes, announcing no
    length), /redirect-loop (redirects to itself), /slow?seconds=S (128 KiB of 1 MiB, then the rest after S seconds).
    Logs request paths instead of printing them."""

    def __init__(self, requests_seen, *args, **kwargs):
        self.requests_seen = requests_seen
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requests_seen.append(self.path)
        route = urllib.parse.urlsplit(self.path)
        if self.path == "/drops-mid-file":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK" + b"x" * 1000)
            self.close_connection = True
        elif self.path == "/server-error":
            self.send_error(500)
        elif self.path == "/html-page.zip":
            self._send_body(b"<!DOCTYPE html><html><body>Please log in</body></html>", "Content-Type", "text/html")
        elif self.path == "/stalls":
            self._send_slowly(b"PK" + bytes(1022), b"", pause=3)
        elif self.path.startswith("/gzip/"):
            body = gzip.compress((Path(self.directory) / self.path.removeprefix("/gzip/")).read_bytes())
            self._send_body(body, "Content-Encoding", "gzip")
        elif self.path == "/cut-zip":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"PK\x03\x04" + b"x" * 1000)
            self.close_connection = True
        elif self.path == "/redirect-loop":
            self.send_response(302)
            self.send_header("Location", "/redirect-loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route.path == "/slow":
            seconds = float(urllib.parse.parse_qs(route.query)["seconds"][0])
            self._send_slowly(bytes(128 * 1024), bytes(896 * 1024), pause=seconds)
        else:
            super().do_GET()

    def _send_body(self, body: bytes, header: str, value: str) -> None:
        """HTTP 200 with `body`, its length and one more header."""
        self.send_response(200)
        self.send_header(header, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_slowly(self, first: bytes, rest: bytes, pause: float) -> None:
        """Announce 1 MiB, send `first`, wait `pause` seconds, then send `rest` (for a stall, nothing) and close;
        a client that gave up meanwhile ends it quietly."""
        self.send_response(200)
        self.send_header("Content-Length", str(2**20))
        self.end_headers()
        try:
            self.wfile.write(first)
            self.wfile.flush()
            threading.Event().wait(pause)  # not time.sleep, which tests replace to skip download back-off
            self.wfile.write(rest)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(folder)`: from now on, creating or opening for writing anything inside `folder` fails with EROFS
    in this process, and os.access says it is not writable, as on a read-only mount (which tests cannot make, and
    root ignores chmod). Reading still works."""
    frozen = []
    real_open, real_mkdir, real_access = os.open, os.mkdir, os.access

    def inside(path) -> bool:
        return any(Path(os.path.abspath(path)).is_relative_to(folder) for folder in frozen)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def guarded_access(path, mode, *args, **kwargs):
        return not (mode & os.W_OK and inside(path)) and real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    monkeypatch.setattr(os, "access", guarded_access)
    return lambda folder: frozen.append(Path(os.path.abspath(folder)))


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
