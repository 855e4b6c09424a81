"""The approver's path in the Prefect UI, in a real browser: a monthly run waits for a human; they open it in
headless Chromium, press Resume, decide each invoice in the form (one approved, one rejected, two left for
later), add notes and submit. Only the approved invoice is posted, and the decisions and notes are in the ledger.

Needs Debian's `chromium` and `chromium-driver` (tests/system/install-debian-packages.sh, run by `make test`)
and selenium (the `dev` extra). Screenshots of each step are saved in the test's tmp dir.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from billing.ledger import Ledger
from billing.models import DraftState
from tasks.approve import headline
from tasks.reconcile import dashboard_key
from tests.service_fixture import logs_until, run_deployment, wait_for

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PERIOD = "2026-10"
APPROVER = "kim@example.com"
APPROVE_NOTE = "Hours match the agreement; approved."
REJECT_NOTE = "On-site visits billed at the project rate: re-price before sending."
UI_WAIT = 60  # seconds: on 2 cores the browser shares the CPU with the server, the worker and the run


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium from Debian, driven by Debian's chromedriver (no driver download: paths given)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are missing: run tests/system/install-debian-packages.sh as root")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, saved when a step fails
    driver = webdriver.Chrome(
        service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and every chromium process it started


class Page:
    """The browser with explicit waits and evidence: every step that fails saves a screenshot and the page's
    HTML next to the other screenshots and names them in the assertion message."""

    def __init__(self, driver: WebDriver, folder: Path) -> None:
        self.driver, self.folder = driver, folder
        self.shots: list[Path] = []

    def shot(self, name: str) -> Path:
        path = self.folder / f"{len(self.shots) + 1}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def evidence(self) -> str:
        return "screenshots: " + ", ".join(str(p) for p in self.shots)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        try:
            yield
        except (WebDriverException, AssertionError) as exc:
            name = "failed-" + "-".join(what.split()[:4]).lower()
            try:
                self.shot(name)
                (self.folder / f"{name}.html").write_text(self.driver.page_source)
                console = [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]
                (self.folder / f"{name}.console.txt").write_text("\n".join(console) + "\n")
            except WebDriverException:
                pass
            raise AssertionError(f"{what}: {type(exc).__name__}: {str(exc).strip()[:500]}\n{self.evidence()}; "
                                 f"page source and browser console: {self.folder / name}.html, .console.txt"
                                 ) from exc  # fmt: skip

    def wait(self, seconds: float = UI_WAIT) -> WebDriverWait[WebDriver]:
        return WebDriverWait(self.driver, seconds)

    def visible(self, xpath: str, within: WebElement | None = None, seconds: float = UI_WAIT) -> WebElement:
        if within is None:
            return self.wait(seconds).until(ec.visibility_of_element_located((By.XPATH, xpath)))
        return self.wait(seconds).until(
            lambda _: next((e for e in within.find_elements(By.XPATH, xpath) if e.is_displayed()), False)
        )

    def clickable(self, xpath: str, seconds: float = UI_WAIT) -> WebElement:
        return self.wait(seconds).until(ec.element_to_be_clickable((By.XPATH, xpath)))


def text(value: str) -> str:
    """``value`` as an XPath string literal (customer names may hold either quote)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in value.split("'")) + ")"


def field(label: str, control: str) -> str:
    """The ``control`` (select, textarea) of the form field titled ``label``: Prefect's schema form shows the
    title, adds " (Optional)" to a field with a default, and puts the control after its label."""
    return (f".//label[normalize-space(.)={text(label)} or normalize-space(.)={text(label + ' (Optional)')}]"
            f"/following::{control}[1]")  # fmt: skip


def test_an_approver_decides_each_invoice_in_the_prefect_ui(
    service: tuple[str, dict[str, str]], browser: WebDriver, tmp_path: Path
) -> None:
    api, env = service
    home = Path(env["TICKET_TO_INVOICE_HOME"])
    run = run_deployment(api, "monthly", {"period": PERIOD})  # approve: manual, from prefect.yaml
    assert (run["state"]["type"], run["state"]["name"]) == ("PAUSED", "Suspended"), run["state"]
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    drafts = {d.customer_id: d for d in ledger.drafts(PERIOD)}
    assert sorted(drafts) == ["ACME", "GLOBEX", "INITECH", "NORTHWIND"]  # all above the auto-approval threshold
    approved, rejected = drafts["ACME"], drafts["GLOBEX"]
    later = [drafts["INITECH"], drafts["NORTHWIND"]]

    page, run_page = Page(browser, tmp_path), f"{api.removesuffix('/api')}/runs/flow-run/{run['id']}"
    with page.step("open the suspended run and press Resume"):
        browser.get(run_page)
        page.visible("//*[contains(@class, 'state-badge')][normalize-space()='Suspended']")
        page.clickable("//button[normalize-space()='Resume']").click()
        form = page.visible("//*[@role='dialog'][.//*[normalize-space()='Resume Flow Run']]")
    page.shot("form-opened")

    with page.step("read the form"):
        # The form's description (tasks.approve.describe) lists every draft waiting. It is in the dialog, but
        # Prefect 3.8's modal gives it zero height when the fields overflow: a person does not see it.
        summary = form.find_element(By.XPATH, ".//article[.//table]")
        customers = [td.get_attribute("textContent").strip() for td in summary.find_elements(By.XPATH, ".//td[1]")]
        assert customers == [d.customer_name for d in drafts.values()]
        selects = {d.key: page.visible(field(headline(d), "select"), within=form) for d in drafts.values()}
        decisions = {key: Select(element) for key, element in selects.items()}
        for draft_key, decision in decisions.items():
            assert decision.first_selected_option.text == "decide later", f"{draft_key} starts undecided"
            assert [o.text for o in decision.options] == ["approve", "reject", "decide later"]

    with page.step("fill the form"):
        page.visible(field("Approver", "textarea"), within=form).send_keys(APPROVER)
        decisions[approved.key].select_by_visible_text("approve")
        page.visible(field(f"Note on {approved.customer_name}", "textarea"), within=form).send_keys(APPROVE_NOTE)
        decisions[rejected.key].select_by_visible_text("reject")
        page.visible(field(f"Note on {rejected.customer_name}", "textarea"), within=form).send_keys(REJECT_NOTE)
        chosen = {key: decision.first_selected_option.text for key, decision in decisions.items()}
        assert chosen == {approved.key: "approve", rejected.key: "reject"} | {d.key: "decide later" for d in later}
    for draft, shown in ((approved, "approved"), (rejected, "rejected")):  # the form is taller than the window
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", selects[draft.key])
        page.shot(f"form-filled-{shown}")

    with page.step("submit the form"):
        form.find_element(By.XPATH, ".//button[normalize-space()='Submit']").click()
        page.wait().until(ec.invisibility_of_element(form))  # it closes once the server took the answer

    browser.get("about:blank")  # the run page's graph keeps a core busy: leave it to the resumed run meanwhile
    done = wait_for(api, run["id"], leave=("PAUSED",))
    ended = done["state"]["name"]  # "Completed", or what went wrong: shown as the UI shows it, then asserted
    with page.step(f"see the run {ended} in the UI"):
        browser.get(run_page)
        page.visible(f"//*[contains(@class, 'state-badge')][normalize-space()={text(ended)}]", seconds=120)
    page.shot(f"run-{ended.lower()}")
    if ended == "Completed":
        with page.step("see the run's artifacts in the UI"):  # what finance reads after the run
            page.clickable("//li[contains(@class, 'p-tab')][normalize-space()='Artifacts']").click()
            for key in (dashboard_key(PERIOD), f"invoices-{PERIOD.replace('-', '')}"):
                page.visible(f"//*[normalize-space()={text(key)}]", seconds=60)
        page.shot("run-artifacts")
    evidence = page.evidence()
    assert done["state"]["type"] == "COMPLETED", f"{done['state']}\n{evidence}; service logs: {home / 'service-logs'}"

    # Only the approved invoice reached the ERP, once; the rejected one and the undecided ones did not.
    invoices = sorted(p.name for p in (home / "erp-files").glob("*/*.json"))
    assert invoices == ["ACME-default-EUR-v1.json"], f"{invoices}\n{evidence}"
    assert [p.draft_key for p in ledger.postings(PERIOD)] == [approved.key], evidence
    states = ledger.draft_states(d.key for d in drafts.values())
    assert states == {approved.key: DraftState.POSTED, rejected.key: DraftState.REJECTED,
                      **{d.key: DraftState.DRAFTED for d in later}}, f"{states}\n{evidence}"  # fmt: skip

    # Who decided what, why, and in which run: as typed in the form.
    said = {
        key: [(a.approver, a.decision, a.note, a.flow_run_id) for a in ledger.approvals(key)]
        for key in (approved.key, rejected.key, *(d.key for d in later))
    }
    assert said == {
        approved.key: [(APPROVER, "approved", APPROVE_NOTE, run["id"])],
        rejected.key: [(APPROVER, "rejected", REJECT_NOTE, run["id"])],
        **{d.key: [] for d in later},
    }, f"{said}\n{evidence}"
    said_in_logs = [f"{APPROVER} decided: {approved.key} approved, {rejected.key} rejected; 2 left for later",
                    "posted 1 invoice: "]  # fmt: skip
    logs = logs_until(api, run["id"], said_in_logs)
    assert all(any(m.startswith(s) for m in logs) for s in said_in_logs), f"{logs}\n{evidence}"
