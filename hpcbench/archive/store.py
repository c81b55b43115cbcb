"""The archive on disk: one immutable folder per run, published by a rename; a rebuildable index.

Layout (documented in docs/archive.md)::

    ARCHIVE/
      archive.json          marker: {"format": "hpcbench-archive", "version": 1}
      runs/<run_id>/        one folder per run: summary.json, result.h5, plan.json, spec.json,
                            run.json, topology.json, site config, rendered script, Slurm info,
                            and record.json (what the archive added: checksums, source, time)
      index/<run_id>.json   one index entry per run, derived only from runs/<run_id>/
      staging/              folders being filled; renamed into runs/ when complete

Concurrency: nothing is ever written in place. A writer fills a private folder under
``staging/`` (same filesystem as ``runs/``) and publishes it with one ``rename``, which POSIX
makes atomic (NFS and Lustre too: the server performs it), so a reader sees the whole run or no
run. Two writers of the same run race on that rename; the loser finds the winner's folder,
checks it holds the same files and returns. Index entries are per run and written to a temporary
name then renamed, so no two processes ever write the same file and no lock (fcntl, HDF5 file
locking) is needed anywhere. Listing reads ``runs/`` and derives any missing entry, so the index
is a cache that :func:`rebuild_index` regenerates byte for byte from the runs.

Only JSON, YAML (safe loader) and byte copies are read or written here: nothing from a run
directory is unpickled or executed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.archive.entry import (
    ENTRY_FORMAT,
    check_entry,
    completeness,
    entry_from_folder,
    read_json_object,
    slurm_record,
    utf8_text,
)
from hpcbench.errors import ArchiveError, excerpt
from hpcbench.jsonfile import write_atomic
from hpcbench.runfiles import (
    PLAN_FILE,
    RESULT_FILE,
    RUN_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    TOPOLOGY_FILE,
    RunFiles,
)
from hpcbench.text import plural

ARCHIVE_FORMAT = "hpcbench-archive"
ARCHIVE_VERSION = 1
MARKER = "archive.json"
RECORD = "record.json"
RUNS_DIR = "runs"
INDEX_DIR = "index"
STAGING_DIR = "staging"

# Files copied from a run directory by name; the rest are chosen by suffix below.
NAMED_FILES = (SUMMARY_FILE, RESULT_FILE, PLAN_FILE, SPEC_FILE, RUN_FILE, TOPOLOGY_FILE)
# Top-level files worth keeping: configs, rendered scripts, Slurm job info and job output.
COPIED_SUFFIXES = (".json", ".yaml", ".yml", ".sh", ".sbatch", ".slurm", ".txt", ".out", ".err")
# Never copied: per-rank files (result.h5 holds them all), unfinished files, pickles
# (submitit's), and our own record, which the archive writes itself.
_SKIPPED = re.compile(r"^(rank-\d+\.h5.*|.*\.part|.*\.pkl|.*\.pickle|record\.json)$")

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
STAGING_STALE_S = 24 * 3600.0
_INDEX_TMP_STALE_S = 3600.0


@contextlib.contextmanager
def _fs_errors(where: Path) -> Iterator[None]:
    """Turn a filesystem failure (permissions, a vanished file) into one ArchiveError line."""
    try:
        yield
    except OSError as exc:
        raise ArchiveError(f"{exc.filename or where}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``add_run`` did: ``added`` is False when the same run was already archived."""

    run_id: str
    added: bool
    complete: bool
    incomplete_reason: str | None = None


def check_run_id(run_id: object, where: str) -> str:
    """Return ``run_id`` when it is safe as a folder name, else raise ArchiveError.

    >>> check_run_id("20261128-204700-ab12", "run.json")
    '20261128-204700-ab12'
    >>> check_run_id("../etc", "run.json")
    Traceback (most recent call last):
    ...
    hpcbench.errors.ArchiveError: run.json: run_id '../etc' is not a safe name ...
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id.endswith(".tmp"):
        raise ArchiveError(
            f"{where}: run_id {excerpt(run_id)} is not a safe name (letters, digits, '.', '_', "
            "'+', '-'; 1-128 characters, not starting with '.')"
        )
    return run_id


def dump_json(data: Any) -> str:
    """Deterministic JSON (sorted keys) so that equal contents give equal bytes.

    >>> dump_json({"b": 1, "a": [1.5, None]})
    '{"a": [1.5, null], "b": 1}'
    """
    return json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False)


def _fsync_dir(path: Path) -> None:
    # Make a rename durable; some filesystems refuse fsync on a directory, which is harmless.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path, mode: int) -> tuple[int, str]:
    """Copy bytes (never following a link), fsync, and return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    src_fd = os.open(src, flags)
    with os.fdopen(src_fd, "rb") as source, open(dst, "wb") as target:
        while True:
            chunk = source.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            target.write(chunk)
        target.flush()
        os.fsync(target.fileno())
    os.chmod(dst, mode)
    return size, digest.hexdigest()


def _selected_files(run_dir: Path) -> list[Path]:
    """The run directory's files the archive keeps: regular files only, links never followed."""
    chosen: list[Path] = []
    for child in sorted(run_dir.iterdir()):
        name = child.name
        if name.startswith(".") or _SKIPPED.match(name) or utf8_text(name) != name:
            continue  # hidden, ours to skip, or a name no JSON index can hold
        if name not in NAMED_FILES and not name.endswith(COPIED_SUFFIXES):
            continue
        info = child.lstat()
        if not stat.S_ISREG(info.st_mode):
            continue  # a symlink could point anywhere (another user's file, a device)
        chosen.append(child)
    return chosen


def run_id_of(run_dir: Path, summary: Mapping[str, Any]) -> str:
    """The run's stable id: ``run.json``'s ``run_id``, else the summary's ``run.run_id``."""
    run_json = RunFiles(run_dir).run_info
    if run_json.is_file():
        data = read_json_object(run_json, RUN_FILE)
        if "run_id" in data:
            return check_run_id(data["run_id"], str(run_json))
    block = summary.get("run")
    if isinstance(block, Mapping) and "run_id" in block:
        return check_run_id(block["run_id"], f"{run_dir / SUMMARY_FILE}: run.run_id")
    raise ArchiveError(
        f"{run_dir}: no run id (neither run.json 'run_id' nor summary.json 'run.run_id')"
    )


class Archive:
    """An archive folder. Creating the object touches nothing; ``create()`` makes the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        # (run folder name, why) of the runs the last ``entries()`` could not read.
        self.skipped: list[tuple[str, str]] = []

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def index_dir(self) -> Path:
        return self.root / INDEX_DIR

    @property
    def staging_dir(self) -> Path:
        return self.root / STAGING_DIR

    def _mode(self) -> int:
        # Run folders inherit the archive root's permissions: a team archive made group-readable
        # (chmod 750 ARCHIVE) stays so; the default root (from the umask) is the user's choice.
        # Never writable by group or others (a umask of 000 gives a 0777 root): archived runs
        # are immutable, and nobody else may alter them.
        return stat.S_IMODE(self.root.stat().st_mode) & ~0o022

    def _file_mode(self) -> int:
        return self._mode() & 0o666

    def create(self) -> None:
        """Make the archive layout (idempotent and safe when many processes do it at once)."""
        marker = self.root / MARKER
        if self.root.exists() and not self.root.is_dir():
            raise ArchiveError(f"{self.root}: exists and is not a folder")
        # Another writer may be creating the layout right now: only foreign files mean "not ours".
        ours = {RUNS_DIR, INDEX_DIR, STAGING_DIR, MARKER}
        if (
            self.root.is_dir()
            and not marker.exists()
            and any(
                p.name not in ours and not p.name.startswith(f".{MARKER}.")
                for p in self.root.iterdir()
            )
        ):
            raise ArchiveError(
                f"{self.root}: not an hpcbench archive (no {MARKER}) and not empty; "
                "choose a new or empty folder"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (self.runs_dir, self.index_dir, self.staging_dir):
            sub.mkdir(exist_ok=True)
        if not marker.exists():
            text = dump_json({"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION}) + "\n"
            write_atomic(marker, text, mode=self._file_mode(), durable=True)
        # Never add into an archive its own readers refuse (a damaged archive.json).
        self.check()

    def check(self) -> None:
        """Raise ArchiveError unless this folder is an archive of a version we can read."""
        marker = self.root / MARKER
        if not self.root.is_dir():
            raise ArchiveError(f"{self.root}: no such archive (create one with 'archive add')")
        if not marker.is_file():
            raise ArchiveError(f"{self.root}: not an hpcbench archive (no {MARKER})")
        data = read_json_object(marker, MARKER)
        if data.get("format") != ARCHIVE_FORMAT or data.get("version") != ARCHIVE_VERSION:
            raise ArchiveError(
                f"{marker}: format {data.get('format')!r} version {data.get('version')!r} "
                f"is not {ARCHIVE_FORMAT!r} version {ARCHIVE_VERSION}"
            )

    # -- adding -----------------------------------------------------------------------------

    def add(self, run_dir: Path | str, *, replace: bool = False) -> AddResult:
        """Archive one run directory; see :func:`add_run`."""
        try:
            return self._add(Path(run_dir), replace)
        except OSError as exc:
            where = exc.filename or run_dir
            raise ArchiveError(f"{where}: cannot archive {run_dir} ({exc.strerror})") from exc

    def _add(self, run_dir: Path, replace: bool = False) -> AddResult:
        if not run_dir.is_dir():
            raise ArchiveError(f"{run_dir}: not a run directory")
        summary_path = run_dir / SUMMARY_FILE
        if not summary_path.is_file():
            raise ArchiveError(
                f"{summary_path}: not found; aggregate the run first "
                "('hpcbench aggregate RUN_DIR', with --allow-partial for an unfinished run)"
            )
        summary = read_json_object(summary_path, "summary")
        run_id = run_id_of(run_dir, summary)
        self.create()
        mode = self._mode()
        host = socket.gethostname().split(".")[0] or "host"
        staging = Path(
            tempfile.mkdtemp(dir=self.staging_dir, prefix=f"{run_id}.{host}.{os.getpid()}.")
        )
        try:
            files: dict[str, dict[str, Any]] = {}
            for src in _selected_files(run_dir):
                size, sha = _copy_file(src, staging / src.name, self._file_mode())
                files[src.name] = {"bytes": size, "sha256": sha}
            # The copied summary is what the archive judges, not the (mutable) source file.
            summary = read_json_object(staging / SUMMARY_FILE, "summary")
            complete, reason = completeness(summary, slurm_record(staging))
            archived_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            # A path that is not UTF-8 (bytes from another locale) is kept readable, escaped.
            source = utf8_text(str(run_dir.resolve()))
            record = {
                "format": ENTRY_FORMAT,
                "run_id": run_id,
                "archived_at": archived_at,
                "archived_by": {"host": host, "pid": os.getpid()},
                "source": source,
                "complete": complete,
                "incomplete_reason": reason,
                "files": files,
                "content_sha256": _content_digest(files),
            }
            text = json.dumps(record, indent=2) + "\n"
            write_atomic(staging / RECORD, text, mode=self._file_mode(), durable=True)
            # Derive the index entry now: a run whose files cannot be read (a damaged
            # spec.json, say) is refused here rather than published and then unlistable.
            entry = entry_from_folder(
                staging,
                run_id=run_id,
                archived_at=archived_at,
                source=source,
                file_names=sorted(files),
            )
            os.chmod(staging, mode)
            final = self.runs_dir / run_id
            try:
                os.rename(staging, final)
            except OSError as exc:
                if not final.is_dir():
                    raise ArchiveError(f"{final}: cannot publish run ({exc.strerror})") from exc
                existing = read_record(final / RECORD)
                if existing.get("content_sha256") == record["content_sha256"]:
                    added = False
                elif not replace:
                    raise ArchiveError(
                        f"{run_dir}: run {run_id} is already archived in {final} with different "
                        "files (re-aggregated, e.g. with another --dlbs-trim?); 'hpcbench archive "
                        "add --replace' stores this version in its place"
                    ) from None
                else:
                    # Moved aside inside the archive (same filesystem), then the new copy takes
                    # its name; the old one is deleted only once the new one is published.
                    old = Path(tempfile.mkdtemp(dir=self.staging_dir, prefix=f"{run_id}.old."))
                    os.rename(final, old / run_id)
                    os.rename(staging, final)
                    _fsync_dir(self.runs_dir)
                    shutil.rmtree(old, ignore_errors=True)
                    added = True
            else:
                _fsync_dir(self.runs_dir)
                added = True
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self._write_entry(entry if added else self.entry_from_run(run_id))
        return AddResult(run_id=run_id, added=added, complete=complete, incomplete_reason=reason)

    # -- index ------------------------------------------------------------------------------

    def _folder_names(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.runs_dir.iterdir() if not p.name.startswith(".") and p.is_dir()
        )

    def run_ids(self) -> list[str]:
        """Ids of the published runs, sorted (folders whose name is not a safe id are not)."""
        return [name for name in self._folder_names() if _is_run_id(name)]

    def entry_from_run(self, run_id: str) -> dict[str, Any]:
        """The index entry of one run, derived only from the files in its folder."""
        folder = self.runs_dir / check_run_id(run_id, str(self.runs_dir))
        record = read_record(folder / RECORD)
        return entry_from_folder(
            folder,
            run_id=run_id,
            archived_at=record.get("archived_at"),
            source=record.get("source"),
            file_names=sorted(record["files"]),
        )

    def _entry_path(self, run_id: str) -> Path:
        return self.index_dir / f"{run_id}.json"

    def _write_entry(self, entry: Mapping[str, Any]) -> None:
        self.index_dir.mkdir(exist_ok=True)
        text = dump_json(entry) + "\n"
        write_atomic(self._entry_path(entry["run_id"]), text, mode=self._file_mode(), durable=True)

    def entries(self, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Every readable run's index entry, sorted by run id (see :meth:`_entries`).

        A run that cannot be read (a damaged record or entry, a folder name that is not a run
        id) is skipped: ``warn`` (default: a line on stderr) is told, and the run is listed in
        :attr:`skipped`. One bad run never hides the others.
        """
        with _fs_errors(self.root):
            return self._entries(warn or _warn_stderr)

    def _entries(self, warn: Callable[[str], None]) -> list[dict[str, Any]]:
        """Reads ``index/``; a run whose entry is missing (its writer died between publishing
        the run and writing the entry) is derived from its folder and the entry written; an
        entry whose run folder is gone is ignored.
        """
        self.check()
        self.skipped = []
        entries = []
        for name in self._folder_names():
            try:
                if not _is_run_id(name):
                    raise ArchiveError(
                        f"{self.runs_dir / utf8_text(name)!r}: not a run id (letters, digits, "
                        "'.', '_', '+', '-'); move the folder out of the archive"
                    )
                entries.append(self._load_entry(name))
            except (ArchiveError, OSError, ValueError) as exc:
                # ValueError: UnicodeError from names or contents in another encoding.
                why = utf8_text(" ".join(str(exc).split()))
                self.skipped.append((utf8_text(name), why))
                warn(f"skipped run {utf8_text(name)!r}: {why}")
        return entries

    def entry(self, run_id: str) -> dict[str, Any]:
        """One run's entry by id or by an unambiguous prefix of its id."""
        with _fs_errors(self.root):
            return self._entry(run_id)

    def _entry(self, run_id: str) -> dict[str, Any]:
        ids = self.run_ids()
        matches = [run_id] if run_id in ids else [i for i in ids if i.startswith(run_id)]
        if not matches:
            from hpcbench.errors import closest

            raise ArchiveError(f"{self.root}: no run {excerpt(run_id)}{closest(run_id, ids)}")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
            raise ArchiveError(f"{self.root}: run id prefix {run_id!r} is ambiguous: {shown}")
        self.check()
        return self._load_entry(matches[0])

    def _load_entry(self, run_id: str) -> dict[str, Any]:
        path = self._entry_path(run_id)
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            entry = self.entry_from_run(run_id)
            # A read-only archive (another user's) is still listable.
            with contextlib.suppress(OSError):
                self._write_entry(entry)
            return entry
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArchiveError(
                f"{path}: damaged index entry ({exc}); run 'hpcbench archive rebuild-index'"
            ) from exc
        return check_entry(data, path, run_id)

    def rebuild_index(self, *, stale_after_s: float = STAGING_STALE_S) -> RebuildReport:
        """Regenerate every index entry from the runs; drop orphans and stale staging folders."""
        with _fs_errors(self.root):
            return self._rebuild_index(stale_after_s)

    def _rebuild_index(self, stale_after_s: float) -> RebuildReport:
        self.check()
        self.index_dir.mkdir(exist_ok=True)
        ids = self.run_ids()
        written = 0
        skipped: list[str] = []
        for run_id in ids:
            try:
                entry = self.entry_from_run(run_id)
            except (ArchiveError, OSError, ValueError) as exc:
                skipped.append(f"{run_id}: {utf8_text(' '.join(str(exc).split()))}")
                continue
            path = self._entry_path(run_id)
            text = dump_json(entry) + "\n"
            try:
                current = path.read_text(encoding="utf-8")
            except (FileNotFoundError, UnicodeDecodeError):
                current = None
            if current != text:
                self._write_entry(entry)
                written += 1
        removed: list[str] = []
        now = time.time()
        for path in sorted(self.index_dir.iterdir()):
            if path.name.startswith("."):
                # A temporary entry of a writer that died; a live writer renames within seconds.
                if now - path.lstat().st_mtime > _INDEX_TMP_STALE_S:
                    path.unlink(missing_ok=True)
                continue
            # A run published after ``ids`` was listed (a concurrent add) is not an orphan.
            if path.suffix == ".json" and path.stem not in ids:
                if (self.runs_dir / path.stem).is_dir():
                    continue
                path.unlink(missing_ok=True)
                removed.append(path.name)
        stale: list[str] = []
        if self.staging_dir.is_dir():
            for path in sorted(self.staging_dir.iterdir()):
                # A live writer finishes in seconds; only a folder left by a killed one is old.
                if now - path.lstat().st_mtime > stale_after_s:
                    shutil.rmtree(path, ignore_errors=True)
                    stale.append(path.name)
        return RebuildReport(
            runs=len(ids),
            rewritten=written,
            orphans=tuple(removed),
            stale=tuple(stale),
            skipped=tuple(skipped),
        )

    def index_snapshot(self) -> dict[str, str]:
        """File name → text of every index entry (for comparing an index with a rebuilt one)."""
        return {
            p.name: p.read_text(encoding="utf-8")
            for p in sorted(self.index_dir.iterdir())
            if not p.name.startswith(".")
        }


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What ``rebuild_index`` did: entries rewritten, orphan entries and staging folders removed."""

    runs: int
    rewritten: int
    orphans: tuple[str, ...]
    stale: tuple[str, ...]
    # "run_id: why" of runs whose entry could not be derived (left as they are).
    skipped: tuple[str, ...] = ()


def _is_run_id(name: str) -> bool:
    return bool(_RUN_ID.fullmatch(name)) and not name.endswith(".tmp")


def _warn_stderr(message: str) -> None:
    print(f"hpcbench: warning: {message}", file=sys.stderr)


def read_record(path: Path) -> dict[str, Any]:
    """A run's ``record.json``, checked: ArchiveError naming the file and field otherwise."""
    record = read_json_object(path, "archive record")
    files = record.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(name, str)
        and isinstance(info, dict)
        and isinstance(info.get("bytes"), int)
        and isinstance(info.get("sha256"), str)
        for name, info in files.items()
    ):
        raise ArchiveError(
            f"{path}: files: must map each file name to {{bytes, sha256}}, got {excerpt(files)}"
        )
    for key in ("archived_at", "source", "content_sha256"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ArchiveError(f"{path}: {key}: must be a string, got {excerpt(record[key])}")
    return record


def entry_from_run_dir(run_dir: Path | str) -> dict[str, Any]:
    """An index-style entry for a run directory that is not archived (for ``check``)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise ArchiveError(
            f"{summary_path}: not found; aggregate the run first ('hpcbench aggregate RUN_DIR')"
        )
    summary = read_json_object(summary_path, "summary")
    return entry_from_folder(
        run_dir,
        run_id=run_id_of(run_dir, summary),
        archived_at=None,
        source=str(run_dir),
        file_names=[p.name for p in _selected_files(run_dir)],
    )


def _content_digest(files: Mapping[str, Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def add_run(archive_dir: Path | str, run_dir: Path | str, *, replace: bool = False) -> str:
    """Archive one run directory into ``archive_dir`` (created when missing); return its run id.

    Atomic (the run appears whole or not at all), idempotent (adding the same run again does
    nothing) and safe for many concurrent writers, also on a shared filesystem. A run whose
    summary says ``complete: false`` is archived and stays marked incomplete. A run archived
    before with other files (re-aggregated) is refused unless ``replace``: then this version
    takes the archived one's place.
    """
    return Archive(archive_dir).add(run_dir, replace=replace).run_id


def add_runs(archive_dir: Path | str, run_dirs: Iterable[Path | str]) -> dict[Path, str]:
    """Archive several runs; every one is tried, then one ArchiveError lists those that failed.

    Returns the run id of each run directory (as given) that was archived.
    """
    archive = Archive(archive_dir)
    ids: dict[Path, str] = {}
    failures: list[str] = []
    for run_dir in run_dirs:
        try:
            ids[Path(run_dir)] = archive.add(run_dir).run_id
        except (ArchiveError, OSError) as exc:
            failures.append(str(exc))
    if failures:
        raise ArchiveError(f"{plural(len(failures), 'run')} not archived: " + "; ".join(failures))
    return ids
