"""Run the flow in this process and kill the process (os._exit) right after Tryton has created the invoices
and before they are posted: what a power cut or an OOM kill does. Used by tests/test_tryton.py."""

import os
import sys

from connectors.tryton import TrytonErp
from flows.ticket_to_invoice import ticket_to_invoice


def killed(*_: object, **__: object) -> None:
    os._exit(9)


TrytonErp._post_ids = killed  # type: ignore[method-assign]
ticket_to_invoice(input_dir=sys.argv[1], erp="tryton")
sys.exit("the flow should have been killed before posting")
