"""Pure pandas for the reconciliation report: the exceptions the billing team acts on, with what to do."""

from __future__ import annotations

import json
from typing import Final

import pandas as pd

__all__ = [
    "ATTENTION_ADVICE",
    "KIND_ADVICE",
    "KIND_TITLES",
    "exception_rows",
    "exception_summary",
    "job_runs_table",
    "normalise_flag",
    "webhook_summary",
]

KIND_TITLES: Final = {
    "PAST_EXPIRY": "Pending past expiry",
    "FAILED": "Submission failed (never accepted)",
    "ATTENTION": "FlexFactor flag",
    "AMOUNT_MISMATCH": "Amount differs from what we handed off",
    "LATE_APPROVAL": "Late approval",
    "STUCK_PENDING": "Sent, no answer for over an hour",
    "WEBHOOK_UNKNOWN_ORDER": "Webhook for an unknown order",
    "WEBHOOK_REFUSED": "Webhook refused or not applied",
    "WEBHOOK_DUPLICATE": "Duplicate webhook deliveries",
    "CRM_REFUSED": "Change refused by the CRM",
    "CRM_FAILED": "Change that never reached the CRM",
}

KIND_ADVICE: Final = {
    "PAST_EXPIRY": "Run `recycle-engine run reconcile`: it settles expired windows. If the hand-off "
    "stays open afterwards, look the order up in the FlexFactor portal and settle it by hand.",
    "FAILED": "FlexFactor never accepted this hand-off. Fix the cause shown (order, customer or card "
    "data) and rerun the order, or let the subscription stay RECYCLE_FAILED.",
    "AMOUNT_MISMATCH": "FlexFactor's order shows another amount (or currency) than the attempt we handed "
    "off; the detail gives both. Open the order in the FlexFactor portal: if the customer was or will be "
    "charged another amount, correct the order in the CRM or refund the difference, and tell FlexFactor "
    "support with the order id. Recovery figures count the amount we handed off.",
    "LATE_APPROVAL": "Approved after we had settled it as failed; the approval was applied. Check in "
    "the CRM that the subscription is active again and that the customer was not billed twice.",
    "STUCK_PENDING": "The request left us but no answer came back. The next `run reconcile` looks it "
    "up by our order id; if it is still pending after that, check FlexFactor's status page and our "
    "network, and never resend it by hand.",
    "WEBHOOK_UNKNOWN_ORDER": "FlexFactor sent news of an order we never sent. Check whether another "
    "system or environment (sandbox or production) shares this gateway's webhook URL, and tell "
    "FlexFactor support if not.",
    "WEBHOOK_DUPLICATE": "Duplicates are ignored safely; act only if the count jumps (FlexFactor may be "
    "retrying because our answers time out).",
    "CRM_REFUSED": "The CRM answered ERROR to a change `crm push` delivered. `recycle-engine crm deliveries "
    "--state REFUSED` lists each with the CRM's message and the value meant; set it in the CRM by hand.",
    "CRM_FAILED": "The CRM did not answer a change after every attempt. Check the CRM's status and our "
    "network, then `recycle-engine crm deliveries --state FAILED` and set the values in the CRM by hand.",
}

# Flags as FlexFactor names them, normalised by normalise_flag().
ATTENTION_ADVICE: Final = {
    "CAPTURE_REQUIRED": "FlexFactor holds an authorization that waits for capture, and we never "
    "capture. Check in the FlexFactor portal that it is voided or captured before billing the "
    "customer again.",
    "REFUNDED": "A recovered payment was refunded. Reverse the recovery in the CRM (the order or "
    "subscription) and do not count it as revenue; it stays in the recovery figures as a recovery.",
    "RETURNED": "The recovered payment was returned. Treat it as a refund: reverse it in the CRM and "
    "decide whether to cancel the subscription.",
    "CHARGEBACK": "The customer disputed a recovered payment. Send the evidence to FlexFactor in time "
    "and consider cancelling the subscription; the recovery figures are not reduced.",
    "TERMINAL_CONFLICT": "FlexFactor reported a final result that contradicts the one we recorded. "
    "Compare the order in the FlexFactor portal and correct the order or subscription by hand.",
    "PROBLEM": "FlexFactor marked the order as a problem. Open it in the FlexFactor portal and contact "
    "FlexFactor support with the order id.",
    "STATUS_MISMATCH": "Our state and FlexFactor's disagree. Run `recycle-engine run reconcile`; if it "
    "persists, check the order in the FlexFactor portal.",
}
UNKNOWN_FLAG_ADVICE: Final = "Look the order up in the FlexFactor portal and decide by hand."

_SIGNATURE_WORDS: Final = ("signature", "hmac", "hash", "header")
_TIME_WORDS: Final = ("stale", "date", "timestamp", "nonce", "replay")


def normalise_flag(flag: object) -> str:
    """A flag as one upper-case word: "capture_required", "CaptureRequired" -> CAPTURE_REQUIRED."""
    text = str(flag or "").strip().upper().replace("-", "_").replace(" ", "_")
    aliases = {"CAPTUREREQUIRED": "CAPTURE_REQUIRED", "STATUSMISMATCH": "STATUS_MISMATCH"}
    return aliases.get(text, text) or "UNKNOWN"


def _advice(kind: str, flag: str = "") -> str:
    if kind == "ATTENTION":
        return ATTENTION_ADVICE.get(flag, UNKNOWN_FLAG_ADVICE)
    return KIND_ADVICE[kind]


def exception_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The listed hand-off exceptions with their flag normalised and a title; oldest first per kind."""
    out = frame.copy()
    is_flag = out["kind"] == "ATTENTION"
    out["flag"] = [normalise_flag(d) if f else "" for d, f in zip(out["detail"], is_flag, strict=True)]
    out["title"] = [
        f"{KIND_TITLES[k]}: {flag}" if flag else KIND_TITLES[k]
        for k, flag in zip(out["kind"], out["flag"], strict=True)
    ]
    out["detail"] = [("" if pd.isna(d) or f else str(d)) for d, f in zip(out["detail"], is_flag, strict=True)]
    return out.reset_index(drop=True)


def exception_summary(
    rows: pd.DataFrame, webhooks: pd.DataFrame, crm: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One line per exception kind (and flag) with its full count and what to do, most urgent first.
    `crm`: the day's refused and failed CRM deliveries by state (columns state, n)."""
    lines: list[dict[str, object]] = []
    if not rows.empty:
        for (kind, flag), part in rows.groupby(["kind", "flag"], sort=False):
            lines.append(
                {
                    "kind": kind,
                    "title": str(part["title"].iloc[0]),
                    "count": int(part["total"].max()),
                    "what_to_do": _advice(str(kind), str(flag)),
                }
            )
    hooks = webhook_summary(webhooks)
    for kind in ("WEBHOOK_UNKNOWN_ORDER", "WEBHOOK_REFUSED", "WEBHOOK_DUPLICATE"):
        part = hooks[hooks["kind"] == kind]
        if not part.empty:
            advice = KIND_ADVICE.get(kind) or "; ".join(dict.fromkeys(part["what_to_do"]))
            lines.append(
                {
                    "kind": kind,
                    "title": KIND_TITLES[kind],
                    "count": int(part["n"].sum()),
                    "what_to_do": advice,
                }
            )
    for state, n in [] if crm is None else zip(crm["state"], crm["n"], strict=True):
        kind = f"CRM_{state}"
        if kind in KIND_TITLES and int(n):
            lines.append(
                {"kind": kind, "title": KIND_TITLES[kind], "count": int(n), "what_to_do": KIND_ADVICE[kind]}
            )
    order = {k: i for i, k in enumerate(KIND_TITLES)}
    out = pd.DataFrame(lines, columns=["kind", "title", "count", "what_to_do"])
    out["order"] = out["kind"].map(order)
    return out.sort_values(["order", "title"]).drop(columns="order").reset_index(drop=True)


def _refusal_advice(reason: str) -> str:
    text = reason.casefold()
    if any(w in text for w in _SIGNATURE_WORDS):
        return "Check that the gateway's hmac_signing_key matches the key in the FlexFactor portal."
    if any(w in text for w in _TIME_WORDS):
        return "Check the server clock (NTP) and webhook_tolerance_seconds; replays are refused on purpose."
    if "other gateway" in text:
        return (
            "Signed with the key of a gateway that did not send the order: check each gateway's webhook URL."
        )
    if "gateway" in text:
        return "The webhook URL names a gateway missing from settings.yaml: fix the URL in the FlexFactor portal."
    return "Read the reason and the stored body; fix the cause or ask FlexFactor support."


def webhook_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The day's problem deliveries by gateway and reason: unknown orders, refusals, duplicates.

    The webhook service journals each delivery with its reason: "unknown order" when it matched no
    hand-off, "other gateway" when the order belongs to another gateway (not applied), a verification
    failure when refused. Applied, recorded and ignored deliveries are no exception."""
    columns = ["kind", "gateway_id", "reason", "n", "what_to_do"]
    rows: list[dict[str, object]] = []
    for r in frame.to_dict("records"):
        reason = str(r["reason"] or "")
        folded = reason.casefold()
        unknown = "unknown order" in folded
        if bool(r["duplicate"]):
            kind, advice = "WEBHOOK_DUPLICATE", KIND_ADVICE["WEBHOOK_DUPLICATE"]
        elif unknown:
            kind, advice = "WEBHOOK_UNKNOWN_ORDER", KIND_ADVICE["WEBHOOK_UNKNOWN_ORDER"]
        elif not bool(r["accepted"]) or "other gateway" in folded:
            kind, advice = "WEBHOOK_REFUSED", _refusal_advice(reason)
        else:
            continue
        rows.append(
            {
                "kind": kind,
                "gateway_id": r["gateway_id"],
                "reason": reason or "(none)",
                "n": int(r["n"]),
                "what_to_do": advice,
            }
        )
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out
    grouped = out.groupby(["kind", "gateway_id", "reason", "what_to_do"], sort=True)["n"].sum().reset_index()
    return grouped[columns]


def _counts_text(raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        return ""
    try:
        counts = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(counts, dict):
        return raw
    # Runs report every counter; the zeros only hide the few that moved.
    moved = [f"{k} {v}" for k, v in sorted(counts.items()) if v not in (0, "0", None)]
    return ", ".join(moved) or "all zero"


def job_runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The day's job runs with duration in seconds (NaN while running) and counts as readable text."""
    out = frame.copy()
    started = pd.to_datetime(out["started_at"], utc=True)
    finished = pd.to_datetime(out["finished_at"], utc=True)
    out["duration_s"] = (finished - started).dt.total_seconds()
    out["counts_text"] = [_counts_text(c) for c in out["counts"]]
    out["error"] = [("" if e is None or pd.isna(e) else str(e)) for e in out["error"]]
    return out
