"""The read-and-check stage of an import, run one chunk ahead of the writes in a child process
(forked_stage): parsing and checking a chunk overlaps writing the previous one on two cores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pandas as pd

from recycle_engine.errors import InputError
from recycle_engine.services.forked_stage import can_fork, collection_deferred, produced_in_child
from recycle_engine.services.intake.decline_effects import ImportSession, PreparedChunk
from recycle_engine.services.intake.feed_file import read_chunks

__all__ = ["StagedChunk", "collection_deferred", "staged_chunks"]

# The writer waits idle for the first chunk: small chunks, doubling, get both stages busy sooner.
_RAMP: Final = 16  # the first chunk is this fraction of a full one


@dataclass(frozen=True)
class StagedChunk:
    """One chunk through the checks: its rejected rows (masked, with line and reason) and the good
    rows ready to write."""

    rejects: pd.DataFrame
    rejected: int
    prepared: PreparedChunk


def staged_chunks(
    path: Path, header: Sequence[str], chunk_rows: int, importer: ImportSession, *, ahead: bool = True
) -> Iterator[StagedChunk]:
    """The feed's chunks, checked and prepared, in file order.

    With `ahead`, a forked child reads and checks the next chunk while the caller writes this one
    (where forking is not safe, forked_stage.can_fork, the stage runs inline).
    """
    if not ahead or not can_fork():
        yield from _stage(path, header, chunk_rows, importer)
        return
    yield from produced_in_child(
        lambda: _stage(path, header, chunk_rows, importer, max(1, chunk_rows // _RAMP)),
        name="feed checker",
        source=str(path),
        passed=(InputError,),
    )


def _stage(
    path: Path, header: Sequence[str], chunk_rows: int, importer: ImportSession, first_rows: int | None = None
) -> Iterator[StagedChunk]:
    for frame, first_line in read_chunks(path, header, chunk_rows, first_rows=first_rows):
        with collection_deferred():
            checked, prepared = importer.check_and_prepare(frame, first_line)
            staged = StagedChunk(checked.rejects_frame(), len(checked.reasons), prepared)
        yield staged
