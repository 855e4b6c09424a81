"""The ``ticket-to-invoice`` command.

This module is the composition root: the one place in ``billing`` that reaches up to the flows, and only
inside a command, after the environment for Prefect is set (Prefect reads it when first imported).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from rich.console import Console
from rich.table import Table

from billing.errors import UserFacingError, storage_problem
from billing.money import format_money
from billing.settings import Settings, check_home, load_settings

Period = Annotated[str | None, typer.Option(help="Billing period YYYY-MM. Default: the export's own period.")]
Source = Annotated[
    Literal["files", "redmine"] | None,
    typer.Option(help="Where work comes from: files (a file-drop folder, --input) or redmine "
                 "(TICKET_TO_INVOICE_REDMINE_URL and _API_KEY)."),
]  # fmt: skip
InputDir = Annotated[Path | None, typer.Option("--input", help="Folder of a file-drop export.")]
RulesFile = Annotated[Path | None, typer.Option(help="Rules file (YAML). Default: rules/examples/demo.yaml.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object (and nothing else) on stdout.")]

app = typer.Typer(
    name="ticket-to-invoice",
    help="Turn helpdesk work into correct ERP invoices: extract → validate → price → approve → post → reconcile.\n\n"
    "With no options, `ticket-to-invoice run` bills the bundled sample export (examples/sample-export) with "
    "the example rules into the file-export ERP under var/.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
err = Console(stderr=True)
out = Console()
LOCAL_UI = "http://127.0.0.1:4200/api"


def _prepare_prefect(settings: Settings) -> None:
    """Keep Prefect's runs in the project's home, so `make ui` shows them; use a running local UI if any."""
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if "PREFECT_API_URL" not in os.environ and _local_ui_running():
        os.environ["PREFECT_API_URL"] = LOCAL_UI
    from billing.processes import tie_prefect_server_to_this_process  # its temporary server dies with this process

    tie_prefect_server_to_this_process(settings.prefect_home)


def _start_prefect_server() -> None:
    """Start this process's temporary Prefect server now (unless a server is configured), one process at a
    time per Prefect home: two runs started together on a new home would both migrate its database, and
    the loser's server fails to start with a traceback."""
    if "PREFECT_API_URL" in os.environ:
        return
    from prefect.server.api.server import SubprocessASGIServer

    with open(Path(os.environ["PREFECT_HOME"]) / ".server-start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        SubprocessASGIServer().start()  # the instance the flow's client uses: started once, reused


def _local_ui_running() -> bool:
    try:
        return httpx.get(f"{LOCAL_UI}/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _quiet_stdout(as_json: bool, status: str) -> Iterator[None]:
    """With --json, stdout carries the JSON object alone (Prefect's logs go to stderr); else a spinner."""
    if as_json:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        with err.status(status):
            yield


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task's or flow's traceback; for a user's mistake, an outage or a full disk the
    message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, UserFacingError) or storage_problem(error)):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_errors() -> None:
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForUserErrors())


def _fail(exc: UserFacingError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
    return typer.Exit(exc.exit_code)


@app.command()
def run(
    period: Period = None,
    source: Source = None,
    input_dir: InputDir = None,
    erp: Annotated[
        Literal["tryton", "files"] | None,
        typer.Option(
            help="Where invoices go: tryton (embedded unless TICKET_TO_INVOICE_TRYTON_URL is set) or "
            "files (JSON + CSV import file under var/erp-files)."
        ),
    ] = None,
    rules: RulesFile = None,
    approve: Annotated[
        Literal["auto", "manual"] | None,
        typer.Option(
            help="auto: approve every draft. manual: drafts at or above the rules' threshold wait for "
            "a human in the Prefect UI or `ticket-to-invoice approve`."
        ),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="When another run of this period and ERP is in progress: wait for it to finish (default), or "
            "stop at once without doing anything (exit 3).",
        ),
    ] = None,
    as_json: AsJson = False,
    lines: Annotated[
        bool | None,
        typer.Option(
            "--lines/--no-lines",
            help="With --json: every invoice's lines, and every quarantined, non-billable and held item, in the "
            "answer. Default: only for a period with at most 2,000 of them (a large month's answer stays "
            "kilobytes; its lines are in the ERP's files and the ledger).",
        ),
    ] = None,
) -> None:
    """Bill one period: every work item ends billed, non-billable by a named rule, or quarantined.

    Examples:

        ticket-to-invoice run

        ticket-to-invoice run --period 2026-10 --input ./exports/october --json

        ticket-to-invoice run --approve manual   # then answer in the Prefect UI (make ui)

        ticket-to-invoice run --source redmine --period 2026-10 --json
    """
    try:
        settings = load_settings(
            period=period, source=source, input_dir=input_dir, erp=erp, rules_file=rules, approve=approve, wait=wait
        )
        check_home(settings)
        _prepare_prefect(settings)
        from flows.run_state import summary_of
        from flows.ticket_to_invoice import preflight, ticket_to_invoice

        preflight(settings)  # a user's mistake is an error message here, not a failed run with a traceback
        _quiet_user_errors()  # and one found during the run (too many bad rows) is a message too
        _start_prefect_server()

        with _quiet_stdout(as_json, "Billing…"):
            summary = summary_of(ticket_to_invoice(
                period=settings.period, source=settings.source, input_dir=str(settings.input_dir),
                erp=settings.erp, rules=str(settings.rules_file), approve=settings.approve, wait=settings.wait,
                lines=lines, return_state=True,
            ))  # fmt: skip
    except UserFacingError as exc:
        raise _fail(exc) from None
    except Exception as exc:  # a full disk or a read-only file half-way: the path, not a traceback
        problem = storage_problem(exc, ledger=f"the ledger {settings.resolved_ledger_url}", home=settings.home)
        if problem is None:
            raise
        raise _fail(problem) from None
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary)
    if summary["posting_failures"]:
        raise typer.Exit(1)


SHOWN_INVOICES = 50  # rows of the terminal's invoice table; --json has them all


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"Invoices {summary['period']}")
    for column, justify in (
        ("invoice", "left"),
        ("customer", "left"),
        ("status", "left"),
        ("lines", "right"),
        ("untaxed", "right"),
        ("tax", "right"),
        ("total", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("invoice", "status"))  # type: ignore[arg-type]
    shown = summary["invoices"][:SHOWN_INVOICES]
    if len(summary["invoices"]) > len(shown):
        table.caption = f"the first {len(shown)} of {len(summary['invoices'])} invoices: all of them with --json"
    for inv in shown:
        table.add_row(
            inv["erp_number"] or "—",
            inv["customer_name"] or inv["customer"],
            inv["status"],
            str(inv["line_count"]),
            format_money(inv["total_minor"], inv["currency"]),
            format_money(inv["tax_minor"], inv["currency"]),
            format_money(inv["gross_minor"], inv["currency"]),
        )
    out.print(table)
    if summary["quarantined"]:
        quarantine = Table(title="Quarantined (fix at the source; the next run retries them)")
        quarantine.add_column("work log")
        quarantine.add_column("reason")
        for q in summary["quarantined"]:
            quarantine.add_row(q["source_id"] or "?", q["reason"])
        out.print(quarantine)
    counts = summary["counts"]
    out.print(
        f"{summary['work_items_total']} work items: [green]{counts['billed']} billed[/], "
        f"{counts['non_billable']} non-billable, [red]{counts['quarantined']} quarantined[/], "
        f"{counts['pending_approval']} pending approval, {counts['pending_posting']} pending posting, "
        f"{counts['held']} held; "
        f"{summary['new_postings']} new posting(s)."
    )
    for note in summary.get("notes", []):
        out.print(f"[dim]note: {note}[/]")
    for failure in summary["posting_failures"]:
        err.print(f"[red]posting failed[/] {failure['draft_key']}: {failure['error']}")


@app.command("price")
def price_preview(
    period: Period = None,
    source: Source = None,
    input_dir: InputDir = None,
    rules: RulesFile = None,
    as_json: AsJson = False,
) -> None:
    """Price a period without posting anything: every charge line with its explanation, and the draft totals.

    Shows exactly what `run` would bill now: work already billed is left out, fees and milestones due are in,
    and a period already invoiced shows its supplementary version. Nothing is written: not the ledger, not
    the ERP. Try a rule change here before a real run.

        ticket-to-invoice price --rules my-rules.yaml --json
    """
    try:
        settings = load_settings(period=period, source=source, input_dir=input_dir, rules_file=rules)
        from tasks.extract import make_source
        from tasks.price import preview

        make_source(settings).check()
        with _quiet_stdout(as_json, "Pricing…"):
            result = preview(settings, settings.period or make_source(settings).default_period())
    except UserFacingError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    table = Table(title=f"Charge lines {result['period']}")
    for column in ("work log", "customer", "hours", "billed", "unit price", "amount", "why"):
        table.add_column(column, overflow="fold")
    for line in result["lines"]:
        table.add_row(line["source_id"], line["customer"], line["quantity_raw"], line["quantity_billed"],
                      format_money(line["unit_price_minor"], line["currency"]),
                      format_money(line["amount_minor"], line["currency"]), line["explanation"])  # fmt: skip
    out.print(table)
    for draft in result["drafts"]:
        money = {k: format_money(draft[k], draft["currency"]) for k in ("total_minor", "tax_minor", "gross_minor")}
        out.print(f"{draft['customer']}: {draft['lines']} lines, {money['total_minor']} + tax {money['tax_minor']} = "
                  f"{money['gross_minor']}")  # fmt: skip
    out.print(f"{len(result['non_billable'])} non-billable, {len(result['held'])} held, "
              f"{len(result['quarantined'])} would be quarantined.")  # fmt: skip
    for note in result["notes"]:
        out.print(f"[dim]note: {note}[/]")


@app.command("rules-schema")
def rules_schema() -> None:
    """Print the JSON Schema of rule files (the same as rules/rules.schema.json), for editors:
    put `# yaml-language-server: $schema=rules/rules.schema.json` on the first line of a rules file."""
    from rules.schema import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def reconcile(
    period: Period = None,
    erp: Annotated[Literal["tryton", "files"] | None, typer.Option(help="The ERP to read back from.")] = None,
    source: Annotated[
        Literal["files", "redmine"] | None, typer.Option(help="Also check the source for edits after billing.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Read every posted invoice back from the ERP and compare it with the ledger to the cent.

    Reports mismatches (untaxed, tax or total differ), duplicates (ERP invoices sharing one key) and unbilled
    work items. Exit code 1 when there is a mismatch or a duplicate.

        ticket-to-invoice reconcile --period 2026-10 --json
    """
    try:
        settings = load_settings(period=period, erp=erp, source=source)
        _prepare_prefect(settings)
        from flows.reconcile import reconcile_erp

        with _quiet_stdout(as_json, "Reconciling…"):
            report = reconcile_erp(period=settings.period, erp=settings.erp, source=settings.source)
    except UserFacingError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        table = Table(title=f"Reconciliation {report['period']}")
        for column in ("invoice", "key", "status", "ours (total)", "ERP (total)"):
            table.add_column(column)
        for i in report["invoices"]:
            theirs = i["erp_gross_minor"]
            table.add_row(
                i["erp_number"] or "—",
                i["key"],
                i["status"],
                format_money(i["gross_minor"], i["currency"]),
                "—" if theirs is None else format_money(theirs, i["currency"]),
            )
        out.print(table)
        out.print(
            f"{len(report['mismatches'])} mismatches, {len(report['duplicates'])} duplicates, "
            f"{len(report['unbilled'])} unbilled work items, "
            f"{len(report['changed_after_billing'])} changed after billing."
        )
    if report["mismatches"] or report["duplicates"]:
        raise typer.Exit(1)


@app.command()
def approve(
    approver: Annotated[str, typer.Option(help="Who decides (recorded in the ledger).")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approve.")] = False,
    note: Annotated[str, typer.Option(help="Why (recorded with the decision).")] = "",
    draft: Annotated[
        list[str] | None,
        typer.Option("--draft", help="Decide this draft only (its key, as the form and `run --json` show it); "
                     "repeat for several. Default: every draft a waiting run shows."),
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="Only this waiting flow run.")] = None,
) -> None:
    """Decide invoice drafts that wait for a human: the same as the form of a waiting run in the UI.

    Only runs of this project's billing flow are touched. With --draft, the decision is recorded in the ledger
    (also for a draft whose run timed out: the next run posts it); a waiting run whose drafts are then all
    decided is resumed and posts them.

    Examples:

        ticket-to-invoice approve --approver kim@example.com

        ticket-to-invoice approve --approver kim --reject --note "wrong rates" --draft t2i:ACME:default:2026-10:EUR:v1
    """
    settings = load_settings()
    _prepare_prefect(settings)
    from flows.approvals import decide

    try:
        said = decide(settings, approver=approver, approved=not reject, note=note, drafts=draft or [], run_id=run_id)
    except UserFacingError as exc:
        raise _fail(exc) from None
    for line in said:
        out.print(line)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port of the Prefect server and UI on 127.0.0.1.")] = 4200,
) -> None:
    """Run the service on this machine: Prefect server and UI, a process worker, every deployment of
    prefect.yaml, the automations and the webhook receiver (all on 127.0.0.1). Ctrl-C stops all of it.

    Examples:

        ticket-to-invoice serve          # then open http://127.0.0.1:4200 and "Run" the on-demand deployment

        TICKET_TO_INVOICE_HOME=/srv/billing ticket-to-invoice serve --port 4300
    """
    settings = load_settings()
    check_home(settings)
    from flows.service import running_service

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even when started in the background
    try:
        with running_service(settings, port=port, say=lambda m: out.print(f"[dim]{m}[/]")) as service:
            out.print(service.describe())
            while not stop.wait(1):
                pass
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # a part that did not start: its log says why
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print("stopped")


def main() -> None:
    try:
        app()
    except UserFacingError as exc:  # a last guard: a user's mistake never ends in a traceback
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if (problem := storage_problem(exc)) is None:
            raise
        err.print(f"[bold red]error:[/] {problem}", highlight=False)
        sys.exit(problem.exit_code)


if __name__ == "__main__":
    main()
