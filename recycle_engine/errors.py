"""The one exception tree of the engine.

    RecycleEngineError
    ├── ConfigError              settings.yaml or environment is wrong; carries every problem found
    ├── InputError               a feed row, a CLI argument or a request body is invalid
    ├── NotFound                 an order, a subscription or a hand-off does not exist
    ├── IllegalTransition        a hand-off state change the lifecycle table does not allow
    ├── StorageError             the database refused or is unreachable
    │   ├── DatabaseBusy               locked by another writer beyond the busy timeout
    │   ├── DatabaseUnreachable        cannot connect, or the connection was lost
    │   └── DatabaseDiskError          disk I/O error, disk full, a damaged or read-only file
    └── FlexFactorError          anything that went wrong talking to FlexFactor
        ├── FlexFactorConfigError      bad credentials (400 at /oauth2/token), 403, 405: not retried
        ├── FlexFactorNotSent          the request never left us (connect error): safe to send again
        │   └── FlexFactorRateLimited  429 after retries: back-pressure, send again later (retry_after)
        ├── FlexFactorUnknownOutcome   read timeout or 5xx after sending: FlexFactor may hold the order
        ├── FlexFactorRejected         400 validation error, with the normalised field errors
        ├── FlexFactorConflict         409: idempotent request in progress, or key reused with another body
        ├── FlexFactorNotFoundError    404 on an order lookup
        └── FlexFactorProtocolError    an answer we cannot read (unknown status, malformed JSON)
    └── ProcessorError           anything that went wrong talking to an ordinary processor (NMI)
        ├── ProcessorConfigError       the processor refused our credentials: not retried
        └── ProcessorUnknownOutcome    timeout, 5xx, reset or unreadable answer after sending: it may
                                       have charged; look the charge up by our order id before resending
    ├── ReportDeliveryError      the report could not be e-mailed (server unreachable, refused, timed out)
    └── CrmError                 anything that went wrong talking to the merchant's CRM
        ├── CrmRefused                 an ERROR envelope (credentials, IP allow-list, a refused change)
        ├── CrmUnavailable             no answer after retries (connect error, timeout, 5xx): nothing
                                       is known; a change may or may not have been applied
        └── CrmProtocolError           an answer we cannot read (not JSON, no envelope)

Messages are built from ids and codes, never from card data, tokens or secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "CrmError",
    "CrmProtocolError",
    "CrmRefused",
    "CrmUnavailable",
    "DatabaseBusy",
    "DatabaseDiskError",
    "DatabaseUnreachable",
    "FlexFactorConfigError",
    "FlexFactorConflict",
    "FlexFactorError",
    "FlexFactorErrorBody",
    "FlexFactorNotFoundError",
    "FlexFactorNotSent",
    "FlexFactorProtocolError",
    "FlexFactorRateLimited",
    "FlexFactorRejected",
    "FlexFactorUnknownOutcome",
    "IllegalTransition",
    "InputError",
    "NotFound",
    "ProcessorConfigError",
    "ProcessorError",
    "ProcessorUnknownOutcome",
    "RecycleEngineError",
    "ReportDeliveryError",
    "StorageError",
]


class RecycleEngineError(Exception):
    """Base of every error the engine raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in the settings: where it is and what is wrong."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None  # 1-based; only where the reader knows it (YAML syntax)

    def __str__(self) -> str:
        at = f"line {self.line}, column {self.column}" if self.line and self.column else f"line {self.line}"
        where = f"{self.path} ({at})" if self.line else self.path
        return f"{where}: {self.message}"


class ConfigError(RecycleEngineError):
    """The settings cannot be used; `problems` lists every one found."""

    def __init__(self, problems: Sequence[ConfigProblem] | str, source: str = "settings") -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem(path=source, message=problems)]
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.source = source
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {count} problem{'s' if count != 1 else ''}\n{lines}")


class InputError(RecycleEngineError):
    """Input from a user, a feed or a caller is invalid."""


class NotFound(RecycleEngineError):
    """The named record does not exist."""


class IllegalTransition(RecycleEngineError):
    """The lifecycle table has no move for this (state, event) pair."""


class StorageError(RecycleEngineError):
    """The database failed."""


# The three below are raised at the storage edge (storage/faults.py) in place of the driver's error,
# with one line naming the database and what to do; what was committed stays committed.


class DatabaseBusy(StorageError):
    """Another process held the database's lock for longer than the busy timeout."""


class DatabaseUnreachable(StorageError):
    """The database could not be reached, or the connection to it was lost."""


class DatabaseDiskError(StorageError):
    """The database's storage failed: disk I/O error, disk full, a damaged or read-only file."""


class FlexFactorError(RecycleEngineError):
    """Base of FlexFactor failures."""


class FlexFactorConfigError(FlexFactorError):
    """FlexFactor refused our credentials or our call shape: fix settings, do not retry."""


class FlexFactorNotSent(FlexFactorError):
    """The request never reached FlexFactor (connect error after retries); sending again is safe."""


class FlexFactorRateLimited(FlexFactorNotSent):
    """FlexFactor answered 429 (too many requests) on every try: nothing was done, so the same body
    and key may be sent again once it eases. `retry_after` is its last Retry-After in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class FlexFactorUnknownOutcome(FlexFactorError):
    """The request may have reached FlexFactor but its answer was lost; look it up before resending."""


@dataclass(frozen=True)
class FlexFactorErrorBody:
    """A FlexFactor error answer normalised from any of its body shapes."""

    http_status: int
    trace_id: str | None = None
    field_errors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    messages: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()  # business error codes (item2 of an HTTP-200 failure, responseCode)

    def summary(self) -> str:
        parts = [f"{k}: {'; '.join(v)}" for k, v in self.field_errors.items()]
        parts.extend(self.messages)
        parts.extend(f"code {c}" for c in self.codes)
        text = " | ".join(parts) if parts else "no detail"
        trace = f" (trace {self.trace_id})" if self.trace_id else ""
        return f"HTTP {self.http_status}: {text}{trace}"


class FlexFactorRejected(FlexFactorError):
    """FlexFactor refused the request as invalid (400); the hand-off fails with these reasons."""

    def __init__(self, body: FlexFactorErrorBody) -> None:
        self.body = body
        super().__init__(f"FlexFactor rejected the request: {body.summary()}")


class FlexFactorConflict(FlexFactorError):
    """409: the same idempotency key is in flight or was used with another body."""


class FlexFactorNotFoundError(FlexFactorError):
    """FlexFactor does not know the order id."""


class FlexFactorProtocolError(FlexFactorError):
    """FlexFactor answered something we cannot interpret (unknown status, malformed body)."""


class ProcessorError(RecycleEngineError):
    """Anything that went wrong talking to an ordinary processor gateway."""


class ProcessorConfigError(ProcessorError):
    """The processor refused our credentials or configuration; retrying cannot help."""


class ProcessorUnknownOutcome(ProcessorError):
    """The request may have reached the processor but its answer was lost (timeout, 5xx, reset,
    malformed): the charge must be looked up by our order id before anything is sent again."""


class ReportDeliveryError(RecycleEngineError):
    """The report could not be e-mailed: the SMTP server was unreachable, refused it or timed out.
    The message names the server and the failure, never the credentials."""


class CrmError(RecycleEngineError):
    """A call to the merchant's CRM failed."""


class CrmRefused(CrmError):
    """The CRM answered `result: ERROR`; `message` is its text (checked for card numbers before use)."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"CRM {endpoint} refused: {message}")
        self.endpoint = endpoint
        self.message = message


class CrmUnavailable(CrmError):
    """No usable answer after the retries; for an update, the CRM may have applied it."""


class CrmProtocolError(CrmError):
    """An answer that is not the CRM's JSON envelope."""
