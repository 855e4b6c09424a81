"""Reconcile a period on its own: read the posted invoices back from the ERP and compare to the cent."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from billing.money import format_money
from billing.settings import load_settings
from tasks.extract import resolve_period
from tasks.post import erp_session
from tasks.reconcile import reconcile


@flow(name="reconcile", log_prints=True)
def reconcile_erp(
    period: str | None = None,
    erp: Literal["tryton", "files"] | None = None,
    source: Literal["files", "redmine"] | None = None,
) -> dict[str, Any]:
    settings = load_settings(period=period, erp=erp, source=source)
    period = resolve_period(settings)
    with erp_session(settings, {int(period[:4])}, say=get_run_logger().info) as settings:
        report = reconcile(settings, period)
    create_table_artifact(
        key=f"reconcile-{period.replace('-', '')}",
        table=[{"invoice": i["erp_number"], "key": i["key"], "status": i["status"],
                "ours": format_money(i["gross_minor"], i["currency"]),
                "erp": format_money(i["erp_gross_minor"], i["currency"]) if i["erp_gross_minor"] is not None else "—"}
               for i in report.invoices],
        description=f"ERP against ledger, {period}: {len(report.mismatches)} mismatches, "
        f"{len(report.duplicates)} duplicates, {len(report.unbilled)} unbilled",
    )  # fmt: skip
    return report.as_dict()
