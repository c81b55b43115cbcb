"""The run directory: created owner-only before any rank starts, read back by every rank.

Layout: ``run.json`` (run id, creation time, host, argv, hpcbench version), ``plan.json``,
``spec.json``, ``topology.json`` (when known), ``logs/`` (per-rank stdout/stderr and status),
``rank-NNNNN.h5`` files, later ``result.h5`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbench import __version__
from hpcbench.errors import ConfigError, UsageError
from hpcbench.jsonfile import read_json, write_atomic, write_json_atomic
from hpcbench.plan.model import Plan
from hpcbench.runfiles import (
    CLAIM_FILE,
    LOGS_DIR,
    PLAN_FILE,
    RUN_FILE,
    SITE_COPY,
    SPEC_FILE,
    TOPOLOGY_FILE,
)
from hpcbench.runtime.identity import hostname
from hpcbench.spec import RunSpec
from hpcbench.topology.model import Topology

DEFAULT_PARENT = Path("hpcbench-runs")
# Space a run needs at least: rank files grow by ~30 bytes a batch, logs stay small.
_MIN_FREE_BYTES_PER_RANK = 8 << 20
# Files a rank creates: its rank file (and the hidden name it is built under), stdout, stderr
# and status logs, and barrier arrival files.
_INODES_PER_RANK = 8


@dataclass(frozen=True, slots=True)
class RunInfo:
    """``run.json``: facts about a run that every rank and every report reads."""

    run_id: str
    created: str
    host: str
    argv: tuple[str, ...]
    version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "created": self.created,
            "host": self.host,
            "argv": list(self.argv),
            "hpcbench_version": self.version,
        }
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = RUN_FILE) -> RunInfo:
        known = {"run_id", "created", "host", "argv", "hpcbench_version"}
        try:
            return cls(
                run_id=str(data["run_id"]),
                created=str(data.get("created", "")),
                host=str(data.get("host", "")),
                argv=tuple(str(a) for a in data.get("argv", ())),
                version=str(data.get("hpcbench_version", "")),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from exc


def new_run_id(host: str | None = None, now: float | None = None) -> str:
    """A unique, sortable run id: ``YYYYmmdd-HHMMSS-<host>-<6 hex>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{host or hostname()}-{secrets.token_hex(3)}"


def default_out_dir(run_id: str, parent: Path = DEFAULT_PARENT) -> Path:
    """``./hpcbench-runs/<run id>``.

    >>> default_out_dir("20261128-120000-n1-abcdef").as_posix()
    'hpcbench-runs/20261128-120000-n1-abcdef'
    """
    return parent / run_id


def site_record(site_name: str, site_config: Path | str, node_type: str) -> dict[str, str]:
    """``run.json``'s site keys for a run planned from a site config.

    The site's identity is its ``name:`` (what ``check`` and the archive match on); the file
    it came from is kept beside it (a copy of the file is in the run directory).

    >>> site_record("mycluster", "/etc/x/mycluster-v2.yaml", "gpu")["site"]
    'mycluster'
    """
    return {"site": site_name, "site_config": str(site_config), "node_type": node_type}


def check_writable(parent: Path, needed_bytes: int, needed_inodes: int = 0) -> None:
    """Fail early (UsageError) when ``parent`` cannot take a run directory.

    Space and inodes are both checked: HPC scratch quotas often cap the number of files, and a
    run creates a few per rank (rank file, logs, status).
    """
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {probe} is not writable; choose another folder with --out")
    stats = os.statvfs(probe)
    free = stats.f_bavail * stats.f_frsize
    if free < needed_bytes:
        raise UsageError(
            f"--out: {probe} has {free >> 20} MiB free, a run needs at least "
            f"{needed_bytes >> 20} MiB; free space or choose another folder with --out"
        )
    # f_files is 0 where a filesystem has no inode limit (btrfs, some network filesystems).
    inodes_free = getattr(stats, "f_favail", 0)
    if getattr(stats, "f_files", 0) > 0 and inodes_free < needed_inodes:
        raise UsageError(
            f"--out: {probe} has {inodes_free} free inodes (files), a run needs at least "
            f"{needed_inodes}; remove files (check your quota) or choose another folder with --out"
        )


def create_run_dir(
    out: Path | None,
    *,
    plan: Plan,
    spec: RunSpec,
    argv: Sequence[str],
    topology: Topology | None = None,
    run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
    site_config: Path | None = None,
) -> tuple[Path, RunInfo]:
    """Create the run directory (0700) with run.json, plan.json, spec.json, topology.json, logs/.

    ``out`` None means a new folder under ``./hpcbench-runs/``. An existing non-empty folder,
    an unwritable parent or a full disk is a UsageError before any rank starts. The folder is
    claimed exclusively (:data:`CLAIM_FILE`, created with ``O_EXCL``) before anything else is
    written, so of two runs given the same ``--out`` exactly one proceeds. ``site_config``,
    the site config file the run was planned from, is copied in as :data:`SITE_COPY` (0600):
    the run's record of the config it used, the only one the archive keeps.
    """
    run_id = run_id or new_run_id()
    run_dir = Path(out) if out is not None else default_out_dir(run_id)
    try:
        _claim(run_dir, plan.world_size)
    except OSError as exc:
        raise UsageError(
            f"--out: cannot create the run directory {run_dir} ({exc.strerror or exc})"
        ) from exc
    try:
        run_dir.chmod(0o700)  # the umask may have widened or narrowed mkdir's mode
        (run_dir / LOGS_DIR).mkdir(mode=0o700, exist_ok=True)
        if site_config is not None:
            _copy_private(site_config, run_dir / SITE_COPY)
        info = RunInfo(
            run_id=run_id,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            host=hostname(),
            argv=tuple(argv),
            extra=dict(extra or {}),
        )
        write_json_atomic(run_dir / RUN_FILE, info.to_json())
        write_json_atomic(run_dir / PLAN_FILE, plan.to_json())
        write_json_atomic(run_dir / SPEC_FILE, spec.to_json())
        if topology is not None:
            write_json_atomic(run_dir / TOPOLOGY_FILE, topology.to_json())
    except OSError as exc:
        raise UsageError(f"--out: cannot write the run directory {run_dir} ({exc})") from exc
    return run_dir, info


def _claim(run_dir: Path, world_size: int) -> None:
    """Make ``run_dir`` ours: create it (or take an empty one) and the claim file exclusively.

    Checking emptiness and then creating files leaves a window in which two runs both see an
    empty folder; ``O_EXCL`` on one file name closes it (also on NFS v3+, where the server
    performs the exclusive create).
    """
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"--out: {run_dir} exists and is not an empty folder; choose a new one")
    check_writable(
        run_dir.parent,
        _MIN_FREE_BYTES_PER_RANK * (world_size + 1),
        _INODES_PER_RANK * (world_size + 1),
    )
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        run_dir.mkdir(mode=0o700)
    try:
        fd = os.open(run_dir / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(
            f"--out: {run_dir} was just claimed by another run; choose a new folder"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{hostname()} {os.getpid()}\n")
    others = [p.name for p in run_dir.iterdir() if p.name != CLAIM_FILE]
    if others:
        # Another writer put files there between the emptiness check and the claim.
        (run_dir / CLAIM_FILE).unlink(missing_ok=True)
        raise UsageError(f"--out: {run_dir} exists and is not an empty folder; choose a new one")


def _copy_private(src: Path, dst: Path) -> None:
    """Copy ``src``'s bytes to ``dst`` (0600, whatever the umask), through a temporary name."""
    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        raise UsageError(f"--site: cannot read {src} ({exc.strerror or exc})") from exc
    write_atomic(dst, data)


def read_run_info(run_dir: Path) -> RunInfo:
    """Read ``run.json`` (ConfigError naming the file when missing or broken)."""
    path = Path(run_dir) / RUN_FILE
    data = read_json(path, "run file", hint=f" (is {run_dir} a run directory?)")
    return RunInfo.from_json(data, where=str(path))
