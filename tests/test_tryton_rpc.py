"""Tryton's JSON-RPC protocol against recorded answers: login, session renewal, errors, encoding, and what an
unreliable Tryton does to logins, reads and writes (retries, clear errors, no second invoice)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import httpx
import pytest
import respx

from billing.errors import ConfigurationError, SystemUnavailable
from billing.models import ChargeLine, InvoiceDraft
from connectors.tryton import TrytonErp
from connectors.tryton_rpc import TrytonError, TrytonRpc, TrytonUnavailable, TrytonUserError, dumps, loads

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


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)


def login_and_preferences(request: httpx.Request) -> httpx.Response | None:
    method = json.loads(request.content)["method"]
    if method == "common.db.login":
        return answer([1, "session"])
    if method == "model.res.user.get_preferences":
        return answer({"company": 1, "id": 1})
    return None


@respx.mock
def test_a_wrong_password_is_a_configuration_error_that_names_what_to_check() -> None:
    route = respx.post(f"{URL}/db/rpc/").mock(return_value=httpx.Response(401))  # what Tryton 8.2 answers
    with pytest.raises(ConfigurationError) as refused:
        TrytonRpc(URL, "db", "admin", "wrong").login()
    assert str(refused.value) == (
        "Tryton at http://tryton.test, database 'db' refused the login of 'admin' (HTTP 401): wrong user or password"
    )
    assert "TICKET_TO_INVOICE_TRYTON_PASSWORD" in (refused.value.hint or "")
    assert refused.value.exit_code == 2 and route.call_count == 1  # not retried


@respx.mock
def test_a_login_blocked_after_failed_attempts_is_not_retried() -> None:
    # Tryton answers 429 once a user failed [session] max_attempt times; each attempt prolongs the block.
    route = respx.post(f"{URL}/db/rpc/").mock(return_value=httpx.Response(429))
    with pytest.raises(ConfigurationError, match="refuses logins of 'admin' for now") as blocked:
        TrytonRpc(URL, "db", "admin", "wrong").login()
    assert "TICKET_TO_INVOICE_TRYTON_PASSWORD" in (blocked.value.hint or "") and route.call_count == 1


@respx.mock
def test_an_unknown_database_is_a_configuration_error() -> None:
    respx.post(f"{URL}/nodb/rpc/").mock(return_value=httpx.Response(404))
    with pytest.raises(ConfigurationError, match="database 'nodb': no such database") as missing:
        TrytonRpc(URL, "nodb", "admin", "secret").login()
    assert "TICKET_TO_INVOICE_TRYTON_DATABASE" in (missing.value.hint or "")


@respx.mock
def test_the_login_is_retried_after_503_and_a_dropped_connection() -> None:
    answers = iter([httpx.Response(503), httpx.RemoteProtocolError("Server disconnected without sending a response.")])

    def server(request: httpx.Request) -> httpx.Response:
        fault = next(answers, None)
        if isinstance(fault, Exception):
            raise fault
        return fault or login_and_preferences(request) or answer([7])

    route = respx.post(f"{URL}/db/rpc/").mock(side_effect=server)
    rpc = TrytonRpc(URL, "db", "admin", "secret")
    rpc.login()
    assert rpc.context == {"company": 1, "id": 1} and route.call_count == 4
    assert rpc.model("party.party", "search", []) == [7]


@respx.mock
def test_a_tryton_that_keeps_failing_is_an_outage_that_names_it() -> None:
    route = respx.post(f"{URL}/db/rpc/").mock(return_value=httpx.Response(503))
    with pytest.raises(SystemUnavailable) as outage:
        TrytonRpc(URL, "db", "admin", "secret").login()
    assert str(outage.value) == (
        "Tryton at http://tryton.test, database 'db', is unavailable: common.db.login failed after 5 attempts: HTTP 503"
    )
    assert "trytond is running" in (outage.value.hint or "") and outage.value.exit_code == 1
    assert route.call_count == 5


@respx.mock
def test_an_unreachable_tryton_is_an_outage_and_reads_give_up_the_same_way() -> None:
    respx.post(f"{URL}/db/rpc/").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(SystemUnavailable, match=r"failed after 5 attempts: cannot connect \(\[Errno 111\]"):
        TrytonRpc(URL, "db", "admin", "secret").login()

    respx.post(f"{URL}/db2/rpc/").mock(side_effect=lambda r: login_and_preferences(r) or httpx.Response(502))
    rpc = TrytonRpc(URL, "db2", "admin", "secret")
    with pytest.raises(TrytonUnavailable) as outage:
        rpc.model("party.party", "search_read", [], 0, None, None, ["code"])
    assert outage.value.attempts == 5 and not outage.value.maybe_done


@respx.mock
def test_a_write_that_never_left_is_sent_again_and_one_whose_answer_was_lost_is_not() -> None:
    faults: list[Exception | None] = [httpx.ConnectError("refused"), None, httpx.ReadTimeout("timed out")]
    writes: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        known = login_and_preferences(request)
        if known:
            return known
        writes.append(json.loads(request.content)["method"])
        fault = faults.pop(0) if faults else None
        if fault:
            raise fault
        return answer([1])

    respx.post(f"{URL}/db/rpc/").mock(side_effect=server)
    rpc = TrytonRpc(URL, "db", "admin", "secret")
    assert rpc.model("party.party", "create", [{"name": "x"}]) == [1]  # no connection: certainly not done
    with pytest.raises(TrytonUnavailable) as lost:
        rpc.model("party.party", "create", [{"name": "y"}])  # may be committed: the caller checks first
    assert lost.value.maybe_done and lost.value.attempts == 1
    assert writes == ["model.party.party.create"] * 3


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
def test_reads_are_retried_after_a_5xx_and_writes_are_not() -> None:
    respx.post(f"{URL}/db/rpc/").mock(side_effect=[
        answer([1, "s"]), answer({"company": 1}), httpx.Response(503), answer([7]), httpx.Response(502),
    ])  # fmt: skip
    rpc = TrytonRpc(URL, "db", "admin", "secret")
    assert rpc.model("party.party", "search", []) == [7]
    with pytest.raises(Exception, match="HTTP 502"):  # a create may have been committed: not blindly retried
        rpc.model("party.party", "create", [{"name": "x"}])


class FakeTryton:
    """Just enough of Tryton's invoice API for TrytonErp.post, with a hook that fails a call after (or before)
    Tryton acted on it."""

    def __init__(self) -> None:
        self.invoices: dict[int, dict[str, object]] = {}
        self.calls: list[str] = []
        self.fault: dict[str, Exception] = {}  # method → raised once, after the call was committed

    def __call__(self, request: httpx.Request) -> httpx.Response:
        known = login_and_preferences(request)
        if known:
            return known
        body = loads(request.content.decode())
        method, params = body["method"].removeprefix("model."), body["params"]
        self.calls.append(method)
        result = self.handle(method, params)
        fault = self.fault.pop(method, None)
        if fault:
            raise fault  # Tryton committed; the answer never came back
        return answer(result)

    def handle(self, method: str, params: list) -> object:  # type: ignore[type-arg]
        if method in ("party.party.search_read", "product.product.search_read"):
            return [{"id": 10 + n, "code": code} for n, code in enumerate(params[0][0][2])]
        if method == "currency.currency.search_read":
            return [{"id": 1, "code": "EUR"}]
        if method.endswith(".search") and not method.startswith("account.invoice"):
            return [5]
        if method == "account.invoice.on_change":
            return {"journal": 1, "invoice_address": 2, "account": 3}
        if method == "account.invoice.line.on_change":
            return {"account": 4, "taxes": {"add": [[0, {"id": 5}]]}}
        if method == "account.invoice.search_read":
            keys = params[0][0][2]
            return [dict(i) for i in self.invoices.values() if i["reference"] in keys and i["state"] != "cancelled"]
        if method == "account.invoice.create":
            ids = []
            for values in params[0]:
                lines = values["lines"][0][1]
                untaxed = sum(li["quantity"] * li["unit_price"] for li in lines)
                new_id = len(self.invoices) + 1
                self.invoices[new_id] = {"id": new_id, "reference": values["reference"], "state": "draft",
                                         "number": None, "untaxed_amount": untaxed, "tax_amount": Decimal(0),
                                         "total_amount": untaxed, "currency": 1, "create_date": None}  # fmt: skip
                ids.append(new_id)
            return ids
        if method == "account.invoice.read":
            return [{"id": i, "reference": self.invoices[i]["reference"]} for i in params[0]]
        if method == "account.invoice.post":
            for i in params[0]:
                self.invoices[i].update(state="posted", number=f"INV-{i}")
            return None
        raise AssertionError(f"unexpected call {method}")


def a_draft(customer: str) -> InvoiceDraft:
    return InvoiceDraft(customer_id=customer, period="2026-10", currency="EUR", version=1, lines=(
        ChargeLine(work_item_keys=(f"k:{customer}",), source_id="WL-1", customer_id=customer, period="2026-10",
                   currency="EUR", service_type="remote_support", description="support",
                   quantity_raw=Decimal("1.25"), quantity_billed=Decimal("1.25"), unit_price_minor=9500,
                   amount_minor=11875),))  # fmt: skip


@pytest.mark.parametrize("lost", ["account.invoice.create", "account.invoice.post"])
@respx.mock
def test_a_write_whose_answer_is_lost_is_checked_by_reference_and_not_made_twice(lost: str) -> None:
    tryton = FakeTryton()
    tryton.fault[lost] = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    respx.post(f"{URL}/db/rpc/").mock(side_effect=tryton)
    drafts = [a_draft("ACME"), a_draft("GLOBEX")]

    receipts, failures = TrytonErp(TrytonRpc(URL, "db", "admin", "secret")).post(drafts)

    assert failures == [] and sorted(r.draft_key for r in receipts) == sorted(d.key for d in drafts)
    assert all(r.state == "posted" and not r.already_existed for r in receipts)  # posted by this call
    assert sorted(i["reference"] for i in tryton.invoices.values()) == sorted(d.key for d in drafts)  # one each
    assert tryton.calls.count("account.invoice.create") == 1  # the second attempt found them by reference
    checks = [i for i, c in enumerate(tryton.calls) if c == "account.invoice.search_read"]
    assert tryton.calls[checks[1] - 1] == lost  # the batch began again with its check by reference


@respx.mock
def test_a_batch_gives_up_as_an_outage_when_tryton_goes_away_and_the_next_run_finishes_it() -> None:
    tryton = FakeTryton()
    down = False

    def server(request: httpx.Request) -> httpx.Response:
        nonlocal down
        if down:
            return httpx.Response(503)
        if b"account.invoice.create" in request.content:  # committed, the answer lost, then Tryton is gone
            tryton.fault["account.invoice.create"] = httpx.ReadError("connection reset")
            down = True
        return tryton(request)

    respx.post(f"{URL}/db/rpc/").mock(side_effect=server)
    draft = a_draft("UMBRELLA")
    with pytest.raises(SystemUnavailable, match=r"account\.invoice\.search_read failed after 5 attempts: HTTP 503"):
        TrytonErp(TrytonRpc(URL, "db", "admin", "secret")).post([draft])
    assert [i["state"] for i in tryton.invoices.values()] == ["draft"]

    down = False  # Tryton is back: the next run finds the draft by reference and posts it
    respx.post(f"{URL}/db/rpc/").mock(side_effect=tryton)
    receipts, failures = TrytonErp(TrytonRpc(URL, "db", "admin", "secret")).post([draft])
    assert failures == [] and [r.state for r in receipts] == ["posted"]
    assert [i["state"] for i in tryton.invoices.values()] == ["posted"]


@respx.mock
def test_a_create_that_got_no_answer_in_time_is_not_sent_again_while_tryton_may_still_be_making_it() -> None:
    tryton = FakeTryton()
    in_flight: list[dict[str, object]] = []

    def slow_create(request: httpx.Request) -> httpx.Response:
        if b"account.invoice.create" in request.content and not in_flight:
            tryton.calls.append("account.invoice.create")
            in_flight.append(loads(request.content.decode())["params"][0][0])
            raise httpx.ReadTimeout("timed out")  # Tryton is still working on it, uncommitted
        return tryton(request)

    respx.post(f"{URL}/db/rpc/").mock(side_effect=slow_create)
    draft = a_draft("HOOLI")
    erp = TrytonErp(TrytonRpc(URL, "db", "admin", "secret"))
    receipts, failures = erp.post([draft])
    assert receipts == [] and [f.draft_key for f in failures] == [draft.key]
    assert "may still be making it" in failures[0].error and tryton.calls.count("account.invoice.create") == 1

    tryton.handle("account.invoice.create", [in_flight])  # Tryton commits it at last
    receipts, failures = erp.post([draft])
    assert failures == [] and [r.state for r in receipts] == ["posted"]
    assert len(tryton.invoices) == 1 and tryton.calls.count("account.invoice.create") == 1
