"""An archive its own commands can always read: damaged or foreign entries are skipped with a
warning (never fatal to the other runs), ``check`` fails when a run cannot be checked, and
``add`` never publishes what the readers would choke on (issue 18, items 11-12 and smaller)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hpcbench.archive import Archive, add_run
from tests.archive_runs import make_run
from tests.test_archive import cli
from tests.test_check import REFERENCES

# Every reading command; "A" stands for the archive folder.
COMMANDS: list[tuple[str, ...]] = [
    ("archive", "list", "-a", "A"),
    ("archive", "list", "-a", "A", "--json"),
    ("archive", "export", "-a", "A", "--csv"),
    ("archive", "report", "-a", "A"),
    ("archive", "compare", "-a", "A", "run-a", "run-c"),
    ("archive", "show", "-a", "A", "run-a"),
    ("archive", "rebuild-index", "-a", "A"),
]


def _archive(tmp_path: Path) -> Path:
    archive = tmp_path / "archive"
    for run_id in ("run-a", "run-b", "run-c"):
        add_run(archive, make_run(tmp_path / "runs", run_id))
    return archive


def _run_all(capsys: pytest.CaptureFixture[str], archive: Path, skipped: str | None) -> None:
    """Every command exits 0 without a traceback, warning about ``skipped`` (show: the run
    asked for only)."""
    for command in COMMANDS:
        argv = [str(archive) if word == "A" else word for word in command]
        code, out, err = cli(capsys, *argv)
        assert code == 0 and "Traceback" not in err, (command, out, err)
        if skipped is None:
            assert "warning" not in err, (command, err)
        elif command[1] == "rebuild-index":
            assert f"not indexed, left as it is: {skipped}" in err, err
        elif command[1] != "show":
            assert f"skipped run {skipped!r}" in err, (command, err)


@pytest.mark.parametrize(
    "content", ["{}", "null", "[]", '{"format": 1}', '"text"', "5"], ids=lambda c: c
)
def test_a_damaged_index_entry_is_skipped_by_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    archive = _archive(tmp_path)
    (archive / "index" / "run-b.json").write_text(content)
    code, out, err = cli(capsys, "archive", "list", "-a", str(archive))
    assert code == 0 and "run-a" in out and "run-c" in out and "run-b" not in out
    assert "hpcbench: warning: skipped run 'run-b'" in err and "damaged index entry" in err
    for command in COMMANDS[:-1]:
        argv = [str(archive) if word == "A" else word for word in command]
        code, out, err = cli(capsys, *argv)
        assert code == 0 and "Traceback" not in err, (command, err)
    # rebuild-index derives the entry again from the run's own files: healed.
    code, _, err = cli(capsys, "archive", "rebuild-index", "-a", str(archive))
    assert code == 0, err
    assert [e["run_id"] for e in Archive(archive).entries()] == ["run-a", "run-b", "run-c"]


def test_a_damaged_record_is_skipped_and_check_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    record = archive / "runs" / "run-b" / "record.json"
    data = json.loads(record.read_text())
    record.chmod(0o600)
    record.write_text(json.dumps({**data, "files": 5}))
    (archive / "index" / "run-b.json").unlink()  # so the entry must be derived from the record
    _run_all(capsys, archive, "run-b")
    references = tmp_path / "references.yaml"
    references.write_text(REFERENCES)
    # The two readable runs pass; the one that could not be read fails the check.
    code, out, err = cli(capsys, "check", str(archive), "--references", str(references))
    assert code == 1, out + err
    assert "could not be read, so not checked: run-b" in err
    assert "files: must map each file name" in err


def test_an_entry_missing_its_fields_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    entry = json.loads((archive / "index" / "run-b.json").read_text())
    del entry["params"]  # no parameters: no reference matches it, a silent skip before
    (archive / "index" / "run-b.json").write_text(json.dumps(entry))
    references = tmp_path / "references.yaml"
    references.write_text(REFERENCES)
    code, out, err = cli(capsys, "check", str(archive), "--references", str(references))
    assert code == 1 and "(no 'params')" in err, out + err


def test_a_run_from_a_non_utf8_path_is_archived_and_listable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    add_run(archive, make_run(tmp_path / "runs", "run-a"))
    add_run(archive, make_run(tmp_path / "runs", "run-c"))
    # A folder name in Latin-1 ("café"), as another locale leaves it.
    parent = tmp_path / os.fsdecode(b"caf\xe9")
    run = make_run(parent, "run-b")
    (run / os.fsdecode(b"notes-\xe9.txt")).write_text("kept out: no JSON index can name it")
    code, _out, err = cli(capsys, "archive", "add", str(run), "--to", str(archive))
    assert code == 0, err
    (archive / "index" / "run-b.json").unlink()  # derived again on listing
    _run_all(capsys, archive, None)
    entry = Archive(archive).entry("run-b")
    assert entry["source"].endswith("caf\\udce9/run-b")
    assert sorted(p.name for p in (archive / "runs" / "run-b").iterdir()) == [
        "job.sbatch", "plan.json", "record.json", "result.h5", "run.json", "site.yaml",
        "spec.json", "summary.json",
    ]  # fmt: skip


def test_a_folder_that_is_not_a_run_id_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    # What an older hpcbench published for run id "nl-run\n".
    (archive / "runs" / "nl-run\n").mkdir()
    code, out, err = cli(capsys, "archive", "list", "-a", str(archive))
    assert code == 0 and "run-c" in out
    assert "skipped run 'nl-run\\n'" in err and "not a run id" in err


def test_add_refuses_a_damaged_archive_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path)
    (archive / "archive.json").write_text('{"format": "something else"}')
    run = make_run(tmp_path / "more", "run-d")
    code, _, err = cli(capsys, "archive", "add", str(run), "--to", str(archive))
    assert code == 2 and "archive.json: format 'something else'" in err
    assert not (archive / "runs" / "run-d").exists()


def test_rebuild_keeps_an_entry_published_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = Archive(_archive(tmp_path))
    late = make_run(tmp_path / "late", "run-late")
    real_run_ids = Archive.run_ids

    def listed_then_added(self: Archive) -> list[str]:
        ids = real_run_ids(self)
        add_run(self.root, late)  # a concurrent add, after the rebuild listed the runs
        monkeypatch.setattr(Archive, "run_ids", real_run_ids)
        return ids

    monkeypatch.setattr(Archive, "run_ids", listed_then_added)
    report = archive.rebuild_index()
    assert report.orphans == ()
    assert (archive.index_dir / "run-late.json").exists()


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_nothing_is_world_writable_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run = make_run(tmp_path / "runs", "run-a")
        add_run(tmp_path / "archive", run)
    finally:
        os.umask(old)
    for name in ("result.h5", "summary.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) & 0o022 == 0, name
    folder = tmp_path / "archive" / "runs" / "run-a"
    modes: dict[str, Any] = {
        **_modes(folder),
        "run folder": stat.S_IMODE(folder.stat().st_mode),
        "index": stat.S_IMODE((tmp_path / "archive/index/run-a.json").stat().st_mode),
    }
    assert {k: oct(v) for k, v in modes.items() if v & 0o022} == {}
