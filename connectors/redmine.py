"""Redmine as a source: projects → customers, issues → tickets, time entries → work logs, over its REST API;
and the write-back of invoice numbers once invoices are posted.

Time entries cannot be filtered by update time, so extraction is a window, not a guess: every entry whose
``spent_on`` lies in the period and whose "Invoice number" custom field is still empty. Redmine records
the day of the work, not the hour: an entry counts as done at noon of ``spent_on`` in the customer's
timezone (weekend surcharges apply; after-hours ones cannot).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd

from billing.errors import ConfigurationError
from billing.models import ISSUE_COLUMNS, WORKLOG_COLUMNS, Customer, WorkBatch, content_hash, previous_month
from connectors.http import FatalError, HeaderAuth, OffsetPaginator, QuotaGuard, classify, get_json, make_client
from rules.schema import CustomerDefaults, CustomerSpec, RedmineMapping

SYSTEM = "redmine"
TICKET_COLUMNS = ("ticket_id", "customer_id", "subject", "ticket_type", "priority", "status", "created_at",
                  "resolved_at")  # fmt: skip


def snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def period_window(period: str) -> tuple[str, str]:
    year, month = map(int, period.split("-"))
    return f"{period}-01", f"{period}-{calendar.monthrange(year, month)[1]:02d}"


@dataclass
class WriteBackResult:
    written: list[str] = field(default_factory=list)  # work item keys
    failed: dict[str, str] = field(default_factory=dict)  # work item key → error


class RedmineSource:
    system = SYSTEM

    def __init__(
        self,
        url: str,
        api_key: str,
        mapping: RedmineMapping | None = None,
        customers: dict[str, CustomerSpec] | None = None,
        defaults: CustomerDefaults | None = None,
        instance: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.mapping = mapping or RedmineMapping()
        self.customer_specs = customers or {}
        self.defaults = defaults or CustomerDefaults()
        self.instance = instance or urlparse(self.url).netloc
        self.http = client or make_client(self.url, event_hooks={"response": [QuotaGuard()]})
        self.http.auth = HeaderAuth("X-Redmine-API-Key", api_key)
        self._fields: dict[tuple[str, str], int] | None = None

    # -- checks ----------------------------------------------------------------------------------

    def check(self) -> None:
        """A wrong key is not an error in Redmine (lists come back empty): ask who we are first."""
        try:
            response = self.http.get("/users/current.json")
        except httpx.HTTPError as exc:
            raise ConfigurationError(f"cannot reach Redmine at {self.url}: {exc}",
                                     hint="check TICKET_TO_INVOICE_REDMINE_URL") from None  # fmt: skip
        if response.status_code == 401:
            raise ConfigurationError(f"Redmine at {self.url} rejected the API key",
                                     hint="set TICKET_TO_INVOICE_REDMINE_API_KEY to the key shown under "
                                     "'My account' → 'API access key' (and enable the REST API)")  # fmt: skip
        if response.status_code == 403:
            raise ConfigurationError(f"Redmine at {self.url} refused the REST API (is it enabled?)")
        classify(response)

    def default_period(self) -> str:
        return previous_month()

    def custom_field_id(self, customized_type: str, name: str) -> int:
        """The id of a custom field by its name (``time_entry`` or ``issue``)."""
        if self._fields is None:
            fields = get_json(self.http, "/custom_fields.json").get("custom_fields", [])
            self._fields = {(f["customized_type"], f["name"]): f["id"] for f in fields}
        try:
            return self._fields[(customized_type, name)]
        except KeyError:
            raise ConfigurationError(f"Redmine has no {customized_type} custom field named {name!r}",
                                     hint="create it (Administration → Custom fields) or set redmine."
                                     "invoice_number_field / billable_field in the rules") from None  # fmt: skip

    # -- extraction ------------------------------------------------------------------------------

    def projects(self) -> dict[int, dict[str, Any]]:
        return {p["id"]: p for p in OffsetPaginator(self.http, "/projects.json", "projects").all()}

    def customer_of_projects(self, projects: dict[int, dict[str, Any]]) -> dict[int, str]:
        def root(project: dict[str, Any]) -> dict[str, Any]:
            while self.mapping.rollup_subprojects and project.get("parent") and project["parent"]["id"] in projects:
                project = projects[project["parent"]["id"]]
            return project

        return {pid: self.mapping.project_customers.get(root(p)["identifier"], root(p)["identifier"])
                for pid, p in projects.items()}  # fmt: skip

    def time_entries(self, period: str, unbilled_only: bool = True) -> list[dict[str, Any]]:
        start, end = period_window(period)
        params: dict[str, Any] = {"from": start, "to": end}
        if unbilled_only:
            params[f"cf_{self.custom_field_id('time_entry', self.mapping.invoice_number_field)}"] = "!*"
        if not self.mapping.projects:
            return OffsetPaginator(self.http, "/time_entries.json", "time_entries", params).all()
        entries: dict[int, dict[str, Any]] = {}  # project_id=<identifier> includes its subprojects
        for project in self.mapping.projects:
            for item in OffsetPaginator(self.http, "/time_entries.json", "time_entries",
                                        {**params, "project_id": project}).all():  # fmt: skip
                entries[item["id"]] = item
        return list(entries.values())

    def issues(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        ids = sorted(set(ids))
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), 100):
            chunk = ",".join(map(str, ids[start : start + 100]))
            found += OffsetPaginator(self.http, "/issues.json", "issues", {"issue_id": chunk, "status_id": "*"}).all()
        return found

    def _customers(self, ids: Iterable[str], names: dict[str, str]) -> list[Customer]:
        customers = []
        for customer_id in sorted(set(ids)):
            spec = self.customer_specs.get(customer_id, CustomerSpec())
            customers.append(Customer(
                customer_id=customer_id, name=spec.name or names.get(customer_id, customer_id),
                currency=spec.currency or self.defaults.currency, timezone=spec.timezone or self.defaults.timezone,
                country=spec.country or self.defaults.country, erp_ref=spec.erp_ref,
            ))  # fmt: skip
        return customers

    def extract(self, period: str | None = None, unbilled_only: bool = True) -> WorkBatch:
        period = period or self.default_period()
        projects = self.projects()
        customer_of = self.customer_of_projects(projects)
        names = {customer_of[pid]: p["name"] for pid, p in projects.items() if p["identifier"] == customer_of[pid]}
        entries = self.time_entries(period, unbilled_only)
        issues = self.issues(e["issue"]["id"] for e in entries if e.get("issue"))
        customers = self._customers(customer_of.values(), names)
        zone_of = {c.customer_id: c.timezone for c in customers}
        billable_field = self.mapping.billable_field

        def billable(entry: dict[str, Any]) -> bool:
            value = next((f.get("value") for f in entry.get("custom_fields", []) if f["name"] == billable_field), "")
            return value not in ("0", "false", False)

        frame = pd.DataFrame({
            "source_id": [str(e["id"]) for e in entries],
            "ticket_id": [str(e["issue"]["id"]) if e.get("issue") else None for e in entries],
            "customer_id": [customer_of.get(e["project"]["id"], e["project"].get("name")) for e in entries],
            "user": [e["user"]["name"] for e in entries],
            "service_type": [self.mapping.activities.get(e["activity"]["name"], snake(e["activity"]["name"]))
                             for e in entries],
            "spent_on": [e["spent_on"] for e in entries],
            "hours": [e["hours"] for e in entries],
            "billable": [billable(e) for e in entries],
            "note": [e.get("comments") or "" for e in entries],
        })  # fmt: skip
        worklogs = self._canonical(frame, period, zone_of)
        tickets = pd.DataFrame({
            "ticket_id": [str(i["id"]) for i in issues],
            "customer_id": [customer_of.get(i["project"]["id"]) for i in issues],
            "subject": [i.get("subject", "") for i in issues],
            "ticket_type": [i["tracker"]["name"] for i in issues],
            "priority": [i["priority"]["name"] for i in issues],
            "status": [i["status"]["name"] for i in issues],
            "created_at": pd.to_datetime([i.get("created_on") for i in issues], utc=True),
            "resolved_at": pd.to_datetime([i.get("closed_on") for i in issues], utc=True),
        }, columns=list(TICKET_COLUMNS))  # fmt: skip
        no_issues = pd.DataFrame(columns=list(ISSUE_COLUMNS))  # the API hands typed values: nothing to parse
        return WorkBatch(source_system=SYSTEM, instance=self.instance, period=period, customers=customers,
                         tickets=tickets, worklogs=worklogs, issues=no_issues)  # fmt: skip

    def _canonical(self, frame: pd.DataFrame, period: str, zone_of: dict[str, str]) -> pd.DataFrame:
        # Noon of the day it was spent, in the customer's timezone: Redmine keeps no time of day.
        started = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
        zones = frame["customer_id"].map(zone_of).fillna(self.defaults.timezone)
        for zone, index in zones.groupby(zones).groups.items():
            local = pd.to_datetime(frame.loc[index, "spent_on"]) + pd.Timedelta(hours=12)
            started.loc[index] = local.dt.tz_localize(str(zone)).dt.tz_convert("UTC")
        worklogs = pd.DataFrame({
            "key": f"{SYSTEM}:{self.instance}:time_entry:" + frame["source_id"],
            "source_system": SYSTEM, "instance": self.instance, "object_type": "time_entry",
            "source_id": frame["source_id"], "ticket_id": frame["ticket_id"],
            "customer_id": frame["customer_id"].astype("category"), "user": frame["user"],
            "service_type": frame["service_type"].astype("category"), "started_at": started,
            "raw_seconds": np.rint(frame["hours"].astype("float64") * 3600).astype("Int64"),
            "billable": frame["billable"].astype(bool), "note": frame["note"], "period": period,
            "source_file": "time_entries", "source_row": frame["source_id"],
        })  # fmt: skip
        worklogs["content_hash"] = content_hash(worklogs)
        return worklogs[list(WORKLOG_COLUMNS)].reset_index(drop=True)

    # -- write-back ------------------------------------------------------------------------------

    def _put(self, path: str, body: dict[str, Any]) -> None:
        response = self.http.put(path, json=body)
        classify(response)

    def write_back(self, billed: pd.DataFrame) -> WriteBackResult:
        """Write each invoice number into the time entries it bills, and note it on their issues.

        ``billed`` has columns ``key, source_id, ticket_id, erp_number``. Setting a field to the value it
        already has is harmless, so a retried write-back does no harm; it never touches the posting."""
        result = WriteBackResult()
        entry_field = self.custom_field_id("time_entry", self.mapping.invoice_number_field)
        for row in billed.itertuples():
            try:
                self._put(
                    f"/time_entries/{row.source_id}.json",
                    {"time_entry": {"custom_fields": [{"id": entry_field, "value": row.erp_number}]}},
                )
                result.written.append(row.key)
            except (FatalError, httpx.HTTPError) as exc:  # fmt: skip
                result.failed[row.key] = str(exc)
        issue_field = self._issue_field()
        with_ticket = billed[billed["ticket_id"].notna() & billed["key"].isin(result.written)]
        for (ticket, number), group in with_ticket.groupby(["ticket_id", "erp_number"]):
            body: dict[str, Any] = {"notes": f"Billed on invoice {number}: time entries "
                                    + ", ".join(f"#{s}" for s in sorted(group["source_id"]))}  # fmt: skip
            if issue_field is not None:
                body["custom_fields"] = [{"id": issue_field, "value": number}]
            try:
                self._put(f"/issues/{ticket}.json", {"issue": body})
            except (FatalError, httpx.HTTPError) as exc:
                for key in group["key"]:  # retried whole on the next run: the entries' field is idempotent
                    result.failed[key] = f"issue #{ticket} note: {exc}"
        result.written = [key for key in result.written if key not in result.failed]
        return result

    def _issue_field(self) -> int | None:
        try:
            return self.custom_field_id("issue", self.mapping.invoice_number_field)
        except ConfigurationError:
            return None  # the note alone tells the helpdesk
