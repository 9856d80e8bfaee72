"""Stream a file over HTTP(S) to disk: bytes progress bar, timeout, retries, and no partial file left behind."""

import os
import time
from pathlib import Path

import requests
from tqdm import tqdm
from urllib3.exceptions import NewConnectionError

from common.errors import UserError


class DownloadError(UserError):
    """The file could not be fetched; the message says why."""


def download_file(url: str, destination, *, timeout: float = 30.0, retries: int = 3, validate=None) -> Path:
    """Download `url` to `destination` through `<destination>.part`, renamed only once complete and valid.

    `validate(path)` may raise a UserError to reject what the server sent (it is then not retried).
    Time-outs, broken transfers and HTTP 5xx are retried `retries` times with back-off; HTTP 4xx and a host
    that cannot be reached at all (no network, unknown name, nothing listening) fail at once.
    On failure nothing is left at `destination` or at the `.part` path.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    problem = "no attempt made"
    for attempt in range(1, retries + 1):
        try:
            _stream_to(url, partial, timeout)
            if validate is not None:
                validate(partial)
            os.replace(partial, destination)
            return destination
        except requests.HTTPError as error:
            problem = f"the server answered HTTP {error.response.status_code}"
            if error.response.status_code < 500:
                break
        except requests.RequestException as error:
            problem = _describe(error)
            if _unreachable(error):
                break
        finally:
            partial.unlink(missing_ok=True)
        if attempt < retries:
            print(f"download attempt {attempt}/{retries} failed ({problem}); retrying")
            time.sleep(min(2**attempt, 10))
    raise DownloadError(f"could not download {url}: {problem}.")


def _stream_to(url: str, path: Path, timeout: float) -> None:
    """Write the response body of GET `url` to `path`, checking it against Content-Length when given."""
    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        expected = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with (
            open(path, "wb") as file,
            tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name.removesuffix(".part")
            ) as progress,
        ):
            for chunk in response.iter_content(chunk_size=1 << 20):
                file.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    if expected is not None and received != expected:
        raise requests.ConnectionError(f"connection closed after {received} of {expected} bytes")


def _unreachable(error: requests.RequestException) -> bool:
    """True when no connection could be opened at all (name resolution or connect failed): retrying rarely helps."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(error, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def _describe(error: requests.RequestException) -> str:
    """A short human reason for a requests failure."""
    if isinstance(error, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(error, requests.ConnectionError) and "NameResolution" in repr(error):
        return "the host name could not be resolved (no network?)"
    if isinstance(error, requests.exceptions.ChunkedEncodingError) or "closed after" in str(error):
        return "the connection broke off before the whole file arrived"
    if isinstance(error, requests.ConnectionError):
        return "could not connect (no network?)"
    return f"the request failed ({type(error).__name__})"
