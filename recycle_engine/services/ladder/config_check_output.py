"""`config check` output: the review as lines for a person, or as JSON for review tooling (schema in README)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from recycle_engine.config import NEEDED_BY, Settings
from recycle_engine.domain.ladder_review import ReviewedAttempt
from recycle_engine.domain.profiles import ReductionType, attempt_label
from recycle_engine.errors import ConfigProblem
from recycle_engine.money import Money, parse_minor
from recycle_engine.services.ladder.config_review import ConfigReview, ProfileReview

__all__ = ["SCHEMA_VERSION", "problems_json", "review_json", "review_lines"]

SCHEMA_VERSION: Final = 1  # raised only when a key changes meaning or goes away


def review_lines(review: ConfigReview) -> list[str]:
    """Each profile as a table (attempt, day, charge, where), its warnings and in-flight versions."""
    lines = [f"recycle ladders for a sample price of {review.sample} (day: days after the decline):"]
    for item in review.profiles:
        lines += _profile_lines(item, review)
    if review.database_note:
        lines.append(f"in-flight subscriptions: {review.database_note}")
    warnings = [(item, w) for item in review.profiles for w in item.warnings]
    for item, warning in warnings:
        at = f" (line {warning.line})" if warning.line else ""
        lines.append(f"warning: {warning.path}{at}, profile {item.profile.id}: {warning.message}")
    return lines


def _profile_lines(item: ProfileReview, review: ConfigReview) -> list[str]:
    profile = item.profile
    kind = "percent" if profile.reduction_type is ReductionType.PERCENT else "flat"
    minimum = Money(_minor(profile.minimum_price, review.sample.currency), review.sample.currency)
    head = (
        f"recycle profile {profile.id} (version {item.version}): covers "
        f"{', '.join(profile.gateways) or 'no gateway'}; {kind} reductions; minimum price {minimum}"
    )
    if profile.bill_on_saturday:
        head += f"; bill on Saturday (days for a decline on {review.decline_on.isoformat()})"
    if profile.hold_recycle_price:
        head += "; a save at a reduced price keeps that price"
    rows: list[tuple[str, ...]] = [("attempt", "day", "charges", "off", "where")]
    for attempt in item.attempts:
        rows.append(_row(attempt, profile.reduction_type, review.sample.currency))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [head]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2])]
        lines.append("  " + "  ".join([*cells, row[3].rjust(widths[3]), row[4]]).rstrip())
    if review.database_note is None:
        lines += _followed_lines(item)
    return lines


def _row(attempt: ReviewedAttempt, reduction_type: ReductionType, currency: str) -> tuple[str, ...]:
    if attempt.skipped:
        return (attempt.label, "-", "skipped", "", "never charged; adds no days and no reduction")
    charges = Money(attempt.amount_minor or 0, currency).format()
    if attempt.at_minimum_price:
        charges += " (minimum price)"
    off = _off(attempt.reduction or Decimal(0), reduction_type, currency)
    return (attempt.label, str(attempt.day), charges, off, _where(attempt))


def _off(reduction: Decimal, reduction_type: ReductionType, currency: str) -> str:
    if reduction_type is ReductionType.PERCENT:
        return f"{reduction.normalize():f} %"
    return Money(_minor(reduction, currency), currency).format()


def _where(attempt: ReviewedAttempt) -> str:
    if attempt.is_flexfactor:
        place = f"FlexFactor ({attempt.gateway_id}): the hand-off ends the ladder"
    else:
        place = attempt.gateway_id or "the declining gateway"
    place = f"slot {attempt.slot.value}: {place}"
    if attempt.after_handoff is not None:
        place += f"; only if FlexFactor refuses attempt {attempt.after_handoff}"
    return place


def _followed_lines(item: ProfileReview) -> list[str]:
    if not item.followed or all(f.in_flight == 0 for f in item.followed):
        return ["  in-flight subscriptions: none"]
    lines = ["  in-flight subscriptions:"]
    for followed in item.followed:
        if followed.version is None:
            lines.append(
                f"    {followed.in_flight:,} entered before versions were kept: they follow these settings"
            )
        elif followed.current:
            lines.append(f"    {followed.in_flight:,} follow {followed.version}: these settings")
        elif followed.changes:
            lines.append(
                f"    {followed.in_flight:,} follow {followed.version}, which differs from these settings:"
            )
            lines += [f"      {change}" for change in followed.changes]
        else:
            lines.append(
                f"    {followed.in_flight:,} follow {followed.version}: the same ladder for this price"
            )
    if any(f.changes for f in item.followed if f.in_flight):
        lines.append(
            f"    (recycle-engine ladder migrate --profile {item.profile.id} moves them to these settings)"
        )
    return lines


def _minor(amount: Decimal, currency: str) -> int:
    return parse_minor(format(amount, "f"), currency)


def review_json(settings: Settings, review: ConfigReview) -> dict[str, Any]:
    """The documented JSON of a valid configuration (README, "config check --format json")."""
    warnings = []
    profiles = []
    for item in review.profiles:
        profile = item.profile
        warnings += [
            {"profile": profile.id, "path": w.path, "line": w.line, "message": w.message}
            for w in item.warnings
        ]
        profiles.append(
            {
                "id": profile.id,
                "version": item.version,
                "gateways": list(profile.gateways),
                "reduction_type": profile.reduction_type.value,
                "minimum_price": format(profile.minimum_price, "f"),
                "bill_on_saturday": profile.bill_on_saturday,
                "hold_recycle_price": profile.hold_recycle_price,
                "holdout_percent": format(profile.holdout_percent, "f"),
                "attempts": [_attempt_json(a, review.sample.currency) for a in item.attempts],
                "in_flight": None
                if review.database_note is not None
                else [
                    {
                        "version": f.version,
                        "subscriptions": f.in_flight,
                        "current": f.current,
                        "changes": list(f.changes),
                    }
                    for f in item.followed
                ],
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "ok": True,
        "settings": str(settings.source_path),
        "errors": [],
        "warnings": warnings,
        "unset_variables": [
            {
                "variable": u.variable,
                "path": u.path,
                "line": u.line,
                "needed_by": NEEDED_BY[u.need] if u.need is not None else None,
            }
            for u in settings.unset
        ],
        "sample_price": {
            "amount": format(review.sample.to_decimal(), "f"),
            "currency": review.sample.currency,
            "minor": review.sample.minor,
        },
        "decline_on": review.decline_on.isoformat(),
        "in_flight_note": review.database_note,
        "profiles": profiles,
    }


def _attempt_json(attempt: ReviewedAttempt, currency: str) -> dict[str, Any]:
    return {
        "attempt": attempt.label,
        "skipped": attempt.skipped,
        "day": attempt.day,
        "price_minor": attempt.amount_minor,
        "price": None if attempt.amount_minor is None else Money(attempt.amount_minor, currency).format(),
        "reduction": None if attempt.reduction is None else format(attempt.reduction.normalize(), "f"),
        "reduction_minor": attempt.reduction_minor,
        "at_minimum_price": attempt.at_minimum_price,
        "slot": attempt.slot.value,
        "gateway": attempt.gateway_id,
        "flexfactor": attempt.is_flexfactor,
        # the earlier attempt FlexFactor takes: this one runs only when FlexFactor refuses that hand-off
        "only_if_flexfactor_refuses": None
        if attempt.after_handoff is None
        else attempt_label(attempt.after_handoff),
    }


def problems_json(source: str, problems: tuple[ConfigProblem, ...]) -> dict[str, Any]:
    """The JSON of settings that cannot be used: every problem, nothing reviewed."""
    return {
        "schema": SCHEMA_VERSION,
        "ok": False,
        "settings": source,
        "errors": [
            {"path": p.path, "line": p.line, "column": p.column, "message": p.message} for p in problems
        ],
        "warnings": [],
        "unset_variables": [],
        "sample_price": None,
        "decline_on": None,
        "in_flight_note": None,
        "profiles": [],
    }
