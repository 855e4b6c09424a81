"""Shared parts of every HTTP connector: error classification, retries with backoff that honour
``Retry-After``, and a client that slows down before a remaining-quota header runs out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
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


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    backoff = wait_exponential_jitter(initial=0.5, max=30)(state)
    if isinstance(error, RetryableError) and error.retry_after is not None:
        return min(max(error.retry_after, backoff), 300)
    return backoff


def with_retries(attempts: int = 5) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a call on ``RetryableError`` (and transport errors), ``attempts`` times in all."""
    return retry(
        retry=retry_if_exception_type((RetryableError, httpx.TransportError)),
        wait=_wait,
        stop=stop_after_attempt(attempts),
        reraise=True,
        before_sleep=lambda s: log.warning("retrying after %s", s.outcome.exception() if s.outcome else "?"),
    )


def make_client(base_url: str, timeout: float = 30.0, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout, connect=5.0), **kwargs)
