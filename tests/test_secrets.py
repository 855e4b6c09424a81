"""Credentials from the setting, else a Prefect Secret block (against a real Prefect server), else a refusal that
names both; the value reaches the system it is for, and no log line or message."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from billing.errors import ConfigurationError
from billing.secrets import required_secret
from billing.settings import Settings
from connectors.redmine import RedmineSource
from connectors.tryton import TrytonErp
from connectors.tryton_rpc import dumps
from tasks.extract import make_source
from tasks.post import make_erp
from tests.conftest import DEMO_RULES

TRYTON = "http://tryton.test"
REDMINE = "http://redmine.test"
FROM_BLOCK = "pw-from-the-block-5b1f"  # distinctive, so a leak into a log or message is found
FROM_SETTING = "pw-from-the-setting-0c2e"


def tryton_settings(home: Path, password: str | None = None) -> Settings:
    return Settings(home=home, erp="tryton", tryton_url=TRYTON, tryton_database="db",
                    tryton_password=SecretStr(password) if password is not None else None)  # fmt: skip


def redmine_settings(home: Path, api_key: str | None = None) -> Settings:
    return Settings(home=home, source="redmine", redmine_url=REDMINE, rules_file=DEMO_RULES,
                    redmine_api_key=SecretStr(api_key) if api_key is not None else None)  # fmt: skip


def password_sent_at_login(erp: TrytonErp) -> str:
    """Log in to a recorded Tryton and return the password the connector sent."""
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["method"] == "common.db.login":
            sent.append(body["params"][1]["password"])
            return httpx.Response(200, text=dumps({"id": 1, "result": [1, "session"]}))
        return httpx.Response(200, text=dumps({"id": 1, "result": {"company": 1, "id": 1}}))

    with respx.mock:  # only Tryton's address: the Prefect client is done by now
        respx.post(f"{TRYTON}/db/rpc/").mock(side_effect=server)
        erp.rpc.login()
    return sent[0]


def api_key_sent(source: RedmineSource) -> str:
    with respx.mock:
        route = respx.get(f"{REDMINE}/users/current.json").mock(return_value=httpx.Response(200, json={"user": {}}))
        source.check()
    return str(route.calls[0].request.headers["X-Redmine-API-Key"])


@pytest.fixture
def no_prefect_api() -> Iterator[None]:
    """As a machine without a Prefect server: blocks are not read (the session's test server may be running)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture
def blocks(prefect_server: None) -> Iterator[dict[str, str]]:
    """Secret blocks saved on the test server for one test (``blocks[name] = value``), deleted afterwards."""
    from prefect.blocks.system import Secret

    saved: dict[str, str] = {}
    yield saved
    for name in saved:
        Secret.delete(name)


def save_blocks(blocks: dict[str, str], **values: str) -> None:
    from prefect.blocks.system import Secret

    for name, value in values.items():
        Secret(value=value).save(name, overwrite=True)
        blocks[name] = value


# -- without a Prefect server ---------------------------------------------------------------------------


def test_the_setting_is_used_without_asking_prefect(tmp_path: Path, no_prefect_api: None) -> None:
    erp = make_erp(tryton_settings(tmp_path, FROM_SETTING))
    assert isinstance(erp, TrytonErp) and password_sent_at_login(erp) == FROM_SETTING
    source = make_source(redmine_settings(tmp_path, FROM_SETTING))
    assert isinstance(source, RedmineSource) and api_key_sent(source) == FROM_SETTING


def test_neither_setting_nor_server_is_refused_naming_both(tmp_path: Path, no_prefect_api: None) -> None:
    with pytest.raises(ConfigurationError) as refused:
        make_erp(tryton_settings(tmp_path))
    message = str(refused.value)
    assert "TICKET_TO_INVOICE_TRYTON_PASSWORD is not set" in message
    assert "Prefect Secret block 'ticket-to-invoice-tryton-password'" in message
    assert "PREFECT_API_URL" in message  # why the block was not even looked for
    assert "Secret(value=...).save('ticket-to-invoice-tryton-password')" in str(refused.value.hint)

    with pytest.raises(ConfigurationError) as refused:
        make_source(redmine_settings(tmp_path, ""))  # an empty variable is no key either
    assert "TICKET_TO_INVOICE_REDMINE_API_KEY is not set" in str(refused.value)
    assert "'ticket-to-invoice-redmine-api-key'" in str(refused.value)


# -- against a real Prefect server ----------------------------------------------------------------------


@pytest.mark.integration
def test_the_block_is_used_when_the_setting_is_empty(
    tmp_path: Path, blocks: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    save_blocks(blocks, **{"ticket-to-invoice-tryton-password": FROM_BLOCK,
                           "ticket-to-invoice-redmine-api-key": FROM_BLOCK + "-key"})  # fmt: skip
    caplog.set_level(logging.DEBUG)

    assert password_sent_at_login(make_erp(tryton_settings(tmp_path))) == FROM_BLOCK  # type: ignore[arg-type]
    assert password_sent_at_login(make_erp(tryton_settings(tmp_path, ""))) == FROM_BLOCK  # type: ignore[arg-type]
    assert api_key_sent(make_source(redmine_settings(tmp_path))) == FROM_BLOCK + "-key"  # type: ignore[arg-type]
    # The setting still wins over the block.
    assert password_sent_at_login(make_erp(tryton_settings(tmp_path, FROM_SETTING))) == FROM_SETTING  # type: ignore[arg-type]
    assert FROM_BLOCK not in caplog.text and FROM_SETTING not in caplog.text


@pytest.mark.integration
def test_no_setting_and_no_block_on_the_server_is_refused_naming_both(tmp_path: Path, blocks: dict[str, str]) -> None:
    save_blocks(blocks, **{"ticket-to-invoice-webhook-jira": FROM_BLOCK})  # another block does not count
    with pytest.raises(ConfigurationError) as refused:
        make_erp(tryton_settings(tmp_path))
    assert str(refused.value) == (
        f"the Tryton at {TRYTON} needs a credential: TICKET_TO_INVOICE_TRYTON_PASSWORD is not set and there is no "
        "Prefect Secret block 'ticket-to-invoice-tryton-password'"
    )
    with pytest.raises(ConfigurationError) as refused:
        make_source(redmine_settings(tmp_path))
    assert str(refused.value).endswith("TICKET_TO_INVOICE_REDMINE_API_KEY is not set and there is no Prefect Secret "
                                       "block 'ticket-to-invoice-redmine-api-key'")  # fmt: skip


@pytest.mark.integration
def test_an_unreachable_prefect_server_is_not_reported_as_a_missing_block(prefect_server: None) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    nobody_there = {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(nobody_there), pytest.raises(ConfigurationError) as refused:
        required_secret(None, "x", variable="X", needed_for="a test")
    assert "no Prefect Secret block 'ticket-to-invoice-x' (the block could not be read: " in str(refused.value)
