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
from decimal import Decimal
from typing import Any

import httpx

from connectors.http import FatalError, RetryableError, classify, make_client, with_retries


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


# Calls that change nothing may be retried after a transport error; a write may have been committed
# before the connection dropped, so it is left to the caller's check-then-create (see connectors.tryton).
READ_ONLY = {"search", "read", "search_read", "search_count", "fields_get", "default_get", "on_change",
             "on_change_with", "get_preferences"}  # fmt: skip


class TrytonRpc:
    """One logged-in session on one database. Thread-safe for the session; calls are independent."""

    def __init__(self, url: str, database: str, user: str, password: str, client: httpx.Client | None = None) -> None:
        self.url, self.database, self.user, self._password = url.rstrip("/"), database, user, password
        self.http = client or make_client(self.url, timeout=120)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._auth: str | None = None
        self.context: dict[str, Any] = {}

    def _post(self, method: str, params: list[Any], auth: str | None) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        response = self.http.post(
            f"/{self.database}/rpc/",
            content=dumps({"id": next(self._ids), "method": method, "params": params}),
            headers=headers,
        )
        if response.status_code == 401:
            raise SessionExpired(f"{method}: session expired")
        classify(response)
        answer = loads(response.text)
        error = answer.get("error")
        if error:
            raise _error(error)
        return answer.get("result")

    def login(self) -> None:
        with self._lock:
            try:
                result = self._post("common.db.login", [self.user, {"password": self._password}, "en"], None)
            except (SessionExpired, TrytonError) as exc:  # Tryton answers a wrong password with 401
                raise FatalError(
                    f"Tryton refused the login of {self.user!r} on database {self.database!r}: "
                    "check the user and password"
                ) from exc
            if not result:
                raise FatalError(f"Tryton refused the login of {self.user!r} on database {self.database!r}")
            user_id, session = result[0], result[1]
            token = base64.b64encode(f"{self.user}:{user_id}:{session}".encode()).decode()
            self._auth = f"Session {token}"
        self.context = self._post("model.res.user.get_preferences", [True, {}], self._auth) or {}

    def call(self, method: str, *params: Any) -> Any:
        """Call a method. A 401 logs in again once; a read-only call is also retried with backoff on
        transport errors and 5xx (a write is not: it may have been committed before the error)."""
        if method.rsplit(".", 1)[-1] in READ_ONLY:
            return self._call_with_retries(method, *params)
        return self._call(method, *params)

    @with_retries(attempts=4)
    def _call_with_retries(self, method: str, *params: Any) -> Any:
        return self._call(method, *params)

    def _call(self, method: str, *params: Any) -> Any:
        if self._auth is None:
            self.login()
        try:
            return self._post(method, list(params), self._auth)
        except SessionExpired:
            self.login()
            return self._post(method, list(params), self._auth)

    def model(self, model: str, method: str, *args: Any, context: dict[str, Any] | None = None) -> Any:
        """``model.<model>.<method>(*args, context)`` with the user's company context."""
        if self._auth is None:  # the context (the user's company) comes with the login
            self.login()
        return self.call(f"model.{model}.{method}", *args, {**self.context, **(context or {})})

    def close(self) -> None:
        self.http.close()
