"""Downloads through a local HTTP server: success, and failures that leave nothing a later run would trust."""

import re
import shutil
import socket

import pytest

from dataset import download
from dataset.archive import require_zip
from dataset.download import DownloadError, download_file


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
