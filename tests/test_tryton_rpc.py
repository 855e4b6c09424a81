"""Tryton's JSON-RPC protocol against recorded answers: login, session renewal, errors, encoding."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import httpx
import pytest
import respx

from connectors.http import FatalError
from connectors.tryton_rpc import TrytonError, TrytonRpc, TrytonUserError, dumps, loads

URL = "http://tryton.test"


def answer(result: object = None, error: object = None) -> httpx.Response:
    body = {"id": 1, "result": result} if error is None else {"id": 1, "error": error}
    return httpx.Response(200, text=dumps(body))


def test_decimals_and_dates_travel_as_tryton_expects() -> None:
    payload = dumps([Decimal("120.50"), dt.date(2026, 10, 31), dt.datetime(2026, 10, 31, 12, 30)])
    assert json.loads(payload)[0] == {"__class__": "Decimal", "decimal": "120.50"}
    assert json.loads(payload)[1] == {"__class__": "date", "year": 2026, "month": 10, "day": 31}
    assert loads(payload) == [Decimal("120.50"), dt.date(2026, 10, 31), dt.datetime(2026, 10, 31, 12, 30)]


@respx.mock
def test_an_expired_session_logs_in_again_once() -> None:
    calls: list[dict[str, object]] = []
    logins = iter([[1, "first"], [1, "second"]])

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append({"method": body["method"], "auth": request.headers.get("Authorization")})
        if body["method"] == "common.db.login":
            return answer(next(logins))
        if body["method"] == "model.res.user.get_preferences":
            return answer({"company": 1, "id": 1})
        if "first" in base64.b64decode(request.headers["Authorization"].split()[1]).decode():
            return httpx.Response(401)  # the session expired on the server
        return answer([42])

    respx.post(f"{URL}/db/rpc/").mock(side_effect=server)
    rpc = TrytonRpc(URL, "db", "admin", "secret")
    assert rpc.model("party.party", "search", []) == [42]
    assert [c["method"] for c in calls] == ["common.db.login", "model.res.user.get_preferences",
                                            "model.party.party.search", "common.db.login",
                                            "model.res.user.get_preferences", "model.party.party.search"]  # fmt: skip
    assert json.loads(respx.calls[-1].request.content)["params"][-1] == {"company": 1, "id": 1}  # the context


@respx.mock
def test_a_wrong_password_is_a_clear_error_not_a_retry() -> None:
    route = respx.post(f"{URL}/db/rpc/").mock(return_value=httpx.Response(401))
    with pytest.raises(FatalError, match="refused the login of 'admin'"):
        TrytonRpc(URL, "db", "admin", "wrong").login()
    assert route.call_count == 1


@respx.mock
def test_business_errors_keep_their_message_and_warning_name() -> None:
    respx.post(f"{URL}/db/rpc/").mock(side_effect=[
        answer([1, "s"]), answer({"company": 1}),
        answer(error=["UserError", ["The invoice has no lines.", ""]]),
        answer(error=["UserWarning", ["a1b2.invoice_date", "The due date is in the past.", ""]]),
        answer(error=["Server error", "Traceback ..."]),
    ])  # fmt: skip
    rpc = TrytonRpc(URL, "db", "admin", "secret")
    with pytest.raises(TrytonUserError, match="The invoice has no lines"):
        rpc.model("account.invoice", "post", [1])
    with pytest.raises(TrytonUserError) as warning:
        rpc.model("account.invoice", "post", [1])
    assert (warning.value.kind, warning.value.message, warning.value.detail[0]) == (
        "UserWarning",
        "The due date is in the past.",
        "a1b2.invoice_date",
    )
    with pytest.raises(TrytonError) as server:
        rpc.model("account.invoice", "post", [1])
    assert server.value.kind == "ServerError" and not isinstance(server.value, TrytonUserError)


@respx.mock
def test_reads_are_retried_after_a_5xx_and_writes_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    respx.post(f"{URL}/db/rpc/").mock(side_effect=[
        answer([1, "s"]), answer({"company": 1}), httpx.Response(503), answer([7]), httpx.Response(502),
    ])  # fmt: skip
    rpc = TrytonRpc(URL, "db", "admin", "secret")
    assert rpc.model("party.party", "search", []) == [7]
    with pytest.raises(Exception, match="HTTP 502"):  # a create may have been committed: not blindly retried
        rpc.model("party.party", "create", [{"name": "x"}])
