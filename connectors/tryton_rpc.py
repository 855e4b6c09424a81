"""Tryton's JSON-RPC protocol over httpx: login, session renewal, the company context, and the
encoding of Decimal and dates. Tryton is GPL-3 and runs as its own server; this module only speaks to it.

    POST http://HOST:PORT/<db>/rpc/   {"id": n, "method": "model.party.party.search", "params": [...]}
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
from tenacity import Retrying

from billing.errors import ConfigurationError, SystemUnavailable
from connectors.http import (
    TRANSIENT,
    FatalError,
    RetryableError,
    classify,
    describe,
    is_transient,
    make_client,
    never_sent,
    retrying,
)


class TrytonError(FatalError):
    """An error Tryton answered with (``error`` in the JSON-RPC answer)."""

    def __init__(self, kind: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.detail = kind, message, detail


class TrytonUserError(TrytonError):
    """A business rule said no (``UserError`` / ``UserWarning``): clear for the invoice, not for the run."""


class SessionExpired(RetryableError):
    pass


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"__class__": "Decimal", "decimal": str(value)}
    if isinstance(value, dt.datetime):
        return {"__class__": "datetime", "year": value.year, "month": value.month, "day": value.day,
                "hour": value.hour, "minute": value.minute, "second": value.second,
                "microsecond": value.microsecond}  # fmt: skip
    if isinstance(value, dt.date):
        return {"__class__": "date", "year": value.year, "month": value.month, "day": value.day}
    if isinstance(value, bytes):
        return {"__class__": "bytes", "base64": base64.b64encode(value).decode()}
    raise TypeError(f"cannot send {type(value).__name__} to Tryton")


def _decode(obj: dict[str, Any]) -> Any:
    kind = obj.get("__class__")
    if kind == "Decimal":
        return Decimal(obj["decimal"])
    if kind == "date":
        return dt.date(obj["year"], obj["month"], obj["day"])
    if kind == "datetime":
        return dt.datetime(obj["year"], obj["month"], obj["day"], obj.get("hour", 0), obj.get("minute", 0),
                           obj.get("second", 0), obj.get("microsecond", 0))  # fmt: skip
    if kind == "bytes":
        return base64.b64decode(obj["base64"])
    return obj


def dumps(payload: Any) -> str:
    return json.dumps(payload, default=_encode)


def loads(text: str) -> Any:
    return json.loads(text, object_hook=_decode)


def _error(error: Any) -> TrytonError:
    """Tryton answers ``[kind, args]``: UserError args are (message, description); UserWarning args are
    (name, message, description) and the name is what acknowledges the warning; anything else is
    ``[message, traceback]`` from the server."""
    if not isinstance(error, list) or not error:
        return TrytonError("ServerError", str(error))
    kind, args = str(error[0]), error[1] if len(error) > 1 else []
    args = args if isinstance(args, list) else [args]
    if kind == "UserWarning":
        return TrytonUserError(kind, str(args[1] if len(args) > 1 else args), args)
    if kind == "UserError":
        return TrytonUserError(kind, str(args[0] if args else ""), args)
    if kind in ("AccessError", "LoginException", "ConcurrencyException", "RateLimitException"):
        return TrytonError(kind, str(args[0] if args else ""), args)
    return TrytonError("ServerError", kind, args)


# Calls that change nothing may be retried after any transport error or 5xx; a write may have been committed
# before its answer was lost, so it is sent again only when it certainly never left (no connection), and
# otherwise left to the caller's check-then-create by reference (see connectors.tryton).
READ_ONLY = {"search", "read", "search_read", "search_count", "fields_get", "default_get", "on_change",
             "on_change_with", "get_preferences"}  # fmt: skip
LOGIN = "common.db.login"
CREDENTIALS_HINT = (
    "check TICKET_TO_INVOICE_TRYTON_USER and TICKET_TO_INVOICE_TRYTON_PASSWORD, or the Prefect Secret block "
    "ticket-to-invoice-tryton-password when the variable is empty (and TICKET_TO_INVOICE_TRYTON_DATABASE): the "
    "user must exist and be active in that database"
)


def is_read_only(method: str) -> bool:
    return method == LOGIN or method.rsplit(".", 1)[-1] in READ_ONLY


class TrytonUnavailable(SystemUnavailable):
    """Tryton could not be reached, or kept failing, for one call. ``maybe_done`` when the call was a write
    whose answer was lost: Tryton may have committed it, so the caller checks by reference before sending it
    again. ``maybe_running`` when no answer came in time: Tryton may still be working on it, and a check made
    now may not see what it is about to commit."""

    def __init__(self, url: str, database: str, method: str, cause: BaseException, attempts: int,
                 maybe_done: bool = False) -> None:  # fmt: skip
        self.url, self.database, self.method, self.cause = url, database, method, cause
        self.attempts, self.maybe_done = attempts, maybe_done
        self.maybe_running = maybe_done and isinstance(cause, httpx.TimeoutException)
        tries = "(a write: not sent again blindly)" if maybe_done else f"after {attempts} attempt{'s' * (attempts > 1)}"
        super().__init__(
            f"Tryton at {url}, database {database!r}, is unavailable: {method} failed {tries}: {describe(cause)}",
            hint=f"check that trytond is running and reachable from here at {url} (TICKET_TO_INVOICE_TRYTON_URL) "
            "and look at its log; what was begun is in the ledger and the next run finds it by reference and "
            "continues",
        )


class TrytonLoginRefused(ConfigurationError):
    """Tryton refused our credentials (or the database): trying again will not help."""


class TrytonRpc:
    """One logged-in session on one database. Thread-safe for the session; calls are independent.

    Logins and reads are retried with backoff (``attempts`` in all) on 5xx, 429, dropped connections and
    timeouts; a write only when it never reached Tryton. Whatever still fails becomes ``TrytonUnavailable``
    (an outage, exit 1); refused credentials become ``TrytonLoginRefused`` (a configuration error, exit 2).
    """

    attempts = 5
    wait_initial = 0.5  # seconds before the second attempt, doubling (with jitter) up to wait_max
    wait_max = 30.0

    def __init__(self, url: str, database: str, user: str, password: str, client: httpx.Client | None = None,
                 attempts: int | None = None) -> None:  # fmt: skip
        self.url, self.database, self.user, self._password = url.rstrip("/"), database, user, password
        self.http = client or make_client(self.url, timeout=120)
        self.attempts = attempts or self.attempts
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._auth: str | None = None
        self.context: dict[str, Any] = {}
        self.writes_answered = 0  # writes Tryton answered: how a caller that starts over sees progress

    @property
    def where(self) -> str:
        return f"Tryton at {self.url}, database {self.database!r}"

    def _send(self, method: str, params: list[Any], auth: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        return self.http.post(
            f"/{self.database}/rpc/",
            content=dumps({"id": next(self._ids), "method": method, "params": params}),
            headers=headers,
        )

    def _result(self, method: str, response: httpx.Response) -> Any:
        classify(response)
        try:
            answer = loads(response.text)
        except ValueError:
            raise ConfigurationError(
                f"{self.where}: {method} was answered with something that is not JSON-RPC "
                f"(HTTP {response.status_code}, {response.headers.get('Content-Type', 'no content type')})",
                hint="check TICKET_TO_INVOICE_TRYTON_URL: it must be trytond's own address (http://HOST:PORT)",
            ) from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            raise _error(error)
        return answer.get("result") if isinstance(answer, dict) else None

    def _post(self, method: str, params: list[Any], auth: str | None) -> Any:
        response = self._send(method, params, auth)
        if response.status_code == 401:
            raise SessionExpired(f"{method}: session expired")
        return self._result(method, response)

    def _retrying(self, retry_on: Callable[[BaseException], bool] = is_transient) -> Retrying:
        return retrying(self.attempts, self.wait_initial, self.wait_max, retry_on=retry_on)

    def _unavailable(self, method: str, cause: BaseException, policy: Retrying, maybe_done: bool) -> TrytonUnavailable:
        attempts = int(policy.statistics.get("attempt_number", 1))
        return TrytonUnavailable(self.url, self.database, method, cause, attempts, maybe_done)

    def login(self) -> None:
        """Log in and load the user's context (company). Retried with backoff; refused credentials are a
        ``TrytonLoginRefused``, an outage a ``TrytonUnavailable``."""
        policy = self._retrying()
        try:
            policy(self._login_once)
        except TRANSIENT as exc:
            raise self._unavailable(LOGIN, exc, policy, maybe_done=False) from exc

    def _login_once(self) -> None:
        with self._lock:
            response = self._send(LOGIN, [self.user, {"password": self._password}, "en"], None)
            self._refused(response)
            try:
                result = self._result(LOGIN, response)
            except TrytonError as exc:
                if exc.kind == "LoginException":  # Tryton asks for more than a password (a second factor)
                    raise TrytonLoginRefused(
                        f"{self.where} asks for more than a password to log in {self.user!r}: {exc.message}",
                        hint="give the connector's user a password-only login ([session] authentications)",
                    ) from exc
                raise
            if not result:
                raise TrytonLoginRefused(f"{self.where} refused the login of {self.user!r}", hint=CREDENTIALS_HINT)
            user_id, session = result[0], result[1]
            token = base64.b64encode(f"{self.user}:{user_id}:{session}".encode()).decode()
            self._auth = f"Session {token}"
        self.context = self._post("model.res.user.get_preferences", [True, {}], self._auth) or {}

    def _refused(self, response: httpx.Response) -> None:
        """What Tryton 8.2 answers a login it will not give: 401 (or 403) for a wrong user or password, 404 for
        a database it does not serve, 429 once the user (or this network) failed too often."""
        if response.status_code in (401, 403):
            raise TrytonLoginRefused(
                f"{self.where} refused the login of {self.user!r} (HTTP {response.status_code}): wrong user or "
                "password",
                hint=CREDENTIALS_HINT,
            )
        if response.status_code == 404:
            raise TrytonLoginRefused(
                f"{self.where}: no such database (HTTP 404 on login)",
                hint="check TICKET_TO_INVOICE_TRYTON_DATABASE, and that trytond serves it (trytond -d DATABASE) "
                "at TICKET_TO_INVOICE_TRYTON_URL",
            )
        if response.status_code == 429:
            # Not retried: every attempt while blocked counts as one more failure and prolongs the block.
            raise TrytonLoginRefused(
                f"{self.where} refuses logins of {self.user!r} for now (HTTP 429): too many failed logins",
                hint="check TICKET_TO_INVOICE_TRYTON_PASSWORD; Tryton blocks a user after [session] max_attempt "
                "(5) failed logins and accepts it again [session] timeout after the last one (5 minutes by default; "
                "the embedded Tryton's is 30 days: remove the user's res.user.login.attempt rows to let it in)",
            )

    def call(self, method: str, *params: Any, retry_safe: bool = False) -> Any:
        """Call a method. A 401 logs in again once. A read-only call (or a write the caller declares
        ``retry_safe``: done twice is no harm) is retried with backoff on transport errors, 5xx and 429; any other
        write only when it never reached Tryton (it may have been committed before an error that came later).
        Whatever still fails raises ``TrytonUnavailable``."""
        if self._auth is None:
            self.login()
        read_only = retry_safe or is_read_only(method)
        policy = self._retrying(is_transient if read_only else never_sent)
        try:
            result = policy(self._call, method, *params)
        except TRANSIENT as exc:
            raise self._unavailable(method, exc, policy, maybe_done=not read_only and not never_sent(exc)) from exc
        if not read_only:
            self.writes_answered += 1
        return result

    def _call(self, method: str, *params: Any) -> Any:
        if self._auth is None:
            self.login()
        try:
            return self._post(method, list(params), self._auth)
        except SessionExpired:  # refused before anything was done, even for a write: log in and send it again
            self.login()
            return self._post(method, list(params), self._auth)

    def model(self, model: str, method: str, *args: Any, context: dict[str, Any] | None = None,
              retry_safe: bool = False) -> Any:  # fmt: skip
        """``model.<model>.<method>(*args, context)`` with the user's company context."""
        if self._auth is None:  # the context (the user's company) comes with the login
            self.login()
        return self.call(f"model.{model}.{method}", *args, {**self.context, **(context or {})}, retry_safe=retry_safe)

    def close(self) -> None:
        self.http.close()
