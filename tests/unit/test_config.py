"""settings.yaml -> Settings: conversions, refusals with key path and line, ${NAME}, the config check command."""

from __future__ import annotations

import base64
import dataclasses
import textwrap
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from recycle_engine.cli import main
from recycle_engine.config import (
    BatchingSettings,
    FlexFactorSettings,
    GatewayType,
    HttpSettings,
    Need,
    ReportSettings,
    ServeSettings,
    SettingsFile,
    describe_database,
    load_settings,
    require,
    sections,
)
from recycle_engine.domain.declines import DeclineType, MappingScope, RuleOrderType
from recycle_engine.domain.profiles import FINAL, AttemptRule, ReductionType, Slot
from recycle_engine.errors import ConfigError, ConfigProblem

ROOT = Path(__file__).resolve().parents[2]
SIGNING_KEY = base64.b64encode(bytes(range(64))).decode()
ENV = {
    "FLEXFACTOR_APP_KEY": "app-key-1",
    "FLEXFACTOR_APP_SECRET": "app-secret-1",
    "FLEXFACTOR_MID": "11111111-2222-3333-4444-555555555555",
    "FLEXFACTOR_SITE_ID": "66666666-7777-8888-9999-000000000000",
    "FLEXFACTOR_ENVIRONMENT_KEY": "env-key-1",
    "FLEXFACTOR_HMAC_SIGNING_KEY": SIGNING_KEY,
}

# Two ordinary gateways and one FlexFactor gateway; each test appends the sections it is about.
GATEWAYS = """\
timezone: America/New_York
gateways:
  - {id: nmi-main, type: simulated}
  - {id: nmi-backup, type: simulated}
  - id: ff-main
    type: flexfactor
    base_url: https://api-sandbox.flexfactor.io/v1
    app_key: ${FLEXFACTOR_APP_KEY}
    app_secret: ${FLEXFACTOR_APP_SECRET}
    mid: ${FLEXFACTOR_MID}
    site_id: ${FLEXFACTOR_SITE_ID}
    environment_key: ${FLEXFACTOR_ENVIRONMENT_KEY}
    hmac_signing_key: ${FLEXFACTOR_HMAC_SIGNING_KEY}
"""

LADDER = """\
    attempts:
      - {attempt: 1, days: 2, reduction: "0"}
      - {attempt: 4, days: 4, reduction: "5"}
      - {attempt: final, days: 5, reduction: "10"}
"""


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line containing `needle`."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, ENV if env is None else env)
    return list(caught.value.problems)


def only_problem(path: Path, env: dict[str, str] | None = None) -> ConfigProblem:
    problems = problems_of(path, env)
    assert len(problems) == 1, problems
    return problems[0]


# The shipped example


def test_given_the_shipped_settings_and_its_environment_when_loaded_then_it_yields_the_expected_objects() -> (
    None
):
    # given
    path = ROOT / "settings.yaml"

    # when
    settings = load_settings(path, ENV)

    # then
    assert settings.timezone == ZoneInfo("America/New_York")
    assert settings.database_url == f"sqlite:///{ROOT / 'var' / 'recycle.db'}"
    assert settings.source_path == path
    nmi, ff = settings.gateways["nmi-main"], settings.gateways["flexfactor-main"]
    assert nmi.type is GatewayType.SIMULATED
    assert nmi.processor_type == "nmi"
    assert nmi.simulated is not None
    assert nmi.simulated.by_card_last4 == {
        "0000": "APPROVED",
        "0002": "HARD_DECLINE",
    }
    assert ff.type is GatewayType.FLEXFACTOR
    assert ff.processor_type == "flexfactor"
    assert ff.flexfactor == FlexFactorSettings(
        base_url="https://api-sandbox.flexfactor.io/v1",
        app_key="app-key-1",
        app_secret="app-secret-1",
        mid=ENV["FLEXFACTOR_MID"],
        site_id=ENV["FLEXFACTOR_SITE_ID"],
        environment_key="env-key-1",
        hmac_signing_key=SIGNING_KEY,
    )
    profile = settings.recycle_profiles["default"]
    assert profile.reduction_type is ReductionType.PERCENT
    assert profile.minimum_price == Decimal("5.00")
    assert [a.attempt for a in profile.attempts] == [1, 2, 3, 4, FINAL]
    assert profile.attempts[2] == AttemptRule(attempt=3, days=3, reduction=Decimal("0"), skip=True)
    assert profile.slots == {Slot.S4_6: "flexfactor-main", Slot.S7_9: None, Slot.FINAL: "flexfactor-main"}
    assert settings.profile_for_gateway("nmi-main") is profile
    short = settings.recycle_profiles["short"]
    assert settings.profile_for_gateway("nmi-backup") is short
    assert (short.reduction_type, short.hold_recycle_price) == (ReductionType.FLAT, True)
    assert [a.attempt for a in short.attempts] == [1, 2, FINAL]
    assert short.slots == {Slot.S4_6: None, Slot.S7_9: None, Slot.FINAL: "flexfactor-main"}
    assert settings.campaigns["c1"].products[0].gateway == "nmi-main"
    assert settings.atri_profiles["atri-1"].cascade_profile == "casc-1"
    assert settings.cascade_profiles["casc-1"].gateways == ("flexfactor-main",)
    first, second = settings.decline_mapping
    assert (first.scope, first.target, first.order_type, first.map_to) == (
        MappingScope.MID,
        "nmi-main",
        RuleOrderType.RECURRING,
        DeclineType.SOFT,
    )
    assert (second.scope, second.target, second.position) == (MappingScope.GATEWAY, "simulated", 1)
    assert {name: (job.cron, job.misfire_grace_seconds) for name, job in settings.jobs.items()} == {
        "submit": ("0 2 * * *", 14400),
        "reconcile": ("30 3 * * *", 14400),
        "report": ("0 6 * * *", 21600),
    }
    assert settings.reports.output_dir == ROOT / "reports" / "out"
    assert settings.serve == ServeSettings()
    assert settings.insufficient_funds_phrases == ("insufficient funds",)


def test_given_the_shipped_settings_without_its_environment_when_loaded_then_each_variable_is_named() -> None:
    # given
    path = ROOT / "settings.yaml"

    # when
    problems = problems_of(path, env={})

    # then
    assert [(p.path, p.message, p.line) for p in problems] == [
        (
            f"gateways[2].{key}",
            f"environment variable FLEXFACTOR_{key.upper()} is not set; it is needed {need}",
            line_of(path, key + ":"),
        )
        for key, need in (
            ("app_key", "to call FlexFactor"),
            ("app_secret", "to call FlexFactor"),
            ("mid", "to call FlexFactor"),
            ("site_id", "to call FlexFactor"),
            ("hmac_signing_key", "to verify FlexFactor webhooks"),
        )
    ]


def test_given_the_key_tables_when_compared_with_the_settings_types_then_their_defaults_agree(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, "timezone: UTC\ngateways: []\n")

    # when
    settings = load_settings(path, {})

    # then
    assert settings.batching == BatchingSettings()
    assert settings.http == HttpSettings()
    assert settings.serve == ServeSettings()
    assert settings.reports == dataclasses.replace(ReportSettings(), output_dir=tmp_path / "reports" / "out")
    assert (
        settings.insufficient_funds_phrases
        == SettingsFile.__pydantic_fields__["insufficient_funds_phrases"].default
    )
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'recycle.db'}"
    assert all(f.description for s in sections() for f in s.__pydantic_fields__.values())


def test_given_loaded_settings_when_changed_then_they_refuse(tmp_path: Path) -> None:
    # given
    settings = load_settings(write(tmp_path, "timezone: UTC\ngateways: []\n"), {})

    # when / then
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.alert_command = "rm -rf /"  # type: ignore[misc]


# FlexFactor refusals


def test_given_a_flexfactor_gateway_on_a_campaign_product_when_loaded_then_it_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path, GATEWAYS + "campaigns:\n  - id: c1\n    products:\n      - {id: p1, gateway: ff-main}\n"
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "campaigns[0].products[0].gateway"
    assert problem.line == line_of(path, "gateway: ff-main")
    assert "FlexFactor gateway" in problem.message
    assert "campaign product" in problem.message


def test_given_a_flexfactor_gateway_in_an_atri_profile_when_loaded_then_it_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS + "atri_profiles:\n  - id: atri-1\n    gateways:\n      - nmi-main\n      - ff-main\n",
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "atri_profiles[0].gateways[1]"
    assert problem.line == line_of(path, "- ff-main")
    assert "never in an ATRI" in problem.message


def test_given_a_flexfactor_gateway_on_attempts_1_to_3_when_loaded_then_it_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: default\n    gateways: [nmi-main]\n"
        + LADDER
        + '    slots: {"1-3": ff-main}\n',
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[0].slots.1-3"
    assert problem.line == line_of(path, '"1-3": ff-main')
    assert problem.message == (
        "FlexFactor can be chosen only for slots 4-6, 7-9 and final; attempts 1-3 always run on the declining gateway"
    )


def test_given_an_unknown_slot_name_when_loaded_then_it_is_refused_with_the_slot_names(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: default\n    gateways: [nmi-main]\n"
        + LADDER
        + "    slots: {10-12: nmi-backup}\n",
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[0].slots.10-12"
    assert "unknown slot '10-12'; slots: 4-6, 7-9, final" in problem.message


def test_given_ordinary_and_flexfactor_gateways_on_slots_when_loaded_then_both_are_accepted(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: default\n    gateways: [nmi-main]\n"
        + LADDER
        + '    slots: {"4-6": nmi-backup, "7-9": ff-main}\n',
    )

    # when
    profile = load_settings(path, ENV).recycle_profiles["default"]

    # then
    assert profile.slots == {Slot.S4_6: "nmi-backup", Slot.S7_9: "ff-main", Slot.FINAL: None}


@pytest.mark.parametrize("days", [0, 22, 30])
def test_given_expiry_days_outside_1_to_21_when_loaded_then_it_is_refused_at_its_line(
    tmp_path: Path, days: int
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + f"    expiry_days: {days}\n")

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "gateways[2].expiry_days"
    assert problem.line == line_of(path, "expiry_days")
    assert problem.message == (
        f"must be between 1 and 21 (FlexFactor retries for at most 21 days); got {days}"
    )


@pytest.mark.parametrize(
    ("written", "expected"), [("", 21), ("    expiry_days: 1\n", 1), ("    expiry_days: 21\n", 21)]
)
def test_given_expiry_days_within_1_to_21_or_absent_when_loaded_then_it_is_kept_or_21(
    tmp_path: Path, written: str, expected: int
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + written)

    # when
    flexfactor = load_settings(path, ENV).gateways["ff-main"].flexfactor

    # then
    assert flexfactor is not None
    assert (flexfactor.expiry_days, flexfactor.cascade_all, flexfactor.webhook_tolerance_seconds) == (
        expected,
        False,
        300,
    )


def test_given_a_gateway_in_two_recycle_profiles_when_loaded_then_the_second_is_refused(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: first\n    gateways: [nmi-main]\n"
        + LADDER
        + "  - id: second\n    gateways: [nmi-backup, nmi-main]\n"
        + LADDER,
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[1].gateways[1]"
    assert problem.line == line_of(path, "gateways: [nmi-backup, nmi-main]")
    assert problem.message == (
        f"gateway 'nmi-main' is already in recycle profile 'first' (line {line_of(path, 'gateways: [nmi-main]')}); "
        "a gateway belongs to at most one recycle profile"
    )


def test_given_a_recycle_profile_covering_a_flexfactor_gateway_when_loaded_then_it_is_refused(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path, GATEWAYS + "recycle_profiles:\n  - id: default\n    gateways: [ff-main]\n" + LADDER
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[0].gateways[0]"
    assert "'ff-main' is a FlexFactor gateway" in problem.message
    assert "never" in problem.message
    assert "slot" in problem.message


def test_given_two_flexfactor_gateways_with_cascade_all_when_loaded_then_the_second_is_refused(
    tmp_path: Path,
) -> None:
    # given
    second = GATEWAYS.split("gateways:\n", 1)[1].split("  - id: ff-main", 1)[1].replace(" ff-main", " ff-two")
    text = GATEWAYS + "    cascade_all: true\n  - id: ff-two" + second + "    cascade_all: true\n"
    path = write(tmp_path, text)

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "gateways[3].cascade_all"
    assert problem.line == line_of(path, "cascade_all: true", occurrence=2)
    assert problem.message == "only one FlexFactor gateway may set cascade_all; 'ff-main' already does"


def test_given_a_flexfactor_gateway_in_a_cascade_profile_when_loaded_then_it_is_accepted(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "cascade_profiles: [{id: casc-1, gateways: [nmi-backup, ff-main]}]\n")

    # when
    settings = load_settings(path, ENV)

    # then
    assert settings.cascade_profiles["casc-1"].gateways == ("nmi-backup", "ff-main")


# References and ids


@pytest.mark.parametrize(
    ("section", "where"),
    [
        (
            "campaigns: [{id: c1, products: [{id: p1, gateway: nmi-typo}]}]\n",
            "campaigns[0].products[0].gateway",
        ),
        ("atri_profiles: [{id: a1, gateways: [nmi-typo]}]\n", "atri_profiles[0].gateways[0]"),
        ("cascade_profiles: [{id: k1, gateways: [nmi-typo]}]\n", "cascade_profiles[0].gateways[0]"),
        (
            "recycle_profiles:\n  - id: r1\n    gateways: [nmi-typo]\n" + LADDER,
            "recycle_profiles[0].gateways[0]",
        ),
        (
            "recycle_profiles:\n  - id: r1\n    gateways: [nmi-main]\n"
            + LADDER
            + "    slots: {final: nmi-typo}\n",
            "recycle_profiles[0].slots.final",
        ),
        ("decline_mapping: [{gateway: nmi-typo, contains: x, map_to: SOFT}]\n", "decline_mapping[0].gateway"),
    ],
)
def test_given_an_unknown_gateway_id_when_loaded_then_it_is_refused_where_it_is_named(
    tmp_path: Path, section: str, where: str
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + section)

    # when
    problem = only_problem(path)

    # then
    assert problem.path == where
    assert problem.line == line_of(path, "nmi-typo")
    assert problem.message == "unknown gateway 'nmi-typo'; gateways: nmi-main, nmi-backup, ff-main"


def test_given_an_unknown_cascade_profile_in_an_atri_profile_when_loaded_then_it_is_refused(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS + "cascade_profiles: [{id: casc-1, gateways: [ff-main]}]\n"
        "atri_profiles:\n  - id: a1\n    gateways: [nmi-main]\n    cascade_profile: casc-9\n",
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "atri_profiles[0].cascade_profile"
    assert problem.line == line_of(path, "cascade_profile: casc-9")
    assert problem.message == "unknown cascade profile 'casc-9'; cascade profiles: casc-1"


@pytest.mark.parametrize(
    ("section", "where", "what"),
    [
        ("  - {id: nmi-main, type: simulated}\n", "gateways[3].id", "gateway"),
        ("campaigns: [{id: c1}, {id: c1}]\n", "campaigns[1].id", "campaign"),
        (
            "cascade_profiles: [{id: k, gateways: [ff-main]}, {id: k, gateways: [ff-main]}]\n",
            "cascade_profiles[1].id",
            "cascade profile",
        ),
    ],
)
def test_given_a_duplicate_id_when_loaded_then_the_second_is_refused(
    tmp_path: Path, section: str, where: str, what: str
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + section)

    # when
    problem = only_problem(path)

    # then
    assert problem.path == where
    assert problem.message.startswith(f"duplicate {what} id")


def test_given_two_recycle_profiles_with_one_id_when_loaded_then_the_second_is_refused(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: same\n    gateways: [nmi-main]\n"
        + LADDER
        + "  - id: same\n    gateways: [nmi-backup]\n"
        + LADDER,
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[1].id"
    assert problem.line == line_of(path, "- id: same", occurrence=2)
    assert (
        problem.message
        == f"duplicate recycle profile id 'same' (first at recycle_profiles[0], line {line_of(path, '- id: same')})"
    )


# Decline mapping


def test_given_an_unknown_gateway_type_in_decline_mapping_when_loaded_then_it_is_refused(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path, GATEWAYS + "decline_mapping:\n  - {gateway_type: stripe, contains: stolen, map_to: HARD}\n"
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "decline_mapping[0].gateway_type"
    assert problem.line == line_of(path, "gateway_type: stripe")
    assert problem.message == "unknown gateway type 'stripe'; allowed: simulated, flexfactor, nmi"


@pytest.mark.parametrize(
    "rule",
    [
        "{gateway: nmi-main, gateway_type: simulated, contains: x, map_to: SOFT}",
        "{contains: x, map_to: SOFT}",
    ],
)
def test_given_a_mapping_rule_with_both_or_neither_scope_when_loaded_then_it_is_refused(
    tmp_path: Path, rule: str
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + f"decline_mapping:\n  - {rule}\n")

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "decline_mapping[0]"
    assert problem.message.startswith("needs exactly one of gateway")


def test_given_mapping_rules_when_loaded_then_order_type_defaults_to_all_and_position_is_the_index(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS + "decline_mapping:\n"
        "  - {gateway_type: simulated, contains: stolen, map_to: hard}\n"
        "  - {gateway: nmi-main, order_type: NEW_SALE, contains: Do Not Honor, map_to: SOFT, display_message: Retry}\n",
    )

    # when
    first, second = load_settings(path, ENV).decline_mapping

    # then
    assert (first.order_type, first.map_to, first.position) == (RuleOrderType.ALL, DeclineType.HARD, 0)
    assert (second.scope, second.display_message, second.position) == (MappingScope.MID, "Retry", 1)


# Attempts and money


def test_given_more_than_nine_numbered_attempts_when_loaded_then_the_ladder_is_refused(
    tmp_path: Path,
) -> None:
    # given
    attempts = (
        "".join(f"      - {{attempt: {n}, days: 1}}\n" for n in range(1, 10))
        + "      - {attempt: 10, days: 1}\n"
    )
    path = write(
        tmp_path,
        GATEWAYS + "recycle_profiles:\n  - id: r\n    gateways: [nmi-main]\n    attempts:\n" + attempts,
    )

    # when
    problems = problems_of(path)

    # then
    assert [(p.path, p.message) for p in problems] == [
        ("recycle_profiles[0].attempts", "at most nine numbered attempts plus final; found 10 numbered"),
        ("recycle_profiles[0].attempts[9].attempt", "must be 1..9 or final; got 10"),
    ]


def test_given_an_attempt_listed_twice_when_loaded_then_the_second_is_refused(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS + "recycle_profiles:\n  - id: r\n    gateways: [nmi-main]\n    attempts:\n"
        "      - {attempt: final, days: 1}\n      - {attempt: FINAL, days: 2}\n",
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[0].attempts[1].attempt"
    assert problem.line == line_of(path, "FINAL")
    assert problem.message.startswith("attempt final is listed twice")


def test_given_attempts_out_of_order_when_loaded_then_they_are_sorted_with_final_last(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: r\n    gateways: [nmi-main]\n    reduction_type: flat\n    attempts:\n"
        '      - {attempt: final, days: 5, reduction: "2.50"}\n      - {attempt: 2, days: 0}\n      - {attempt: 1, days: 3}\n',
    )

    # when
    profile = load_settings(path, ENV).recycle_profiles["r"]

    # then
    assert profile.attempts == (
        AttemptRule(1, 3, Decimal(0)),
        AttemptRule(2, 0, Decimal(0)),
        AttemptRule(FINAL, 5, Decimal("2.50")),
    )
    assert profile.holdout_percent == Decimal(0)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ('reduction: "101"', "a percent reduction must be 0..100; got 101"),
        ('reduction: "-5"', "must not be negative; got '-5'"),
        ("reduction: 2.5", 'write it as quoted text such as "2.50": a YAML float is not exact'),
        ('reduction: "five"', "must be a decimal number such as \"5.00\"; got 'five'"),
        ("days: -1", "must be between 0 and 365; got -1"),
    ],
)
def test_given_a_bad_attempt_value_when_loaded_then_it_is_refused_at_its_key(
    tmp_path: Path, written: str, message: str
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "recycle_profiles:\n  - id: r\n    gateways: [nmi-main]\n    attempts:\n"
        f"      - {{attempt: 1, days: 1}}\n      - {{attempt: 2, days: 1, {written}}}\n".replace(
            "days: 1, days", "days"
        ),
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == f"recycle_profiles[0].attempts[1].{written.split(':')[0]}"
    assert problem.line == line_of(path, "attempt: 2")
    assert problem.message == message


def test_given_holdout_over_100_percent_when_loaded_then_it_is_refused(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + 'recycle_profiles:\n  - id: r\n    gateways: [nmi-main]\n    holdout_percent: "120"\n'
        + LADDER,
    )

    # when
    problem = only_problem(path)

    # then
    assert (problem.path, problem.message) == (
        "recycle_profiles[0].holdout_percent",
        "must be between 0 and 100; got '120'",
    )


# Environment and secrets


def test_given_references_inside_text_when_loaded_then_they_read_the_environment(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS.replace("api-sandbox.flexfactor.io", "${FF_HOST}")
        + "serve: {port: '${PORT}', api_key: '${API_KEY}'}\n"
        + "alert_command: notify --literal $${HOME}\n",
    )
    env = {**ENV, "FF_HOST": "ff.example.test", "PORT": "9090", "API_KEY": "k-123"}

    # when
    settings = load_settings(path, env)

    # then
    flexfactor = settings.gateways["ff-main"].flexfactor
    assert flexfactor is not None
    assert flexfactor.base_url == "https://ff.example.test/v1"
    assert (settings.serve.port, settings.serve.api_key) == (9090, "k-123")
    assert settings.alert_command == "notify --literal ${HOME}"


def test_given_a_missing_variable_when_loaded_then_the_variable_and_key_are_named(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS)
    env = {k: v for k, v in ENV.items() if k != "FLEXFACTOR_APP_SECRET"}

    # when
    problem = only_problem(path, env)

    # then
    assert problem == ConfigProblem(
        "gateways[2].app_secret",
        "environment variable FLEXFACTOR_APP_SECRET is not set; it is needed to call FlexFactor",
        line_of(path, "app_secret"),
    )


def test_given_bad_values_from_the_environment_when_loaded_then_no_value_appears_in_the_error(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "database: {url: '${DATABASE_URL}'}\nserve: {port: '${PORT}'}\n")
    env = {
        **ENV,
        "FLEXFACTOR_HMAC_SIGNING_KEY": "not*base64*s3cr3t-signing",
        "DATABASE_URL": "mysql://user:hunter2-password@db/x",
        "PORT": "99999",
    }

    # when
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env)

    # then
    text = str(caught.value)
    assert [p.path for p in caught.value.problems] == [
        "gateways[2].hmac_signing_key",
        "database.url",
        "serve.port",
    ]
    for secret in ("s3cr3t-signing", "hunter2-password", "99999", *ENV.values()):
        assert secret not in text


@pytest.mark.parametrize(
    ("written", "where"),
    [
        ("app_secret: ${FLEXFACTOR_APP_SECRET}", "gateways[2].app_secret"),
        ("hmac_signing_key: ${FLEXFACTOR_HMAC_SIGNING_KEY}", "gateways[2].hmac_signing_key"),
    ],
)
def test_given_a_secret_written_in_the_file_when_loaded_then_it_is_refused_without_echoing_it(
    tmp_path: Path, written: str, where: str
) -> None:
    # given
    key = written.split(":")[0]
    path = write(tmp_path, GATEWAYS.replace(written, f"{key}: {SIGNING_KEY}"))

    # when
    with pytest.raises(ConfigError) as caught:
        load_settings(path, ENV)

    # then
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == (where, line_of(path, key))
    assert problem.message.startswith("must come from the environment: write ${NAME}")
    assert SIGNING_KEY not in str(caught.value)


def test_given_a_literal_serve_api_key_when_loaded_then_it_is_refused(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "serve:\n  api_key: letmein-literal\n")

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "serve.api_key"
    assert "letmein-literal" not in str(problem)


# Shape, cron, timezone, YAML


def test_given_a_misspelt_key_when_loaded_then_it_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "    expiry_day: 14\n")

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "gateways[2].expiry_day"
    assert problem.line == line_of(path, "expiry_day")
    assert problem.message.startswith(
        "unknown key 'expiry_day' (did you mean 'expiry_days'?); allowed keys: id, type,"
    )
    assert "webhook_tolerance_seconds" in problem.message


def test_given_a_required_key_missing_when_loaded_then_it_is_named_at_its_entry(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS.replace("    base_url: https://api-sandbox.flexfactor.io/v1\n", ""))

    # when
    problem = only_problem(path)

    # then
    assert (problem.path, problem.line) == ("gateways[2].base_url", line_of(path, "- id: ff-main"))
    assert problem.message.startswith("is required")


@pytest.mark.parametrize("cron", ["0 2 * *", "0 25 * * *", "every night"])
def test_given_a_bad_cron_when_loaded_then_it_is_refused_at_its_line(tmp_path: Path, cron: str) -> None:
    # given
    path = write(tmp_path, GATEWAYS + f'jobs:\n  reconcile:\n    cron: "{cron}"\n')

    # when
    problem = only_problem(path)

    # then
    assert (problem.path, problem.line) == ("jobs.reconcile.cron", line_of(path, "cron:"))
    assert problem.message.startswith("is not a 5-field crontab")


def test_given_one_job_written_when_loaded_then_the_others_keep_their_defaults(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "jobs:\n  report: {cron: '15 7 * * 1-5'}\n")

    # when
    jobs = load_settings(path, ENV).jobs

    # then
    assert (jobs["report"].cron, jobs["report"].misfire_grace_seconds) == ("15 7 * * 1-5", 21600)
    assert jobs["submit"].cron == "0 2 * * *"


def test_given_an_unknown_timezone_when_loaded_then_it_is_refused_at_its_line(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS.replace("America/New_York", "America/Gotham"))

    # when
    problem = only_problem(path)

    # then
    assert problem == ConfigProblem(
        "timezone", "unknown time zone 'America/Gotham'; use an IANA name such as America/New_York", 1
    )


def test_given_broken_yaml_when_loaded_then_the_line_is_given(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, "timezone: UTC\ngateways:\n  - {id: x, type: simulated\nbatching: {}\n")

    # when
    problem = only_problem(path)

    # then
    assert problem.message.startswith("not valid YAML")
    assert problem.line == 4


def test_given_a_key_written_twice_when_loaded_then_the_second_is_refused(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "    expiry_days: 10\n    expiry_days: 12\n")

    # when
    problem = only_problem(path)

    # then
    assert (problem.path, problem.line) == ("gateways[2].expiry_days", line_of(path, "expiry_days: 12"))
    assert (
        problem.message
        == f"key 'expiry_days' is written twice in this mapping (first on line {line_of(path, 'expiry_days: 10')})"
    )


def test_given_bad_flexfactor_url_and_signing_key_when_loaded_then_both_are_refused(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS.replace("https://api-sandbox", "ftp://api-sandbox"))
    env = {**ENV, "FLEXFACTOR_HMAC_SIGNING_KEY": "@@@"}

    # when
    problems = problems_of(path, env)

    # then
    assert [(p.path, p.message.split(";")[0]) for p in problems] == [
        ("gateways[2].base_url", "must be an http:// or https:// URL"),
        (
            "gateways[2].hmac_signing_key",
            "is not valid base64 (copy the key exactly as the FlexFactor portal shows it)",
        ),
    ]


def test_given_unquoted_card_digits_when_loaded_then_the_leading_zeros_are_kept(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path,
        "timezone: UTC\ngateways:\n  - id: sim\n    type: simulated\n    processor_type: paysafe\n"
        "    simulated:\n      default: approved\n      by_card_last4: {0002: HARD_DECLINE, 0010: SOFT_DECLINE}\n",
    )

    # when
    gateway = load_settings(path, {}).gateways["sim"]

    # then
    assert gateway.processor_type == "paysafe"
    assert gateway.simulated is not None
    assert (gateway.simulated.default, gateway.simulated.by_card_last4) == (
        "APPROVED",
        {"0002": "HARD_DECLINE", "0010": "SOFT_DECLINE"},
    )


def test_given_a_ladder_shared_by_anchor_and_merge_when_loaded_then_both_profiles_have_it(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS + "recycle_profiles:\n"
        "  - &base\n    id: one\n    gateways: [nmi-main]\n"
        + LADDER
        + "  - <<: *base\n    id: two\n    gateways: [nmi-backup]\n",
    )

    # when
    profiles = load_settings(path, ENV).recycle_profiles

    # then
    assert profiles["one"].attempts == profiles["two"].attempts
    assert profiles["two"].gateways == ("nmi-backup",)


def test_given_several_problems_when_loaded_then_all_are_reported_at_once_in_line_order(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS.replace("America/New_York", "Mars/Olympus")
        + "    expiry_days: 40\n"
        + "campaigns: [{id: c1, products: [{id: p1, gateway: ff-main}]}]\n"
        + "jobs: {submit: {cron: '61 * * * *'}}\n"
        + "batching: {batch_size: 0, concurency: 4}\n",
    )

    # when
    problems = problems_of(path)

    # then
    assert [p.path for p in problems] == [
        "timezone",
        "gateways[2].expiry_days",
        "campaigns[0].products[0].gateway",
        "jobs.submit.cron",
        "batching.concurency",
        "batching.batch_size",
    ]
    assert [p.line for p in problems] == sorted(p.line or 0 for p in problems)


# Database


def test_given_a_relative_sqlite_path_when_loaded_from_elsewhere_then_it_is_beside_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    folder = tmp_path / "conf"
    folder.mkdir()
    path = write(
        folder, "timezone: UTC\ngateways: []\ndatabase: {url: 'sqlite:///data/../state/engine.db'}\n"
    )
    monkeypatch.chdir(tmp_path)

    # when
    settings = load_settings(Path("conf/settings.yaml"), {})

    # then
    assert settings.database_url == f"sqlite:///{folder / 'state' / 'engine.db'}"
    assert settings.source_path == path


@pytest.mark.parametrize("url", ["sqlite:////srv/recycle/engine.db", "sqlite://"])
def test_given_an_absolute_or_memory_sqlite_url_when_loaded_then_it_is_unchanged(
    tmp_path: Path, url: str
) -> None:
    # given
    path = write(tmp_path, f"timezone: UTC\ngateways: []\ndatabase: {{url: '{url}'}}\n")

    # when
    settings = load_settings(path, {})

    # then
    assert settings.database_url == url


def test_given_a_postgresql_url_from_the_environment_when_described_then_no_credentials_show(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, "timezone: UTC\ngateways: []\ndatabase: {url: '${DATABASE_URL}'}\n")
    url = "postgresql+psycopg://billing:pa55word@db.internal:5432/recycle"

    # when
    settings = load_settings(path, {"DATABASE_URL": url})

    # then
    assert settings.database_url == url
    assert describe_database(settings.database_url) == "postgresql at db.internal:5432/recycle"


# The config check command


def test_given_valid_settings_when_config_check_runs_then_it_prints_a_summary_and_exits_0() -> None:
    # given
    runner = CliRunner()

    # when
    result = runner.invoke(main, ["config", "check", "--config", str(ROOT / "settings.yaml")], env=ENV)

    # then
    assert result.exit_code == 0, result.output
    assert "timezone: America/New_York" in result.output
    assert f"database: sqlite file {ROOT / 'var' / 'recycle.db'}" in result.output
    assert "flexfactor gateways: flexfactor-main" in result.output
    assert "slots 4-6: flexfactor-main, 7-9: declining gateway, final: flexfactor-main" in result.output
    for secret in ENV.values():
        assert secret not in result.output


def test_given_bad_settings_when_config_check_runs_then_it_prints_every_problem_and_exits_2(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS.replace("America/New_York", "Nowhere") + "    expiry_days: 30\n")
    runner = CliRunner()

    # when
    result = runner.invoke(main, ["config", "check", "--config", str(path)], env=ENV)

    # then
    assert result.exit_code == 2
    assert "2 problems" in result.stderr
    assert "timezone (line 1): unknown time zone" in result.stderr
    assert f"gateways[2].expiry_days (line {line_of(path, 'expiry_days')})" in result.stderr


# Secrets only where they are used


UNSET_ENV: dict[str, str | None] = dict.fromkeys(ENV)  # CliRunner removes variables given as None


def test_given_no_flexfactor_variables_when_loaded_for_no_use_then_each_credential_is_listed_as_unset() -> (
    None
):
    # given
    path = ROOT / "settings.yaml"

    # when
    settings = load_settings(path, {}, needs=())

    # then
    assert [(u.variable, u.path, u.need) for u in settings.unset] == [
        ("FLEXFACTOR_APP_KEY", "gateways[2].app_key", Need.FLEXFACTOR),
        ("FLEXFACTOR_APP_SECRET", "gateways[2].app_secret", Need.FLEXFACTOR),
        ("FLEXFACTOR_MID", "gateways[2].mid", Need.FLEXFACTOR),
        ("FLEXFACTOR_SITE_ID", "gateways[2].site_id", Need.FLEXFACTOR),
        ("FLEXFACTOR_ENVIRONMENT_KEY", "gateways[2].environment_key", None),
        ("FLEXFACTOR_HMAC_SIGNING_KEY", "gateways[2].hmac_signing_key", Need.WEBHOOKS),
    ]
    assert settings.unset[0].line == line_of(path, "app_key:")
    flexfactor = settings.gateways["flexfactor-main"].flexfactor
    assert flexfactor is not None
    assert flexfactor.environment_key is None


def test_given_unset_credentials_when_a_use_is_required_then_only_its_variables_are_named() -> None:
    # given
    settings = load_settings(ROOT / "settings.yaml", {}, needs=())

    # when
    with pytest.raises(ConfigError) as webhooks:
        require(settings, Need.WEBHOOKS)
    with pytest.raises(ConfigError) as flexfactor:
        require(settings, Need.FLEXFACTOR)

    # then
    assert [p.message for p in webhooks.value.problems] == [
        "environment variable FLEXFACTOR_HMAC_SIGNING_KEY is not set; it is needed to verify FlexFactor webhooks"
    ]
    assert [p.path for p in flexfactor.value.problems] == [
        "gateways[2].app_key",
        "gateways[2].app_secret",
        "gateways[2].mid",
        "gateways[2].site_id",
    ]
    require(settings, Need.CASCADE)  # serve.api_key is not written: nothing to miss


def test_given_only_the_environment_key_unset_when_loaded_for_every_use_then_it_is_accepted() -> None:
    # given
    env = {k: v for k, v in ENV.items() if k != "FLEXFACTOR_ENVIRONMENT_KEY"}

    # when
    settings = load_settings(ROOT / "settings.yaml", env)

    # then
    assert [u.variable for u in settings.unset] == ["FLEXFACTOR_ENVIRONMENT_KEY"]


def test_given_no_flexfactor_variables_when_config_check_runs_then_it_passes_and_names_each_once() -> None:
    # given
    runner = CliRunner()

    # when
    result = runner.invoke(main, ["config", "check", "--config", str(ROOT / "settings.yaml")], env=UNSET_ENV)

    # then
    assert result.exit_code == 0, result.output
    assert "slots 4-6: flexfactor-main, 7-9: declining gateway, final: flexfactor-main" in result.output
    for name in ENV:
        assert result.output.count(f"environment variable {name} is not set") == 1, result.output
    assert "FLEXFACTOR_APP_SECRET is not set (gateways[2].app_secret, line" in result.output
    assert "needed by: run submit (not --dry-run), run reconcile" in result.output
    assert "settings are valid" in result.output


def test_given_no_flexfactor_variables_and_a_typo_when_config_check_runs_then_only_the_typo_is_a_problem(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "    expiry_day: 14\n")
    runner = CliRunner()

    # when
    result = runner.invoke(main, ["config", "check", "--config", str(path)], env=UNSET_ENV)

    # then
    assert result.exit_code == 2
    assert "1 problem" in result.stderr
    assert "did you mean 'expiry_days'?" in result.stderr
    assert "is not set" not in result.stderr


def test_given_no_flexfactor_variables_when_db_upgrade_and_reconcile_run_then_only_reconcile_refuses(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + "database: {url: 'sqlite:///engine.db'}\n")
    runner = CliRunner()

    # when
    upgraded = runner.invoke(main, ["db", "upgrade", "--config", str(path)], env=UNSET_ENV)
    reconciled = runner.invoke(main, ["run", "reconcile", "--config", str(path)], env=UNSET_ENV)

    # then
    assert upgraded.exit_code == 0, upgraded.output
    assert reconciled.exit_code == 2
    assert "environment variable FLEXFACTOR_APP_KEY is not set; it is needed to call FlexFactor" in (
        reconciled.stderr
    )
    assert "FLEXFACTOR_HMAC_SIGNING_KEY" not in reconciled.stderr


def test_given_a_missing_variable_in_an_ordinary_key_when_checked_then_it_is_named_once_beside_the_rest(
    tmp_path: Path,
) -> None:
    # given
    path = write(
        tmp_path,
        "timezone: UTC\ngateways: []\ndatabase: {url: '${DB_URL}'}\nserve: {port: '${DB_URL}'}\n"
        "batching: {batch_sise: 5}\n",
    )
    runner = CliRunner()

    # when
    result = runner.invoke(main, ["config", "check", "--config", str(path)], env={"DB_URL": None})

    # then
    assert result.exit_code == 2
    assert "3 problems" in result.stderr
    assert "database.url (line 3): environment variable DB_URL is not set" in result.stderr
    assert "serve.port (line 4): environment variable DB_URL is not set" in result.stderr
    assert "unknown key 'batch_sise' (did you mean 'batch_size'?)" in result.stderr


# The CRM section

CRM_ENV = {**ENV, "CRM_LOGIN_ID": "api-user", "CRM_PASSWORD": "pw-1"}
CRM = """\
crm:
  type: konnektive
  base_url: https://api.konnektive.com
  login_id: ${CRM_LOGIN_ID}
  password: ${CRM_PASSWORD}
"""


def test_given_a_crm_section_when_loaded_then_its_keys_defaults_and_jobs_are_set(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS + CRM + "  results_per_page: 150\n  gateways: {12: nmi-main}\n")

    # when
    settings = load_settings(path, CRM_ENV)

    # then
    crm = settings.crm
    assert crm is not None
    assert (crm.login_id, crm.password, crm.results_per_page) == ("api-user", "pw-1", 150)
    assert (crm.pull.lookback_minutes, crm.rate_limit_per_second) == (60, 5.0)
    assert crm.gateway_of("12") == "nmi-main"
    assert crm.gateway_of("nmi-backup") == "nmi-backup"
    assert "pw-1" not in repr(crm)
    assert list(settings.jobs) == ["pull", "submit", "reconcile", "push", "report"]
    assert (settings.jobs["pull"].cron, settings.jobs["push"].cron) == ("30 1 * * *", "30 5 * * *")


def test_given_no_crm_section_when_loaded_then_no_crm_job_is_scheduled(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS)

    # when
    settings = load_settings(path, ENV)

    # then
    assert settings.crm is None
    assert list(settings.jobs) == ["submit", "reconcile", "report"]


def test_given_bad_crm_values_when_loaded_then_each_is_refused_at_its_key_path(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS
        + "crm:\n  type: salesforce\n  login_id: plain-text\n  password: ${CRM_PASSWORD}\n"
        + "  results_per_page: 500\n  rate_limit_per_second: 0\n  gateways: {12: ff-main, 13: nmi-typo}\n"
        + "  pull: {lookback_minutes: -5}\n",
    )

    # when
    problems = problems_of(path, CRM_ENV)

    # then
    by_path = {p.path: p.message for p in problems}
    assert by_path["crm.type"].startswith("unknown CRM type 'salesforce'")
    assert by_path["crm.login_id"].startswith("must come from the environment")
    assert "200" in by_path["crm.results_per_page"]
    assert "crm.rate_limit_per_second" in by_path
    assert "FlexFactor" in by_path["crm.gateways.12"]
    assert by_path["crm.gateways.13"].startswith("unknown gateway 'nmi-typo'")
    assert "crm.pull.lookback_minutes" in by_path
    assert all(p.line for p in problems)


def test_given_crm_credentials_unset_when_loaded_for_other_needs_then_only_crm_commands_refuse(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + CRM)

    # when
    settings = load_settings(path, ENV, needs=(Need.FLEXFACTOR,))

    # then
    assert [u.variable for u in settings.missing_for(Need.CRM)] == ["CRM_LOGIN_ID", "CRM_PASSWORD"]
    with pytest.raises(ConfigError) as caught:
        require(settings, Need.CRM)
    assert "CRM_LOGIN_ID is not set; it is needed to call the CRM" in str(caught.value)


def test_given_a_crm_password_over_32_characters_when_loaded_then_it_is_refused(tmp_path: Path) -> None:
    # given
    path = write(tmp_path, GATEWAYS + CRM)

    # when
    problem = only_problem(path, {**CRM_ENV, "CRM_PASSWORD": "x" * 33})

    # then
    assert (problem.path, problem.message) == ("crm.password", "is longer than the CRM's 32 characters")


def test_given_a_crm_section_when_config_check_runs_then_it_is_summarised_without_its_credentials(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, GATEWAYS + CRM)

    # when
    result = CliRunner().invoke(main, ["config", "check", "--config", str(path)], env=CRM_ENV)

    # then
    assert result.exit_code == 0, result.output
    assert "crm: konnektive at https://api.konnektive.com; 200 rows a page" in result.output
    assert "jobs: pull '30 1 * * *', submit" in result.output
    assert "pw-1" not in result.output
    assert "api-user" not in result.output
