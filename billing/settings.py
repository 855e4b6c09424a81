"""Settings from environment variables (``TICKET_TO_INVOICE_*``) and an optional TOML config file.

Precedence: explicit arguments (CLI options) > environment > config file > defaults.
The config file is ``$TICKET_TO_INVOICE_CONFIG`` or ``./ticket-to-invoice.toml`` when it exists.
Credentials never live here in plain text: they come from the environment, else Prefect Secret blocks
(``billing.secrets``).
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from billing.errors import ConfigurationError, StorageError
from billing.models import PERIOD_RE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EXPORT = PROJECT_ROOT / "examples" / "sample-export"
EXAMPLE_RULES = PROJECT_ROOT / "rules" / "examples" / "demo.yaml"


def config_file() -> Path:
    return Path(os.environ.get("TICKET_TO_INVOICE_CONFIG", "ticket-to-invoice.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TICKET_TO_INVOICE_", extra="ignore")

    home: Path = Field(
        default=PROJECT_ROOT / "var",
        description="Folder for the ledger, ERP exports, reports and embedded systems.",
    )
    ledger_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the ledger; default: a SQLite file in `home`."
    )
    source: Literal["files", "redmine"] = "files"
    redmine_url: str | None = Field(
        default=None, description="Redmine's base URL, for --source redmine.",
        validation_alias=AliasChoices("TICKET_TO_INVOICE_REDMINE_URL", "REDMINE_URL", "redmine_url"),
    )  # fmt: skip
    redmine_api_key: SecretStr | None = Field(
        default=None, description="From the environment, never a file; empty: the Prefect Secret block "
        "ticket-to-invoice-redmine-api-key.",
        validation_alias=AliasChoices("TICKET_TO_INVOICE_REDMINE_API_KEY", "REDMINE_API_KEY", "redmine_api_key"),
    )  # fmt: skip
    redmine_instance: str | None = Field(default=None, description="A stable name of the Redmine (default: its host).")
    input_dir: Path = Field(default=SAMPLE_EXPORT, description="Folder of a file-drop export.")
    rules_file: Path = Field(default=EXAMPLE_RULES, description="Pricing and approval rules (YAML).")
    erp: Literal["tryton", "files"] = Field(
        default="tryton", description="tryton (embedded unless tryton_url is set) or files (JSON + CSV export)."
    )
    tryton_url: str | None = Field(default=None, description="A running Tryton; default: an embedded one.")
    tryton_database: str = "ticket_to_invoice"
    tryton_user: str = "admin"
    tryton_password: SecretStr | None = Field(
        default=None, description="From the environment, never a file; empty: the Prefect Secret block "
        "ticket-to-invoice-tryton-password.",
    )  # fmt: skip
    approve: Literal["auto", "manual"] = "auto"
    approval_timeout_seconds: int = Field(default=3600, ge=1)
    period: str | None = Field(default=None, description="YYYY-MM; default: the export's own period.")
    wait: bool = Field(
        default=True,
        description="When another run of the same period and ERP is in progress: wait for it (true), or stop at "
        "once without doing anything (false, exit 3).",
    )
    lock_wait_seconds: int = Field(default=3600, ge=0, description="How long to wait for another run, at most.")
    max_failure_rate: float = Field(
        default=0.2, ge=0, le=1,
        description="Stop the run when more than this share of one suite's rows fails validation (0.2 = 20%).",
    )  # fmt: skip
    data_docs_keep: int = Field(
        default=50, ge=1, description="Data Docs of this many most recent runs are kept under HOME/data-docs.",
    )  # fmt: skip
    erp_limit: str | None = Field(
        default=None,
        description="The Prefect global concurrency limit postings hold a slot of. Empty: one per ERP instance, "
        "erp:tryton:<host:port>:<database> or erp:files:<a hash of the folder>; name one to share it otherwise.",
    )
    erp_concurrency_slots: int = Field(
        default=1, ge=1,
        description="Slots of the Prefect global concurrency limit of the ERP (erp_limit) that a posting holds one "
        "of: how many postings into that ERP run at once, across every run, ledger and worker using the "
        "Prefect server. 1: invoices are numbered by the ERP in the order they are posted, and Tryton numbers "
        "twice under concurrent posts on SQLite. Made with these slots by `ticket-to-invoice serve`, or by the "
        "first posting when missing; change it there (UI: Concurrency) afterwards.",
    )  # fmt: skip
    erp_creates_customers: bool = Field(
        default=True,
        description="The ERP may create a customer it does not know (by its code). False: a draft whose customer "
        "has no erp_ref and no remembered ERP mapping is not posted (the drafts suite says why).",
    )
    failure_rate_min_rows: int = Field(
        default=10, ge=1,
        description="A suite of fewer rows never stops the run (one bad customer of four is no trend); its bad "
        "rows are still quarantined.",
    )  # fmt: skip

    webhook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Shared secret per webhook source (JSON: {"zendesk": "..."}); a source without one here '
        "is read from the Prefect Secret block `ticket-to-invoice-webhook-<source>`, and without either its "
        "deliveries are refused.",
    )
    webhook_tolerance_seconds: int = Field(
        default=300, ge=1, description="A signed webhook delivery older (or newer) than this is refused as stale."
    )
    prefect_database: Literal["postgresql", "sqlite"] = Field(
        default="postgresql",
        description="The database of the Prefect server `ticket-to-invoice serve` starts: postgresql (a cluster of "
        "Debian's PostgreSQL under HOME/prefect/postgresql, started and stopped with the service) or sqlite "
        "(Prefect's own file; event-triggered runs then often start 2 to 6 s later, on SQLite's lock retries). "
        "PREFECT_SERVER_DATABASE_CONNECTION_URL, when set, names the database instead.",
    )
    receiver_port: int = Field(default=4280, ge=1, le=65535, description="Port of the webhook receiver (127.0.0.1).")

    @field_validator("period")
    @classmethod
    def _a_month(cls, value: str | None) -> str | None:
        if value is not None and not PERIOD_RE.match(value):
            raise ValueError("a billing period is a month written YYYY-MM, e.g. 2026-10")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, env_settings, toml)

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.home / 'ledger.db'}"

    @property
    def erp_files_dir(self) -> Path:
        return self.home / "erp-files"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"


# Where a setting comes from when it is given explicitly: the command-line option (and flow parameter) name.
OPTION_OF = {"input_dir": "--input", "rules_file": "--rules"}


def load_settings(**overrides: object) -> Settings:
    """Settings with the given overrides (``None`` values are ignored, so CLI defaults fall through).

    A bad value is a ``ConfigurationError`` naming the option, variable or config file it came from."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{config_file()}: not a valid TOML file: {exc}") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            where = (OPTION_OF.get(name, f"--{name.replace('_', '-')}") if name in given
                     else f"TICKET_TO_INVOICE_{name.upper()} (or {name!r} in {config_file()})")  # fmt: skip
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {error.get('input')!r} is not valid: {message}")
        raise ConfigurationError("; ".join(problems)) from None


def check_home(settings: Settings) -> Path:
    """Make sure the home exists and can be written (before anything else is), or say which path cannot."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.home):
            pass
    except OSError as exc:
        raise StorageError(
            f"the home folder {settings.home} (TICKET_TO_INVOICE_HOME) cannot be written: {exc.strerror}",
            hint="point TICKET_TO_INVOICE_HOME at a writable folder",
        ) from None
    return settings.home
