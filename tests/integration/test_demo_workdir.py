"""`demo --workdir` empties only a folder it created itself, unless --force."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from recycle_engine.cli import main
from recycle_engine.demo.run import DEMO_MARKER, prepare_workdir
from recycle_engine.errors import InputError
from tests.conftest import ROOT


def _demo(workdir: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["demo", "--config", str(ROOT / "settings.yaml"), "--workdir", str(workdir), *extra],
    )
    return result.exit_code, result.output


def test_given_a_folder_with_files_the_demo_did_not_make_when_demo_runs_then_it_refuses_and_keeps_them(
    tmp_path: Path,
) -> None:
    # given
    precious = tmp_path / "checkout"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    # when
    code, output = _demo(precious)
    # then
    assert code == 1
    assert "not empty" in output
    assert "--force" in output
    assert "Traceback" not in output
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_given_the_current_folder_when_demo_runs_even_with_force_then_it_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    inner = tmp_path / "inner"
    inner.mkdir()
    monkeypatch.chdir(inner)
    # when
    code, output = _demo(Path(".."), "--force")
    # then
    assert code == 1
    assert "current folder" in output
    assert (tmp_path / "keep.txt").exists()


def test_given_a_folder_a_previous_demo_made_when_prepared_then_it_is_emptied_and_marked_again(
    tmp_path: Path,
) -> None:
    # given
    workdir = tmp_path / "demo"
    prepare_workdir(workdir, force=False, cwd=tmp_path)
    (workdir / "demo.db").write_text("old", encoding="utf-8")
    # when
    prepare_workdir(workdir, force=False, cwd=tmp_path)
    # then
    assert sorted(os.listdir(workdir)) == [DEMO_MARKER]


def test_given_a_foreign_folder_when_prepared_with_force_then_it_is_emptied(tmp_path: Path) -> None:
    # given
    workdir = tmp_path / "other"
    workdir.mkdir()
    (workdir / "file.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError):
        prepare_workdir(workdir, force=False, cwd=tmp_path)
    # when
    prepare_workdir(workdir, force=True, cwd=tmp_path)
    # then
    assert sorted(os.listdir(workdir)) == [DEMO_MARKER]


def test_given_an_empty_or_absent_folder_when_prepared_then_it_is_used(tmp_path: Path) -> None:
    # given
    empty = tmp_path / "empty"
    empty.mkdir()
    # when
    prepare_workdir(empty, force=False, cwd=tmp_path)
    prepare_workdir(tmp_path / "absent" / "deeper", force=False, cwd=tmp_path)
    # then
    assert (empty / DEMO_MARKER).is_file()
    assert (tmp_path / "absent" / "deeper" / DEMO_MARKER).is_file()
