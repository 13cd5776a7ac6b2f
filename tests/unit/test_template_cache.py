"""The report's compiled templates kept between processes: the next environment renders the same text
from them, and a cache file that is damaged or cannot be written never fails a render."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from recycle_engine.reports import render

TZ = ZoneInfo("America/New_York")
CONTEXT = {
    "links": [],
    "generated_at": datetime(2026, 6, 13, 10, tzinfo=UTC),
    "tz_name": TZ.key,
    "dashboard": None,
}


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each environment made here keeps its compiled templates in a folder of the test's own."""
    folder = tmp_path / "compiled"
    folder.mkdir()

    def in_folder() -> render._CompiledTemplates:
        return render._CompiledTemplates(str(folder), pattern="recycle-engine-%s.cache")

    monkeypatch.setattr(render, "_compiled_templates", in_folder)
    render.environment.cache_clear()
    yield folder
    render.environment.cache_clear()


def _fresh_render() -> str:
    # A new environment, as the next process makes: it has compiled nothing yet.
    render.environment.cache_clear()
    return render.render_template("index.html.j2", TZ, CONTEXT)


def test_given_templates_compiled_once_when_a_new_environment_renders_then_it_loads_them_and_renders_the_same(
    cache_dir: Path,
) -> None:
    # given
    first = _fresh_render()
    kept = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
    assert kept  # the templates' compiled code was kept
    # when
    again = _fresh_render()
    # then: the same text, from the same files (not compiled and written again)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == kept


def test_given_a_damaged_cache_file_when_a_new_environment_renders_then_it_compiles_and_renders_the_same(
    cache_dir: Path,
) -> None:
    # given
    first = _fresh_render()
    for path in cache_dir.iterdir():
        path.write_bytes(path.read_bytes()[:40])  # truncated inside the compiled code
    # when / then
    assert _fresh_render() == first


def test_given_a_cache_folder_that_cannot_be_written_when_rendering_then_it_renders_without_it(
    cache_dir: Path,
) -> None:
    # given: the folder is gone (a temporary directory cleaned), so nothing can be written in it
    cache_dir.rmdir()
    # when / then
    assert "<html" in _fresh_render()
    assert not cache_dir.exists()
