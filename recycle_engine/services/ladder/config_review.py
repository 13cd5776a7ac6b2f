"""`config check`'s review: each recycle profile as the ladder it produces, its warnings, and the versions
in-flight subscriptions follow, compared with the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from recycle_engine.config import Settings, describe_database
from recycle_engine.domain.ladder_review import (
    LadderWarning,
    ReviewedAttempt,
    diff_ladders,
    ladder_warnings,
    review_ladder,
)
from recycle_engine.domain.profile_versions import profile_content, profile_version
from recycle_engine.domain.profiles import RecycleProfile
from recycle_engine.errors import InputError, StorageError
from recycle_engine.money import Money
from recycle_engine.storage.db import has_table, read_only_engine, sqlite_file_missing
from recycle_engine.storage.faults import DatabaseFailure

__all__ = ["ConfigReview", "FollowedVersion", "PlacedWarning", "ProfileReview", "review_settings"]

Planner = Callable[[RecycleProfile], tuple[ReviewedAttempt, ...]]
_FLAGS = {"bill_on_saturday": "bill on Saturday", "hold_recycle_price": "hold recycle price"}


@dataclass(frozen=True)
class FollowedVersion:
    """A recorded version of a profile that in-flight subscriptions follow, and how it differs from now."""

    version: (
        str | None
    )  # None: subscriptions that entered before versions were recorded (they follow settings)
    in_flight: int
    current: bool
    changes: tuple[str, ...]  # from this version to the settings; empty when the same


@dataclass(frozen=True)
class PlacedWarning:
    """A ladder warning at its key path and line in the settings file."""

    path: str  # e.g. recycle_profiles[0].slots.final
    line: int | None
    message: str


@dataclass(frozen=True)
class ProfileReview:
    profile: RecycleProfile
    version: str
    attempts: tuple[ReviewedAttempt, ...]
    warnings: tuple[PlacedWarning, ...]
    followed: tuple[FollowedVersion, ...]  # empty when the database was not read


@dataclass(frozen=True)
class ConfigReview:
    sample: Money
    decline_on: date  # the local decline date days are counted from (matters for bill_on_saturday)
    profiles: tuple[ProfileReview, ...]
    database_note: str | None  # why in-flight versions were not compared; None when they were


def review_settings(
    settings: Settings,
    *,
    sample: Money,
    decline_on: date,
    read_database: bool,
    line_of: Callable[[str], int | None] = lambda path: None,
) -> ConfigReview:
    """Plan every profile for `sample` from a decline on `decline_on`; with `read_database`, also count the
    in-flight subscriptions per version (never creating a database or its schema). `line_of` places
    warnings in the file (profiles are in file order)."""
    flexfactor = {g.id for g in settings.flexfactor_gateways()}

    def attempts_of(profile: RecycleProfile) -> tuple[ReviewedAttempt, ...]:
        try:
            return tuple(
                review_ladder(
                    profile,
                    decline_on=decline_on,
                    sample_minor=sample.minor,
                    currency=sample.currency,
                    flexfactor_gateways=flexfactor,
                )
            )
        except ValueError as exc:
            # e.g. a minimum price of 5.50 shown in JPY: the sample's currency, not the settings, is at fault
            raise InputError(
                f"recycle profile {profile.id} cannot be shown in {sample.currency}: {exc}; "
                "choose another --currency"
            ) from None

    followed: dict[str, list[FollowedVersion]] = {}
    note: str | None = "not compared (config check --no-database)"
    if read_database:
        note = _read_followed(settings, attempts_of, sample.currency, followed)
    reviews = tuple(
        ProfileReview(
            profile=profile,
            version=profile_version(profile),
            attempts=attempts_of(profile),
            warnings=tuple(
                _placed(f"recycle_profiles[{index}]", w, line_of)
                for w in ladder_warnings(profile, flexfactor)
            ),
            followed=tuple(followed.get(profile.id, ())),
        )
        for index, profile in enumerate(settings.recycle_profiles.values())
    )
    return ConfigReview(sample, decline_on, reviews, note)


def _placed(base: str, warning: LadderWarning, line_of: Callable[[str], int | None]) -> PlacedWarning:
    path = f"{base}.{warning.key}"
    return PlacedWarning(path, line_of(path), warning.message)


def _read_followed(
    settings: Settings,
    attempts_of: Planner,
    currency: str,
    followed: dict[str, list[FollowedVersion]],
) -> str | None:
    """Fill `followed` from the database; return why it could not be read, or None."""
    where = describe_database(settings.database_url)
    if sqlite_file_missing(settings.database_url):
        return f"not compared: no database yet ({where})"
    # Imported here: the mapped models cost a check that reads no database (--no-database, no file yet).
    from recycle_engine.storage.profile_versions import ProfileBook, stored_versions

    engine = read_only_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            if not has_table(conn, "recycle_profile_versions"):
                return f"not compared: the database has no schema yet ({where}; run db upgrade)"
            book = ProfileBook(conn, settings.recycle_profiles)
            for stored in stored_versions(conn, settings.recycle_profiles):
                current = settings.recycle_profiles.get(stored.profile_id)
                if stored.in_flight == 0 and not stored.current:
                    continue
                changes: tuple[str, ...] = ()
                if current is None:
                    changes = ("the profile is no longer in the settings",)
                elif stored.version is not None and not stored.current:
                    old = book.profile(stored.profile_id, stored.version)
                    changes = tuple(_changes(old, current, attempts_of, currency)) if old else ()
                followed.setdefault(stored.profile_id, []).append(
                    FollowedVersion(stored.version, stored.in_flight, stored.current, changes)
                )
    except (StorageError, DatabaseFailure) as exc:
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"not compared: cannot read the database ({where}): {first}"
    finally:
        engine.dispose()
    return None


def _changes(old: RecycleProfile, new: RecycleProfile, attempts_of: Planner, currency: str) -> list[str]:
    lines = diff_ladders(attempts_of(old), attempts_of(new), currency)
    was, now = profile_content(old), profile_content(new)
    for key, name in _FLAGS.items():
        if was[key] != now[key]:
            lines.append(f"{name}: {_yes(was[key])} -> {_yes(now[key])}")
    if was["minimum_price"] != now["minimum_price"]:
        lines.append(f"minimum price: {was['minimum_price']} -> {now['minimum_price']}")
    return lines


def _yes(flag: object) -> str:
    return "yes" if flag else "no"
