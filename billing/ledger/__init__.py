"""The ledger: every work item and its state, invoice drafts and lines, approvals, postings,
ERP mappings and an append-only audit log. SQLite by default, any SQLAlchemy URL by settings."""

from billing.ledger.schema import BILLED_STATES, COUNT_OF_STATE, WorkState
from billing.ledger.store import Ledger, migrate

__all__ = ["BILLED_STATES", "COUNT_OF_STATE", "Ledger", "WorkState", "migrate"]
