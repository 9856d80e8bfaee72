"""Downloads through a local HTTP server: success, and failures that leave nothing a later run would trust."""

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dataset import download
from dataset.archive import require_zip
from dataset.download import DownloadError, download_file
from tests.scripts import REPO


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)


def test_downloads_file_in_full(http_server, kvasir_zip, tmp_path):
    served, url, _ = http_server
    shutil.copy(kvasir_zip, served / "kvasir-seg.zip")
    target = tmp_path / "out" / "kvasir-seg.zip"
    download_file(f"{url}/kvasir-seg.zip", target, validate=require_zip)
    assert target.read_bytes() == kvasir_zip.read_bytes()
    assert not (tmp_path / "out" / "kvasir-seg.zip.part").exists()


@pytest.mark.parametrize(
    ("route", "message", "attempts"),
    [
        ("/missing.zip", "HTTP 404", 1),  # a client error is not retried
        ("/server-error", "HTTP 500", 3),  # a server error is
        ("/drops-mid-file", "broke off before the whole file", 3),
    ],
)
def test_failed_download_leaves_no_file(http_server, tmp_path, route, message, attempts):
    _, url, seen = http_server
    target = tmp_path / "kvasir-seg.zip"
    with pytest.raises(DownloadError, match=message):
        download_file(url + route, target, retries=3, validate=require_zip)
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]
    assert seen.count(route) == attempts


def test_html_instead_of_zip_is_refused(http_server, tmp_path):
    _, url, seen = http_server
    with pytest.raises(Exception, match="an HTML page"):
        download_file(f"{url}/html-page.zip", tmp_path / "kvasir-seg.zip", validate=require_zip)
    assert not (tmp_path / "kvasir-seg.zip").exists() and not (tmp_path / "kvasir-seg.zip.part").exists()
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:9/kvasir-seg.zip", "could not connect (no network?)"),  # nothing listening
        ("http://datasets.example.invalid/kvasir-seg.zip", "host name could not be resolved (no network?)"),
    ],
)
def test_unreachable_host_fails_at_once(tmp_path, monkeypatch, url, message):
    def no_dns(host, *args, **kwargs):
        if host.endswith(".invalid"):  # what a resolver answers without network, without asking one
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(download.time, "sleep", lambda seconds: pytest.fail("an unreachable host was retried"))
    with pytest.raises(DownloadError, match=re.escape(message)):
        download_file(url, tmp_path / "kvasir-seg.zip", retries=3, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_transfer_is_reported_as_a_stall_with_the_time_waited(http_server, tmp_path):
    _, url, seen = http_server
    with pytest.raises(DownloadError) as error:
        download_file(f"{url}/stalls", tmp_path / "kvasir-seg.zip", retries=2, timeout=0.5)
    assert str(error.value) == f"could not download {url}/stalls: the transfer stalled: nothing arrived for 0.5 s."
    assert seen.count("/stalls") == 2  # a stall may pass: retried
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]


def test_a_gzip_encoded_body_is_saved_decoded(http_server, kvasir_zip, tmp_path):
    served, url, _ = http_server
    shutil.copy(kvasir_zip, served / "kvasir-seg.zip")
    target = download_file(f"{url}/gzip/kvasir-seg.zip", tmp_path / "kvasir-seg.zip", validate=require_zip)
    assert target.read_bytes() == kvasir_zip.read_bytes()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ftp://127.0.0.1/kvasir-seg.zip", "only http:// and https:// addresses can be downloaded"),
        ("htp://127.0.0.1/kvasir-seg.zip", "only http:// and https:// addresses can be downloaded"),
        ("127.0.0.1/kvasir-seg.zip", "it is not a web address (it should start with https://)"),
        ("http://", "it is not a valid web address"),
        ("{url}/redirect-loop", "the server redirects in a loop (more than 30 redirects)"),
    ],
)
def test_a_wrong_address_or_redirect_loop_fails_at_once(http_server, tmp_path, monkeypatch, address, message):
    _, url, seen = http_server
    monkeypatch.setattr(
        download.time, "sleep", lambda seconds: pytest.fail("a request that cannot succeed was retried")
    )
    address = address.format(url=url)
    with pytest.raises(DownloadError) as error:
        download_file(address, tmp_path / "kvasir-seg.zip", retries=3)
    assert str(error.value) == f"could not download {address}: {message}."
    assert seen.count("/redirect-loop") in (0, 31)  # one request and 30 redirects, once


def test_the_part_file_grows_as_the_bytes_arrive(http_server, tmp_path):
    """Chunks of 64 KiB: with the first 128 KiB of 1 MiB sent, the .part file holds them while the rest waits."""
    _, url, _ = http_server
    part = tmp_path / "kvasir-seg.zip.part"
    downloading = threading.Thread(target=download_file, args=(f"{url}/slow?seconds=1", tmp_path / "kvasir-seg.zip"))
    downloading.start()
    sizes = set()
    while downloading.is_alive():
        with contextlib.suppress(FileNotFoundError):  # not started yet, or renamed at the end
            sizes.add(part.stat().st_size)
        downloading.join(0.01)
    assert 128 * 1024 in sizes
    assert (tmp_path / "kvasir-seg.zip").stat().st_size == 2**20


def test_sigterm_during_a_download_removes_the_part_file_and_exits_143(http_server, tmp_path):
    _, url, _ = http_server
    target, part = tmp_path / "kvasir-seg.zip", tmp_path / "kvasir-seg.zip.part"
    code = f"from dataset.download import download_file; download_file({url + '/slow?seconds=60'!r}, {str(target)!r})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
        threading.Event().wait(0.05)  # time.sleep is replaced by the no_backoff fixture
    assert part.exists(), "the download never started"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143
    assert "SIGTERM received: stopping, without keeping partial files" in stderr and "Traceback" not in stderr
    assert not part.exists() and not target.exists()
