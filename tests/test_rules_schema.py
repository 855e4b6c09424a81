"""Unit tests of the rule-file schema and loader (rules/schema.py): the demo file, and errors with file, line, path."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.errors import InputError
from billing.money import Rounding
from rules.schema import BusinessHours, RuleSet, json_schema, load_rules

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "rules" / "examples" / "demo.yaml"
DEMO_TEXT = DEMO.read_text(encoding="utf-8")
DEMO_LINES = DEMO_TEXT.splitlines(keepends=True)


def _line_of(text: str, fragment: str) -> int:
    """The 1-based line of the one line of the demo file that contains fragment."""
    numbers = [n for n, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(numbers) == 1, f"{fragment!r} is on lines {numbers}"
    return numbers[0]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _edited(old: str, new: str) -> str:
    assert DEMO_TEXT.count(old) == 1, f"{old!r} is not in demo.yaml exactly once"
    return DEMO_TEXT.replace(old, new)


def _load_error(path: Path) -> InputError:
    with pytest.raises(InputError) as caught:
        load_rules(path)
    return caught.value


# --- 1. the demo file -----------------------------------------------------------------------------------------------


def test_demo_loads_with_its_values() -> None:
    rules = load_rules(DEMO)
    assert isinstance(rules, RuleSet)
    assert rules.version == 1
    assert rules.name == "demo-msp"
    assert rules.money_rounding("EUR") is Rounding.HALF_EVEN  # as Tryton, the default ERP, rounds
    assert rules.money_rounding("USD") is Rounding.HALF_EVEN
    assert rules.money_rounding("GBP") is Rounding.HALF_UP  # not listed: the default
    assert (rules.rounding.increment_minutes, rules.rounding.minimum_minutes, rules.rounding.mode) == (15, 15, "up")


def test_demo_services_and_rates_are_decimals() -> None:
    services = load_rules(DEMO).services
    assert list(services) == ["remote_support", "onsite_support", "consulting", "project_work", "internal"]
    assert {k: (s.name, s.billable, s.rates) for k, s in services.items()} == {
        "remote_support": ("Remote support", True, {"EUR": Decimal("95.00"), "USD": Decimal("110.00")}),
        "onsite_support": ("On-site support", True, {"EUR": Decimal("120.00"), "USD": Decimal("145.00")}),
        "consulting": ("Consulting", True, {"EUR": Decimal("150.00"), "USD": Decimal("175.00")}),
        "project_work": ("Project work", True, {"EUR": Decimal("110.00"), "USD": Decimal("125.00")}),
        "internal": ("Internal work", False, {}),
    }
    for service in services.values():
        assert all(type(rate) is Decimal for rate in service.rates.values())
    assert str(services["remote_support"].rates["EUR"]) == "95.00"  # the scale is kept: no float on the way


def test_demo_customer_rates_modifiers_and_approval() -> None:
    rules = load_rules(DEMO)
    assert [(r.customer, r.service, r.rate) for r in rules.customer_rates] == [
        ("ACME", "remote_support", Decimal("89.50")),
        ("NORTHWIND", "onsite_support", Decimal("139.00")),
    ]
    assert all(type(r.rate) is Decimal for r in rules.customer_rates)
    after_hours, weekend = rules.modifiers.after_hours, rules.modifiers.weekend
    assert after_hours is not None and weekend is not None
    assert after_hours.multiplier == Decimal("1.5") and type(after_hours.multiplier) is Decimal
    assert weekend.multiplier == Decimal("2.0") and type(weekend.multiplier) is Decimal
    assert after_hours.business_hours == BusinessHours(start="08:00", end="18:00")
    assert after_hours.business_hours.minutes() == (8 * 60, 18 * 60)
    assert [(r.id, r.when) for r in rules.non_billable] == [("marked-non-billable", {"billable": False})]
    assert rules.approval.auto_approve_below == {"EUR": Decimal("5000.00"), "USD": Decimal("5000.00")}
    assert all(type(v) is Decimal for v in rules.approval.auto_approve_below.values())
    assert rules.approval.timeout_seconds == 3600


def test_demo_as_a_path_string_loads_the_same() -> None:
    assert load_rules(str(DEMO)) == load_rules(DEMO)


# --- 2. errors name the file, the line and the path -----------------------------------------------------------------


def test_unknown_currency_in_service_rates(tmp_path: Path) -> None:
    text = _edited('EUR: "120.00"', 'EURO: "120.00"')
    path = _write(tmp_path, text)
    error = _load_error(path)
    assert error.path == path
    assert error.field == "services.onsite_support.rates.EURO"
    assert error.line == _line_of(text, "onsite_support:")
    assert error.problem == "unknown currency 'EURO' (expected an ISO 4217 code such as EUR)"
    assert str(error) == f"{path}, line {error.line}, field 'services.onsite_support.rates.EURO': {error.problem}"


def test_unknown_currency_in_block_style_rates(tmp_path: Path) -> None:
    text = _edited(
        '  consulting:      {name: Consulting,      rates: {EUR: "150.00", USD: "175.00"}}\n',
        '  consulting:\n    name: Consulting\n    rates:\n      EUR: "150.00"\n      XYZ: "175.00"\n',
    )
    error = _load_error(_write(tmp_path, text))
    assert error.field == "services.consulting.rates.XYZ"
    assert error.line == _line_of(text, 'XYZ: "175.00"')  # the very entry
    assert "unknown currency 'XYZ'" in error.problem


def test_unknown_currency_in_approval(tmp_path: Path) -> None:
    text = _edited('USD: "5000.00"', 'US$: "5000.00"')
    error = _load_error(_write(tmp_path, text))
    assert error.field == "approval.auto_approve_below.US$"
    assert error.line == _line_of(text, "auto_approve_below:")
    assert "unknown currency 'US$'" in error.problem


def test_typo_in_an_optional_top_level_key_is_an_extra_input(tmp_path: Path) -> None:
    text = _edited("\nmodifiers:\n", "\nmodifers:\n")
    path = _write(tmp_path, text)
    error = _load_error(path)
    assert error.path == path
    assert error.field == "modifers"
    assert error.problem == "unknown key 'modifers' (did you mean 'modifiers'?)"
    assert error.line == _line_of(text, "modifers:")
    assert str(error).startswith(f"{path}, line {error.line}, field 'modifers': ")


def test_typo_in_a_required_top_level_key_says_it_is_missing(tmp_path: Path) -> None:
    error = _load_error(_write(tmp_path, _edited("\nservices:\n", "\nservics:\n")))
    assert error.field == "servics"
    assert error.problem.startswith("unknown key 'servics' (did you mean 'services'?); also services (")
    assert error.problem.endswith("'services' is required")


def test_customer_rate_for_an_unknown_service(tmp_path: Path) -> None:
    path = _write(tmp_path, _edited("service: onsite_support", "service: onsite_suport"))
    error = _load_error(path)
    assert error.path == path
    assert error.problem == (
        "unknown service 'onsite_suport' (known: consulting, internal, onsite_support, project_work, remote_support)"
    )
    assert error.field == "customer_rates.1.service"
    assert str(error).startswith(str(path))


def test_invalid_business_hour(tmp_path: Path) -> None:
    text = _edited('start: "08:00"', 'start: "25:00"')
    path = _write(tmp_path, text)
    error = _load_error(path)
    assert error.field == "modifiers.after_hours.business_hours.start"
    assert error.line == _line_of(text, "after_hours:")
    assert error.problem == "'25:00' is not a time of day as HH:MM"
    field = "modifiers.after_hours.business_hours.start"
    assert str(error) == f"{path}, line {error.line}, field '{field}': {error.problem}"


def test_unquoted_business_hour_is_not_a_string(tmp_path: Path) -> None:
    # YAML 1.1 reads 08:00 unquoted as a base-60 number (480): refused, not silently taken as a time.
    error = _load_error(_write(tmp_path, _edited('end: "18:00"', "end: 18:00")))
    assert error.field == "modifiers.after_hours.business_hours.end"
    assert error.problem == "Input should be a valid string"


def test_broken_indentation_gives_the_line(tmp_path: Path) -> None:
    text = _edited("  increment_minutes: 15\n", " increment_minutes: 15\n")
    path = _write(tmp_path, text)
    error = _load_error(path)
    assert error.path == path
    assert error.problem.startswith("not valid YAML: ")
    assert error.line == _line_of(text, " increment_minutes: 15")
    assert str(error).startswith(f"{path}, line {error.line}: not valid YAML")


def test_tab_indentation_gives_the_line(tmp_path: Path) -> None:
    text = _edited("  scope: worklog", "\tscope: worklog")
    error = _load_error(_write(tmp_path, text))
    assert error.line == _line_of(text, "scope: worklog")
    assert "'\\t'" in error.problem


@pytest.mark.parametrize("text", ["- name: demo\n- services: {}\n", "just a string\n", "", "# only a comment\n"])
def test_top_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    error = _load_error(path)
    assert error.path == path
    assert error.problem == "expected a mapping at the top (name:, services:, ...)"
    assert error.line is None and error.field is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    error = _load_error(path)
    assert error.path == path
    assert str(error) == f"{path}: rules file not found"
    assert error.hint is not None and "--rules" in error.hint


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(DEMO_TEXT.encode("utf-8").replace(b"Remote support", b"Fernwartung \xfcber VPN"))
    error = _load_error(path)
    assert str(error) == f"{path}: not UTF-8 text"


def test_negative_service_rate(tmp_path: Path) -> None:
    text = _edited('EUR: "150.00"', 'EUR: "-150.00"')
    path = _write(tmp_path, text)
    error = _load_error(path)
    assert error.field == "services.consulting.rates"
    assert error.line == _line_of(text, "consulting:")
    assert error.problem == "rate for EUR is negative"


def test_negative_customer_rate(tmp_path: Path) -> None:
    text = _edited('rate: "139.00"', 'rate: "-139.00"')
    error = _load_error(_write(tmp_path, text))
    assert error.field == "customer_rates.1.rate"
    assert error.line == _line_of(text, "NORTHWIND")
    assert error.problem == "Input should be greater than or equal to 0"


def test_zero_multiplier(tmp_path: Path) -> None:
    text = _edited('weekend:     {multiplier: "2.0"}', 'weekend: {multiplier: "0"}')
    error = _load_error(_write(tmp_path, text))
    assert error.field == "modifiers.weekend.multiplier"
    assert error.line == _line_of(text, 'weekend: {multiplier: "0"}')
    assert error.problem == "Input should be greater than 0"


def test_several_problems_are_counted(tmp_path: Path) -> None:
    text = _edited('EUR: "150.00"', 'EUR: "-150.00"').replace("timeout_seconds: 3600", "timeout_seconds: 0")
    error = _load_error(_write(tmp_path, text))
    assert error.field == "services.consulting.rates"
    assert error.problem == (
        "rate for EUR is negative; also approval.timeout_seconds "
        f"(rules.yaml line {_line_of(text, 'timeout_seconds')}): Input should be greater than or equal to 1"
    )


# --- 3. any small edit of the demo: a RuleSet or an InputError naming the file --------------------------------------


@st.composite
def mutated_demo(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        number = draw(st.integers(0, len(DEMO_LINES) - 1))
        return "".join(DEMO_LINES[:number] + DEMO_LINES[number + 1 :])
    at = draw(st.integers(0, len(DEMO_TEXT) - 1))
    character = draw(
        st.one_of(st.sampled_from(list(" \t\n:{}[],-#'\"&*!|>%@`0123456789")), st.characters(codec="utf-8"))
    )
    return DEMO_TEXT[:at] + character + DEMO_TEXT[at + 1 :]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_demo())
def test_any_small_edit_gives_rules_or_an_input_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)  # the same file, rewritten for each example
    try:
        rules = load_rules(path)
    except InputError as error:
        assert str(error).startswith(str(path))
        assert error.path == path
        assert error.line is None or 1 <= error.line <= text.count("\n") + 2
        return
    assert isinstance(rules, RuleSet)
    assert rules.services  # a RuleSet always has its services


# --- bugs found by these tests, fixed ---


def test_typo_in_a_required_top_level_key_names_the_typo(tmp_path: Path) -> None:
    text = _edited("\nservices:\n", "\nservics:\n")
    error = _load_error(_write(tmp_path, text))
    assert "servics" in str(error)
    assert error.line == _line_of(text, "servics:")


def test_typo_in_a_top_level_key_gives_the_line_of_the_key(tmp_path: Path) -> None:
    text = _edited("\nmodifiers:\n", "\nmodifers:\n")
    error = _load_error(_write(tmp_path, text))
    assert error.line == _line_of(text, "modifers:")


def test_customer_rate_for_an_unknown_service_gives_its_line(tmp_path: Path) -> None:
    text = _edited("service: onsite_support", "service: onsite_suport")
    error = _load_error(_write(tmp_path, text))
    assert error.line == _line_of(text, "onsite_suport")
    assert error.field is not None and error.field.startswith("customer_rates.1")


def test_a_customer_file_extends_a_shared_base(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(DEMO.read_text(), encoding="utf-8")
    acme = tmp_path / "customers" / "acme.yaml"
    acme.parent.mkdir()
    acme.write_text(
        "extends: ../base.yaml\nname: acme\n"
        "customer_rates:\n  - {customer: ACME, service: consulting, rate: '140.00'}\n"
        "services:\n  consulting: {name: Consulting, rates: {EUR: '160.00', USD: '175.00'}}\n",
        encoding="utf-8",
    )
    rules = load_rules(acme)
    assert rules.name == "acme"  # the customer's file wins where both speak
    assert [(r.customer, r.service) for r in rules.customer_rates][-1] == ("ACME", "consulting")  # lists append
    assert len(rules.customer_rates) == len(load_rules(DEMO).customer_rates) + 1
    assert rules.services["consulting"].rates["EUR"] == Decimal("160.00")
    assert rules.services["remote_support"].rates["EUR"] == Decimal("95.00")  # from the base


def test_an_error_names_the_file_of_the_layer_that_says_it(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(DEMO.read_text(), encoding="utf-8")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nrounding:\n  increment_minutes: 0\n", encoding="utf-8")
    error = _load_error(child)
    assert (error.path, error.line, error.field) == (child, 4, "rounding.increment_minutes")
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\nname: x\n", encoding="utf-8")
    assert "extends itself" in _load_error(loop).problem


def test_the_committed_json_schema_is_current() -> None:
    committed = json.loads((DEMO.parent.parent / "rules.schema.json").read_text())
    assert committed == json_schema()
