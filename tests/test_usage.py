"""Usage-based pricing against amounts computed by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import yaml

from billing.models import Customer
from rules.schema import RuleSet
from rules.usage import _milli, price_usage
from tests.conftest import DEMO_RULES

CUSTOMERS = [Customer(customer_id="ACME", name="Acme", currency="EUR"),
             Customer(customer_id="INITECH", name="Initech", currency="USD")]  # fmt: skip
TIERS = [{"up_to": "100", "unit_price": {"EUR": "0.10", "USD": "0.12"}},
         {"up_to": "1000", "unit_price": {"EUR": "0.08", "USD": "0.09"}},
         {"unit_price": {"EUR": "0.05", "USD": "0.06"}}]  # fmt: skip


def rules(mode: str, **extra: Any) -> RuleSet:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data["usage"] = {"backup_gb": {"name": "Cloud backup (GB)", "mode": mode, "tiers": TIERS, **extra}}
    return RuleSet.model_validate(data)


def usage(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"record_id": [f"U{n}" for n in range(len(rows))], "customer_id": [c for c, _ in rows],
                         "metric": "backup_gb", "quantity": [q for _, q in rows]})  # fmt: skip


def test_graduated_tiers_bill_each_tier_at_its_price() -> None:
    # 1,250.5 GB in two records: 100 × 0.10 = 10.00; 900 × 0.08 = 72.00; 250.5 × 0.05 = 12.525 → 12.52 half-even
    lines = price_usage(usage(("ACME", "1000.25"), ("ACME", "250.25")), CUSTOMERS, rules("graduated"))
    assert lines["quantity"].tolist() == [Decimal(100), Decimal(900), Decimal("250.5")]
    assert lines["amount_minor"].tolist() == [1000, 7200, 1252]
    assert lines["record_ids"].iloc[0] == ["U0", "U1"]


def test_volume_tiers_bill_every_unit_at_the_price_of_the_tier_reached() -> None:
    lines = price_usage(usage(("ACME", "1250.5"), ("INITECH", "99")), CUSTOMERS, rules("volume"))
    got = {r.customer_id: (r.quantity, r.unit_price_minor, r.amount_minor) for r in lines.itertuples()}
    assert got == {"ACME": (Decimal("1250.5"), 5, 6252), "INITECH": (Decimal(99), 12, 1188)}  # 62.525 → 62.52


def test_a_minimum_commitment_tops_the_usage_up() -> None:
    lines = price_usage(usage(("ACME", "50")), CUSTOMERS, rules("graduated", minimum_commitment={"EUR": "20.00"}))
    assert lines[["description", "amount_minor"]].values.tolist() == [
        ["Cloud backup (GB), tier 1", 500],
        ["Cloud backup (GB), minimum commitment", 1500],
    ]
    assert lines["amount_minor"].sum() == 2000


def test_quantities_are_exact_thousandths() -> None:
    assert _milli(pd.Series(["12.5", "0.125", "-3", "7", " 2.05 "])).tolist() == [12500, 125, -3000, 7000, 2050]
    with pytest.raises(ValueError, match="at most 3 decimals"):
        _milli(pd.Series(["0.0001"]))


def test_tier_bounds_must_ascend() -> None:
    data = yaml.safe_load(DEMO_RULES.read_text())
    data["usage"] = {"seats": {"name": "Seats", "tiers": [{"up_to": "10", "unit_price": {"EUR": "5"}},
                                                           {"up_to": "5", "unit_price": {"EUR": "4"}}]}}  # fmt: skip
    with pytest.raises(ValueError, match="tier bounds must ascend"):
        RuleSet.model_validate(data)
