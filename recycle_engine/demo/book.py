"""A generated book of declines for the demo: deterministic by seed, one feed file per night."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from recycle_engine.config import Settings
from recycle_engine.services.intake.feed_rows import FEED_COLUMNS

__all__ = ["BookPlan", "write_feeds"]

PRICES = ("19.99", "24.99", "29.99", "39.00", "49.99", "79.00")
SOFT_TEXTS = (
    ("51", "Insufficient funds"),
    ("05", "Processor declined"),
    ("61", "Activity limit exceeded"),
    ("54", "Expired card"),
    ("59", "Suspected fraud - unusual purchase"),
)
MAPPED_TEXT = ("05", "Do Not Honor")  # a hard decline that the shipped mapping turns soft
HARD_TEXTS = (("43", "Pick up card - stolen"), ("14", "Invalid card number"))
FIRST = ("Maria", "James", "Aiko", "Omar", "Lena", "Tom", "Priya", "Noah", "Zoe", "Ivan", "Chloe", "Sam")
LAST = ("Lopez", "Chen", "Sato", "Haddad", "Novak", "Berg", "Rao", "Smith", "Klein", "Petrov", "Dubois", "Ng")
BRANDS = (("VISA", "411111"), ("MASTERCARD", "555555"), ("AMEX", "378282"), ("DISCOVER", "601111"))


@dataclass(frozen=True)
class BookPlan:
    subscriptions: int
    nights: int
    start: date
    seed: int


def _declining_gateways(settings: Settings) -> list[str]:
    covered = [g for p in settings.recycle_profiles.values() for g in p.gateways]
    return covered or [g.id for g in settings.gateways.values() if not g.is_flexfactor]


def _campaign_product(settings: Settings) -> list[tuple[str, str]]:
    pairs = [(c.id, p.id) for c in settings.campaigns.values() for p in c.products]
    return pairs or [("c1", "p1")]


def write_feeds(plan: BookPlan, settings: Settings, folder: Path) -> list[tuple[date, Path]]:
    """Write one declines CSV per night into `folder`; declines fall in the first two thirds of the run."""
    rng = random.Random(plan.seed)
    tz: ZoneInfo = settings.timezone
    gateways = _declining_gateways(settings)
    products = _campaign_product(settings)
    decline_days = max(1, plan.nights * 2 // 3)
    per_day: dict[date, list[dict[str, str]]] = {}
    for n in range(plan.subscriptions):
        day = plan.start + timedelta(days=rng.randrange(decline_days))
        per_day.setdefault(day, []).append(_rebill(rng, n, day, tz, gateways, products))
    for n in range(plan.subscriptions // 20):
        day = plan.start + timedelta(days=rng.randrange(decline_days))
        per_day.setdefault(day, []).append(_new_sale(rng, n, day, tz, gateways, products))
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[date, Path]] = []
    for day in sorted(per_day):
        path = folder / f"declines-{day.isoformat()}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(FEED_COLUMNS))
            writer.writeheader()
            writer.writerows(sorted(per_day[day], key=lambda r: r["declined_at"]))
        written.append((day, path))
    return written


def _base(
    rng: random.Random, n: int, day: date, tz: ZoneInfo, prefix: str, products: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """What every decline has, whatever its order type: shopper, card, campaign product, decline text."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    if n == 7:
        first = "<script>alert('x')</script>"  # markup from the CRM must show as text in reports
    brand, bin_ = rng.choice(BRANDS)
    # Declines of the evening before the night's run, in the merchant's time zone.
    at = datetime.combine(day - timedelta(days=1), time(18, 0), tz) + timedelta(minutes=rng.randrange(300))
    last4 = f"{rng.randrange(10000):04d}"
    roll = rng.random()
    if roll < 0.12:
        last4 = "0000"  # the simulated processors approve these on a re-attempt
    return {
        "transaction_id": f"{prefix}T{n:06d}",
        "declined_at": at.isoformat(),
        "customer_id": f"C{prefix}{n:06d}",
        "email": f"{first.lower()[:12].strip('<>')}.{last.lower()}{n}@example.com",
        "phone": f"+1 555 01{n % 100:02d} {n % 10000:04d}",
        "first_name": first,
        "last_name": last,
        "address1": f"{rng.randrange(1, 999)} Main St",
        "address2": "",
        "city": "Springfield",
        "state": "IL",
        "zip": f"62{rng.randrange(700, 799)}",
        "country": "US",
        "ip_address": f"198.51.100.{rng.randrange(1, 254)}",
        "card_token": f"tok_{prefix.lower()}{n:06d}{rng.randrange(16**8):08x}",
        "card_bin": bin_,
        "card_last4": last4,
        "card_exp_month": str(rng.randrange(1, 13)),
        "card_exp_year": str(rng.randrange(2027, 2032)),
        "card_brand": brand,
        "card_type": rng.choice(("CREDIT", "DEBIT")),
        "avs_result": rng.choice(("Y", "N", "")),
        "cvv_result": rng.choice(("M", "")),
        "cavv_result": "",
    } | _product_and_decline(rng, products)


def _product_and_decline(rng: random.Random, products: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Drawn after the shopper and the card, so that a seed still writes the same book."""
    campaign, product = rng.choice(products)
    response_type, code, text = _texts(rng)
    return {
        "campaign_id": campaign,
        "product_id": product,
        "response_type": response_type,
        "response_code": code,
        "response_text": text,
    }


def _texts(rng: random.Random) -> tuple[str, str, str]:
    roll = rng.random()
    if roll < 0.08:
        code, text = rng.choice(HARD_TEXTS)
        return "HARD_DECLINE", code, text
    if roll < 0.16:
        return "HARD_DECLINE", *MAPPED_TEXT
    code, text = rng.choice(SOFT_TEXTS)
    return "SOFT_DECLINE", code, text


def _rebill(
    rng: random.Random,
    n: int,
    day: date,
    tz: ZoneInfo,
    gateways: Sequence[str],
    products: Sequence[tuple[str, str]],
) -> dict[str, str]:
    row = _base(rng, n, day, tz, "R", products)
    if n % 50 == 7:
        # Processor texts may carry markup; the reports must show it as text.
        row |= {
            "response_type": "SOFT_DECLINE",
            "response_code": "05",
            "response_text": "Declined <script>alert('x')</script>",
        }
    return row | {
        "order_id": f"O-R{n:06d}",
        "order_type": "REBILL",
        "purchase_id": f"P-{n:06d}",
        "billing_cycle": str(rng.randrange(2, 13)),
        "billing_interval_days": rng.choice(("30", "30", "30", "7", "14")),
        "completes_trial": "true" if rng.random() < 0.1 else "false",
        "recurring_product": "true",
        "shippable": "true" if rng.random() < 0.6 else "false",
        "gateway_id": rng.choice(list(gateways)),
        "amount": rng.choice(PRICES),
        "currency": "USD" if rng.random() < 0.85 else "EUR",
    }


def _new_sale(
    rng: random.Random,
    n: int,
    day: date,
    tz: ZoneInfo,
    gateways: Sequence[str],
    products: Sequence[tuple[str, str]],
) -> dict[str, str]:
    return _base(rng, n, day, tz, "N", products) | {
        "order_id": f"O-N{n:06d}",
        "order_type": "NEW_SALE",
        "purchase_id": "",
        "billing_cycle": "1",
        "billing_interval_days": "",
        "completes_trial": "false",
        "recurring_product": "false",
        "shippable": "true",
        "gateway_id": rng.choice(list(gateways)),
        "amount": rng.choice(PRICES),
        "currency": "USD",
    }
