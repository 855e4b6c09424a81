"""Billing on a resolution, end to end against the real Redmine: a ticket is closed in Redmine, the poller emits
``helpdesk.ticket.resolved``, ``bill-on-event`` invoices the customer's resolved work into the file ERP at once
and writes the invoice number back to Redmine; the same event again bills nothing, and the period's run leaves
that work alone.

The data is this module's own (two new projects, three issues, five time entries logged today), so the
amounts are computed by hand from rules/examples/demo.yaml: Redmine customers get the defaults (EUR, Europe/Berlin,
Germany: 19 % VAT, half-even, tax once per invoice on quantity × unit price); the services' default rates
(remote support 95.00, on-site support 120.00, consulting 150.00, project work 110.00 an hour); each entry rounded
up to 15 minutes; an entry counts as done at noon of its day (on a weekday no surcharge applies, on a weekend
the weekend's 2.0), and time logged today is billed at any hour of today: at 00:30 as well as at 18:00.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.events import TICKET_RESOLVED, BillingEvent
from billing.settings import Settings
from flows.bill_on_event import bill_on_event
from flows.poll import poll
from flows.run_state import summary_of
from flows.ticket_to_invoice import ticket_to_invoice
from tests.conftest import DEMO_RULES
from tests.system.redmine import RedmineInstance, new_tag

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

INSTANCE = "redmine-events"  # a stable instance name: keys and resource ids do not carry the test server's port

# The resolved issue's billable work, by hand, on a weekday:
#   Consulting      1.50 h (90 min, a whole number of quarter hours) × 150.00 = 225.00
#   Remote support  0.33 h (1188 s = 19.8 min, rounded up to 30 min) 0.50 h × 95.00 = 47.50
#   (On-site support 2.00 h marked not billable: nothing)
#   untaxed 225.00 + 47.50 = 272.50; VAT 19 % of 272.50 = 51.775 → 51.78 (half-even: 5177.5 cents → 5178);
#   gross 272.50 + 51.78 = 324.28
# On a Saturday or Sunday every rate doubles: 1.5 h × 300.00 = 450.00, 0.5 h × 190.00 = 95.00; untaxed 545.00,
#   VAT 19 % = 103.55 exactly, gross 648.55.
# The open issue's work, left to the period's run: Remote support 1.00 h × 95.00 = 95.00, VAT 19 % = 18.05;
#   on a weekend 1.00 h × 190.00 = 190.00, VAT 36.10.
@dataclass(frozen=True)
class Expected:
    lines: list[tuple[Decimal, Decimal, int]]  # (hours, rate, amount in cents) of the resolved issue's invoice
    untaxed: int
    tax: int
    gross: int
    open_untaxed: int
    open_tax: int


WEEKDAY = Expected([(Decimal("0.5"), Decimal("95.00"), 4750), (Decimal("1.5"), Decimal("150.00"), 22500)],
                   27250, 5178, 32428, 9500, 1805)  # fmt: skip
WEEKEND = Expected([(Decimal("0.5"), Decimal("190.00"), 9500), (Decimal("1.5"), Decimal("300.00"), 45000)],
                   54500, 10355, 64855, 19000, 3610)  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    customer: str  # bills on resolution
    other: str  # billed at period end
    resolved: int  # the issue the test closes
    still_open: int  # an issue of the same customer left open
    billed: set[int]  # the resolved issue's billable time entries
    not_billable: int  # logged on the resolved issue, marked not billable
    on_open_issue: int
    of_other: int
    period: str
    rules: Path
    expected: Expected


def _created(client: Any, path: str, body: dict[str, Any], key: str) -> int:
    response = client.post(path, json={key: body})
    assert response.status_code == 201, f"POST {path}: {response.status_code} {response.text}"
    return int(response.json()[key]["id"])


def not_at_a_months_turn(margin: timedelta = timedelta(minutes=5)) -> None:
    """Wait for the next month when it is less than ``margin`` away: the time is logged in today's month and the
    run bills the month the issue closes in, so the scenario must not straddle the turn."""
    now = datetime.now(UTC)
    turn = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)).replace(day=1)
    if turn - now < margin:
        time.sleep((turn - now).total_seconds() + 1)


@pytest.fixture(scope="module")
def scenario(redmine: RedmineInstance, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """Two new projects of the shared Redmine, with issues and time entries of known hours, and a rules file that
    bills only them and says the first one bills on resolution."""
    not_at_a_months_turn()
    tag = new_tag()
    # Today in UTC: never after today in Berlin (the customers' timezone), whatever the hour.
    spent_on = datetime.now(UTC).date()
    billable = redmine.custom_fields["time_entry:Billable"]
    with redmine.client() as client:
        trackers = [int(t["id"]) for t in client.get("/trackers.json").json()["trackers"]]
        listed = client.get("/enumerations/time_entry_activities.json").json()["time_entry_activities"]
        activities = {a["name"]: int(a["id"]) for a in listed}
        priority = int(client.get("/enumerations/issue_priorities.json").json()["issue_priorities"][0]["id"])

        def project(identifier: str, name: str) -> int:
            body = {"name": name, "identifier": identifier, "is_public": False, "tracker_ids": trackers,
                    "enabled_module_names": ["issue_tracking", "time_tracking"]}  # fmt: skip
            return _created(client, "/projects.json", body, "project")

        def issue(project_id: int, subject: str) -> int:
            body = {"project_id": project_id, "tracker_id": trackers[0], "priority_id": priority, "subject": subject}
            return _created(client, "/issues.json", body, "issue")

        def entry(issue_id: int, activity: str, hours: float, is_billable: bool = True) -> int:
            body = {"issue_id": issue_id, "hours": hours, "activity_id": activities[activity],
                    "spent_on": spent_on.isoformat(), "comments": f"{tag}: {activity.lower()}",
                    "custom_fields": [{"id": billable, "value": "1" if is_billable else "0"}]}  # fmt: skip
            return _created(client, "/time_entries.json", body, "time_entry")

        customer, other = f"resolve-{tag}", f"monthly-{tag}"
        customer_id = project(customer, f"Resolution customer {tag}")
        other_id = project(other, f"Monthly customer {tag}")
        resolved = issue(customer_id, "Mail server down")
        still_open = issue(customer_id, "Plan the migration")
        elsewhere = issue(other_id, "Printer setup")
        billed = {entry(resolved, "Consulting", 1.5), entry(resolved, "Remote support", 0.33)}
        not_billable = entry(resolved, "On-site support", 2.0, is_billable=False)
        on_open_issue = entry(still_open, "Remote support", 1.0)
        of_other = entry(elsewhere, "Project work", 0.25)

    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(yaml.safe_dump({
        "extends": str(DEMO_RULES), "name": "events on redmine",
        "customers": {customer: {"bill_on": "resolution"}},
        "redmine": {"projects": [customer, other]},  # this module's projects only: the Redmine is shared
    }))  # fmt: skip
    return Scenario(customer=customer, other=other, resolved=resolved, still_open=still_open, billed=billed,
                    not_billable=not_billable, on_open_issue=on_open_issue, of_other=of_other,
                    period=f"{spent_on:%Y-%m}", rules=rules,
                    expected=WEEKEND if spent_on.weekday() >= 5 else WEEKDAY)  # fmt: skip


@pytest.fixture
def settings_env(redmine: RedmineInstance, scenario: Scenario, home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The flows' settings, from the environment as a deployment's worker has them."""
    env = {
        "TICKET_TO_INVOICE_HOME": str(home), "TICKET_TO_INVOICE_SOURCE": "redmine",
        "TICKET_TO_INVOICE_REDMINE_URL": redmine.url, "TICKET_TO_INVOICE_REDMINE_API_KEY": redmine.api_key,
        "TICKET_TO_INVOICE_REDMINE_INSTANCE": INSTANCE, "TICKET_TO_INVOICE_RULES_FILE": str(scenario.rules),
        "TICKET_TO_INVOICE_ERP": "files", "TICKET_TO_INVOICE_APPROVE": "auto",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def documents(home: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((home / "erp-files").glob("*/*.json"))]


def billed_entries(document: dict[str, Any]) -> set[int]:
    return {int(line["source_id"]) for line in document["lines"]}


def invoice_number_of_entry(redmine: RedmineInstance, entry_id: int) -> str:
    field = redmine.custom_fields["time_entry:Invoice number"]
    with redmine.client() as client:
        entry = client.get(f"/time_entries/{entry_id}.json").json()["time_entry"]
    return next((f.get("value") or "" for f in entry["custom_fields"] if f["id"] == field), "")


def close(redmine: RedmineInstance, issue_id: int) -> None:
    with redmine.client() as client:
        statuses = client.get("/issue_statuses.json").json()["issue_statuses"]
        closed = next(int(s["id"]) for s in statuses if s.get("is_closed"))
        response = client.put(f"/issues/{issue_id}.json", json={"issue": {"status_id": closed}})
        assert response.status_code == 204, response.text


def test_closing_a_redmine_issue_bills_its_work_once_and_numbers_it_back(
    redmine: RedmineInstance, scenario: Scenario, settings_env: Settings, home: Path
) -> None:
    sent: list[BillingEvent] = []
    poll(settings_env, sent.extend)  # the first look: sets the cursor (the time just logged is reported as changed)

    # The helpdesk closes the issue; the poller turns it into one event.
    close(redmine, scenario.resolved)
    sent.clear()
    poll(settings_env, sent.extend)
    assert [(e.event, e.ticket) for e in sent] == [(TICKET_RESOLVED, str(scenario.resolved))]
    labels, occurred = sent[0].resource(), sent[0].payload["closed_on"]
    assert labels["t2i.customer"] == scenario.customer and labels["t2i.source"] == "redmine"
    if f"{datetime.fromisoformat(occurred.replace('Z', '+00:00')):%Y-%m}" != scenario.period:
        pytest.fail(f"the month turned between logging the time ({scenario.period}) and closing ({occurred})")

    def on_event() -> dict[str, Any]:
        return summary_of(bill_on_event(ticket=labels["t2i.ticket"], customer=labels["t2i.customer"],
                                        occurred=occurred, event="poll-1", source="redmine", erp="files",
                                        approve="auto", return_state=True))  # fmt: skip

    first = on_event()

    assert first["period"] == scenario.period and first["customer"] == scenario.customer
    assert first["tickets"] == [str(scenario.resolved)]  # the open issue waits for the period's run
    [posted] = documents(home)  # exactly one invoice, for this customer, with the hand-computed amounts
    assert posted["customer"]["id"] == scenario.customer and posted["currency"] == "EUR"
    assert billed_entries(posted) == scenario.billed  # not the non-billable entry, not the open issue's
    lines = sorted((Decimal(line["quantity"]), Decimal(line["unit_price"]), line["amount_minor"])
                   for line in posted["lines"])  # fmt: skip
    expected = scenario.expected
    assert lines == expected.lines
    amounts = (posted["untaxed_minor"], posted["tax"]["amount_minor"], posted["gross_minor"])
    assert amounts == (expected.untaxed, expected.tax, expected.gross)
    [invoice] = first["invoices"]
    assert invoice["key"] == posted["external_reference"] and invoice["erp_number"] == posted["number"]
    assert invoice["gross_minor"] == expected.gross
    assert first["new_postings"] == 1 and first["posting_failures"] == []

    # The invoice number is in Redmine: on the billed time entries and on the issue (field and note).
    number = posted["number"]
    assert {e: invoice_number_of_entry(redmine, e) for e in scenario.billed} == dict.fromkeys(scenario.billed, number)
    assert invoice_number_of_entry(redmine, scenario.not_billable) == ""
    assert invoice_number_of_entry(redmine, scenario.on_open_issue) == ""
    with redmine.client() as client:
        issue = client.get(f"/issues/{scenario.resolved}.json", params={"include": "journals"}).json()["issue"]
    issue_field = redmine.custom_fields["issue:Invoice number"]
    assert next(f.get("value") for f in issue["custom_fields"] if f["id"] == issue_field) == number
    assert [j["notes"] for j in issue["journals"] if j.get("notes")] == [
        f"Billed on invoice {number}: time entries " + ", ".join(f"#{e}" for e in sorted(scenario.billed))
    ]
    # The write-back's note does not resolve the ticket again: no second event, no second run.
    sent.clear()
    poll(settings_env, sent.extend)
    assert [e for e in sent if e.event == TICKET_RESOLVED] == []

    # The same event again (a retry, a second delivery): nothing billed twice.
    again = on_event()
    assert again["new_postings"] == 0 and again["invoices"] == [] and again["posting_failures"] == []
    assert documents(home) == [posted]

    # The period's run bills what is left (the open issue's hour, the other customer's work), never that work again.
    monthly = summary_of(ticket_to_invoice(period=scenario.period, source="redmine", erp="files", approve="auto",
                                           return_state=True))  # fmt: skip
    assert monthly["posting_failures"] == [] and monthly["reconcile"]["mismatches"] == []
    after = documents(home)
    assert posted in after  # untouched
    ours = [d for d in after if d["customer"]["id"] == scenario.customer]
    assert [billed_entries(d) for d in ours if d != posted] == [{scenario.on_open_issue}]
    [rest] = [d for d in ours if d != posted]
    assert (rest["untaxed_minor"], rest["tax"]["amount_minor"]) == (expected.open_untaxed, expected.open_tax)
    on_invoices = [e for d in after for e in billed_entries(d)]
    assert all(on_invoices.count(e) == 1 for e in scenario.billed)  # each on exactly one invoice
    assert invoice_number_of_entry(redmine, scenario.on_open_issue) == rest["number"]
    assert any(scenario.of_other in billed_entries(d) for d in after if d["customer"]["id"] == scenario.other)
    assert {e: invoice_number_of_entry(redmine, e) for e in scenario.billed} == dict.fromkeys(scenario.billed, number)
