"""Credentials from settings (environment variables, never files) or, failing that, Prefect Secret blocks.

A block is looked up by name only when the setting is empty, so a machine without a Prefect server and with its
environment set never talks to one. Block names: ``ticket-to-invoice-<what>`` (e.g.
``ticket-to-invoice-tryton-password``, ``ticket-to-invoice-redmine-api-key``,
``ticket-to-invoice-webhook-zendesk``); create one in the UI (Blocks → Secret) or with
``Secret(value="...").save("ticket-to-invoice-tryton-password")``.

A value found here is handed to the connector that needs it and nowhere else: never logged, never put in a
message (the messages name the setting and the block, not what they hold).
"""

from __future__ import annotations

from pydantic import SecretStr

from billing.errors import ConfigurationError

BLOCK_PREFIX = "ticket-to-invoice-"


class BlockUnreadable(Exception):
    """The Prefect API could not answer whether the block exists (down, refused, an error)."""


def block_name(what: str) -> str:
    return BLOCK_PREFIX + what.replace("_", "-")


def secret(value: SecretStr | None, what: str) -> SecretStr | None:
    """The setting's value, or the Secret block ``ticket-to-invoice-<what>``, or None when neither exists."""
    try:
        return _setting_or_block(value, what)
    except BlockUnreadable:  # the caller says what is missing
        return None


def required_secret(value: SecretStr | None, what: str, *, variable: str, needed_for: str) -> str:
    """The credential for ``needed_for`` from the setting (environment variable ``variable``) or its Secret block.

    Neither: a ``ConfigurationError`` naming both, and why the block was not read when it was not."""
    try:
        found = _setting_or_block(value, what)
        unread = ""
    except BlockUnreadable as exc:
        found, unread = None, f" (the block could not be read: {exc})"
    if found is not None:
        return found.get_secret_value()
    if not unread and not prefect_server_configured():
        unread = " (blocks are read only when PREFECT_API_URL points at a Prefect server)"
    raise ConfigurationError(
        f"{needed_for} needs a credential: {variable} is not set and there is no Prefect Secret block "
        f"{block_name(what)!r}{unread}",
        hint=f"set {variable}, or create the Secret block in the Prefect UI (Blocks → Secret) or with "
        f"Secret(value=...).save({block_name(what)!r}); see README, Credentials",
    )


def _setting_or_block(value: SecretStr | None, what: str) -> SecretStr | None:
    if value is not None and value.get_secret_value():
        return value
    if not prefect_server_configured():
        return None
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(block_name(what), validate=False)
    except ValueError:  # Prefect's "Unable to find block document named …"
        return None
    except Exception as exc:  # no server there, or an error on it: not the same as "no such block"
        raise BlockUnreadable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    stored = block.get()
    return SecretStr(str(stored)) if stored else None


def prefect_server_configured() -> bool:
    """True when a Prefect API is configured: without one, a lookup would start a temporary server (10 s)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)
