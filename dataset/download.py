"""Stream a file over HTTP(S) to disk: bytes progress bar, timeout, retries, and no partial file left behind."""

import os
import time
from pathlib import Path

import requests
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from common.errors import UserError
from common.progress import progress_bar
from common.signals import sigterm_cleans_up

CHUNK_BYTES = 64 * 1024  # small enough that the .part file and the progress bar move as the bytes arrive
# a wrong address or a server that redirects in a loop: asking again gives the same answer
NOT_RETRIED = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.TooManyRedirects,
)


class DownloadError(UserError):
    """The file could not be fetched; the message says why."""


class IncompleteDownload(DownloadError):
    """Less than the whole file arrived (the transfer broke off or stalled): retried like a time-out."""


def download_file(url: str, destination, *, timeout: float = 30.0, retries: int = 3, validate=None) -> Path:
    """Download `url` to `destination` through `<destination>.part`, renamed only once complete and valid.

    `validate(path)` may raise a UserError to reject what the server sent (it is then not retried), or an
    IncompleteDownload when what arrived is cut short (it is then retried).
    Time-outs, stalled or broken transfers and HTTP 5xx are retried `retries` times with back-off; HTTP 4xx, a host
    that cannot be reached at all (no network, unknown name, nothing listening), an address that is not http(s)
    and a redirect loop fail at once. On failure, and on SIGTERM, nothing is left at `destination` or at the
    `.part` path.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    problem = "no attempt made"
    with sigterm_cleans_up():
        for attempt in range(1, retries + 1):
            try:
                _stream_to(url, partial, timeout)
                if validate is not None:
                    validate(partial)
                os.replace(partial, destination)
                return destination
            except IncompleteDownload as error:
                problem = str(error)
            except requests.HTTPError as error:
                problem = f"the server answered HTTP {error.response.status_code}"
                if error.response.status_code < 500:
                    break
            except requests.RequestException as error:
                problem = _describe(error, timeout)
                if isinstance(error, NOT_RETRIED) or _unreachable(error):
                    break
            finally:
                partial.unlink(missing_ok=True)
            if attempt < retries:
                print(f"download attempt {attempt}/{retries} failed ({problem}); retrying")
                time.sleep(min(2**attempt, 10))
    raise DownloadError(f"could not download {url}: {problem}.")


def _stream_to(url: str, path: Path, timeout: float) -> None:
    """Write the response body of GET `url` to `path`, checking the bytes that came over the wire against
    Content-Length when given (a gzip-encoded body is saved decoded, but its length counts the encoded bytes)."""
    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        expected = int(response.headers.get("Content-Length") or 0) or None
        with (
            open(path, "wb") as file,
            progress_bar(description=path.name.removesuffix(".part"), total=expected, unit="B") as bar,
        ):
            try:
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    file.write(chunk)
                    bar.update(response.raw.tell() - bar.n)
            except requests.exceptions.ChunkedEncodingError:
                raise IncompleteDownload("the connection broke off before the whole file arrived") from None
            except requests.ConnectionError as error:
                if not isinstance(error.args[0] if error.args else None, ReadTimeoutError):
                    raise
                raise IncompleteDownload(f"the transfer stalled: nothing arrived for {timeout:g} s") from None
        received = response.raw.tell()
    if expected is not None and received != expected:
        raise IncompleteDownload(
            f"the connection broke off before the whole file arrived ({received} of {expected} bytes)"
        )


def _unreachable(error: requests.RequestException) -> bool:
    """True when no connection could be opened at all (name resolution or connect failed): retrying rarely helps."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(error, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def _describe(error: requests.RequestException, timeout: float) -> str:
    """A short human reason for a requests failure."""
    if isinstance(error, requests.Timeout):
        return f"the server did not answer within {timeout:g} s"
    if isinstance(error, requests.exceptions.MissingSchema):
        return "it is not a web address (it should start with https://)"
    if isinstance(error, requests.exceptions.InvalidSchema):
        return "only http:// and https:// addresses can be downloaded"
    if isinstance(error, requests.exceptions.InvalidURL):
        return "it is not a valid web address"
    if isinstance(error, requests.exceptions.TooManyRedirects):
        return f"the server redirects in a loop (more than {requests.models.DEFAULT_REDIRECT_LIMIT} redirects)"
    if isinstance(error, requests.ConnectionError) and "NameResolution" in repr(error):
        return "the host name could not be resolved (no network?)"
    if isinstance(error, requests.ConnectionError):
        return "could not connect (no network?)"
    return f"the request failed ({type(error).__name__})"
