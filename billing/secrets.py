"""Credentials from settings (environment variables, never files) or, failing that, Prefect Secret blocks.

A block is looked up by name only when the setting is empty, so a machine without a Prefect server and with its
environment set never talks to one. Block names: ``ticket-to-invoice-<what>`` (e.g.
``ticket-to-invoice-tryton-password``, ``ticket-to-invoice-redmine-api-key``,
``ticket-to-invoice-webhook-zendesk``); create one in the UI (Blocks → Secret) or with
``Secret(value="...").save("ticket-to-invoice-tryton-password")``.
"""

from __future__ import annotations

from pydantic import SecretStr

BLOCK_PREFIX = "ticket-to-invoice-"


def block_name(what: str) -> str:
    return BLOCK_PREFIX + what.replace("_", "-")


def secret(value: SecretStr | None, what: str) -> SecretStr | None:
    """The setting's value, or the Secret block ``ticket-to-invoice-<what>``, or None when neither exists."""
    if value is not None and value.get_secret_value():
        return value
    if not prefect_server_configured():
        return None
    try:
        from prefect.blocks.system import Secret

        block = Secret.load(block_name(what), validate=False)
    except Exception:  # no server, no such block: the caller says what is missing
        return None
    stored = block.get()
    return SecretStr(str(stored)) if stored else None


def prefect_server_configured() -> bool:
    """True when a Prefect API is configured: without one, a lookup would start a temporary server (10 s)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)
