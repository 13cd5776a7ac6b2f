"""A local NMI Payment API fake (Direct Post `transact.php`, Query `query.php`), written from NMI's
public documentation (docs/nmi.md), with a charge log and injectable faults, for tests and demos."""

from __future__ import annotations

from recycle_engine.nmi_fake.server import FakeNmi, Fault, RunningFakeNmi, start_fake_nmi

__all__ = ["FakeNmi", "Fault", "RunningFakeNmi", "start_fake_nmi"]
