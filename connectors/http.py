"""Shared parts of every HTTP connector: error classification, retries with backoff that honour
``Retry-After``, and a client that slows down before a remaining-quota header runs out."""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConnectorError(Exception):
    """Something went wrong talking to an external system."""


class RetryableError(ConnectorError):
    """Worth trying again: 429, 5xx, timeouts, dropped connections."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalError(ConnectorError):
    """Trying again will not help: other 4xx, a rejected credential, a malformed request."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def classify(response: httpx.Response) -> None:
    """Raise the error a failed response stands for; return for a success."""
    if response.status_code < 400:
        return
    where = f"{response.request.method} {response.request.url}"
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryableError(f"{where}: HTTP {response.status_code}", retry_after_seconds(response))
    raise FatalError(f"{where}: HTTP {response.status_code} {response.text[:200]}")


TRANSIENT = (RetryableError, httpx.TransportError)  # worth another attempt (a read, a login)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT)


def never_sent(error: BaseException) -> bool:
    """The request certainly did not reach the server (no connection, or none free): even a write may be
    sent again. A dropped connection, a read timeout or a 5xx leaves that open."""
    return isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def describe(error: BaseException) -> str:
    """A short reason for a message to a user: "HTTP 503", "connection refused", "timed out"..."""
    if isinstance(error, RetryableError):
        return str(error).rsplit(": ", 1)[-1]
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect ({error})"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection was dropped before an answer"
    if isinstance(error, httpx.TransportError):
        return f"{type(error).__name__}: {error}"
    return str(error)


def _waiter(initial: float, maximum: float) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(initial=initial, max=maximum)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        pause = backoff(state)
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return min(max(error.retry_after, pause), 300)
        return pause

    return wait


def _log_retry(state: RetryCallState) -> None:
    log.warning("retrying after %s", state.outcome.exception() if state.outcome else "?")


def _policy(attempts: int, initial: float, maximum: float,
            retry_on: Callable[[BaseException], bool] = is_transient) -> dict[str, Any]:  # fmt: skip
    return {"retry": retry_if_exception(retry_on), "wait": _waiter(initial, maximum),
            "stop": stop_after_attempt(attempts), "reraise": True, "before_sleep": _log_retry}  # fmt: skip


def with_retries(
    attempts: int = 5, initial: float = 0.5, maximum: float = 30.0
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a call on ``RetryableError`` (and transport errors), ``attempts`` times in all, with exponential
    backoff and jitter from ``initial`` up to ``maximum`` seconds (``Retry-After`` honoured)."""
    return retry(**_policy(attempts, initial, maximum))


def retrying(attempts: int = 5, initial: float = 0.5, maximum: float = 30.0,
             retry_on: Callable[[BaseException], bool] = is_transient) -> Retrying:  # fmt: skip
    """The policy of ``with_retries`` chosen at call time, ``retrying(3)(function, *args)``; ``retry_on`` narrows
    what is retried (``never_sent`` for a write)."""
    return Retrying(**_policy(attempts, initial, maximum, retry_on))


@functools.cache
def default_tls() -> ssl.SSLContext:
    """httpx's own default TLS context (certifi's CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), built once per
    process: loading the bundle costs ~25 ms, and a run opens a client per stage and system."""
    return httpx.create_ssl_context()


def make_client(base_url: str, timeout: float = 30.0, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("verify", default_tls())
    return httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout, connect=5.0), **kwargs)


class HeaderAuth(httpx.Auth):
    """An API key in a header (``X-Redmine-API-Key``, ``Authorization: Bearer …`` ...)."""

    def __init__(self, header: str, value: str) -> None:
        self.header, self.value = header, value

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers[self.header] = self.value
        yield request


class QuotaGuard:
    """An httpx response hook that slows down before a remaining-quota header reaches zero.

    SaaS APIs announce what is left (``X-RateLimit-Remaining``) and when it refills (``X-RateLimit-Reset``,
    seconds); below ``reserve`` requests the client sleeps until the reset instead of earning a 429.
    """

    def __init__(self, reserve: int = 2, max_sleep: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.reserve, self.max_sleep, self.sleep = reserve, max_sleep, sleep

    def __call__(self, response: httpx.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining")
        reset = response.headers.get("X-RateLimit-Reset")
        if remaining is None or reset is None:
            return
        try:
            left, wait = int(remaining), float(reset)
        except ValueError:
            return
        if left <= self.reserve:
            wait = wait - time.time() if wait > 10**9 else wait  # an epoch timestamp or seconds from now
            self.sleep(min(max(wait, 0.0), self.max_sleep))


@with_retries()
def get_json(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET and decode JSON; 429/5xx/transport errors retried with backoff (``Retry-After`` honoured)."""
    response = client.get(path, params=params)
    classify(response)
    return response.json()


class OffsetPaginator:
    """Pages of an offset/limit list API (``{"<key>": [...], "total_count": n, "offset": o, "limit": l}``)."""

    def __init__(self, client: httpx.Client, path: str, key: str, params: dict[str, Any] | None = None,
                 page_size: int = 100) -> None:  # fmt: skip
        self.client, self.path, self.key = client, path, key
        self.params, self.page_size = dict(params or {}), page_size
        self.pages = 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        offset = 0
        while True:
            page = get_json(self.client, self.path, {**self.params, "offset": offset, "limit": self.page_size})
            self.pages += 1
            items = page.get(self.key, [])
            yield items
            offset += len(items)
            if not items or offset >= int(page.get("total_count", 0)):
                return

    def all(self) -> list[dict[str, Any]]:
        return [item for page in self for item in page]
