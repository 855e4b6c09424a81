"""Reconcile a period on its own: read the posted invoices back from the ERP and compare to the cent."""

from __future__ import annotations

from typing import Any, Literal

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_table_artifact

from billing.errors import UserFacingError
from billing.money import format_money
from billing.settings import load_settings
from flows.run_state import label_run, refused
from tasks.extract import resolve_period
from tasks.post import erp_session
from tasks.reconcile import reconcile


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"reconcile {flow_run.parameters.get('period') or 'latest period'}"


@flow(name="reconcile", flow_run_name=_run_name, log_prints=True)
def reconcile_erp(
    period: str | None = None,
    erp: Literal["tryton", "files"] | None = None,
    source: Literal["files", "redmine"] | None = None,
) -> dict[str, Any] | State[Any]:
    """Read a period's posted invoices back from the ERP and compare them to the ledger, to the cent.

    Args:
        period: The month to reconcile, YYYY-MM. Empty: the source's default period (as for billing).
        erp: The ERP to read: tryton or files. Empty: TICKET_TO_INVOICE_ERP.
        source: The source whose default period applies when period is empty. Empty: TICKET_TO_INVOICE_SOURCE.
    """
    try:
        settings = load_settings(period=period, erp=erp, source=source)
        period = resolve_period(settings)
        label_run(period, name=f"reconcile {period}")
        with erp_session(settings, {int(period[:4])}, say=get_run_logger().info) as settings:
            report = reconcile(settings, period)
    except UserFacingError as exc:
        return refused(exc)
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
