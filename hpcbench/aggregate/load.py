"""Finding and reading a run's rank files, and the run's metadata, for aggregation.

A run directory holds ``rank-NNNNN.h5`` per finished rank (``rank-NNNNN.h5.part`` while a rank
runs or after it died), and usually ``run.json``, ``plan.json`` and ``spec.json``. A merged
``result.h5`` holds the same rank groups under ``/ranks``, so reports and plots also work where
only the merged file was kept (an archive).
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from hpcbench.errors import MetricsError
from hpcbench.jsonfile import read_json
from hpcbench.metrics import RankFile, read_rank_file, read_rank_group
from hpcbench.runfiles import RunFiles, rank_file_name
from hpcbench.text import plural

# What a rank file's name looks like; only ``rank_file_name(rank)`` (+ ``.part``) is one.
_RANK_LIKE = re.compile(r"rank-(.*)\.h5(\.part)?", re.DOTALL)
_RANK_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class LoadedRun:
    """The ranks that can be aggregated, and what is missing or unfinished."""

    run_dir: Path
    world_size: int
    ranks: tuple[RankFile, ...]
    # (rank, why it is left out), e.g. (3, "rank-00003.h5.part left: the rank did not finish")
    excluded: tuple[tuple[int, str], ...]
    run_json: dict[str, Any] | None
    plan: dict[str, Any] | None
    spec_json: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return not self.excluded


def load_run(run_dir: Path, *, allow_partial: bool = False) -> LoadedRun:
    """Read every rank file of ``run_dir``.

    A missing rank file, a ``.part`` left by a rank that did not finish, or fewer files than
    the world size raises :class:`MetricsError` naming the file, unless ``allow_partial``: then
    the finished ranks are returned and the others listed in ``excluded``. A truncated or
    corrupt finished file always raises, naming it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetricsError(f"{run_dir}: run directory not found")
    files = RunFiles(run_dir)
    run_json = _read_json(files.run_info)
    plan = _read_json(files.plan)
    spec_json = _read_json(files.spec)

    finished, unfinished = find_rank_files(run_dir)

    # Read the finished files first: their attributes give the world size when there is no
    # plan.json, and a corrupt file is reported even when others are missing.
    loaded = {rank: read_rank_file(path) for rank, path in sorted(finished.items())}
    world_size = _world_size(run_dir, plan, loaded, unfinished)
    excluded: list[tuple[int, str]] = []
    for rank in range(world_size):
        if rank in loaded:
            continue
        name = rank_file_name(rank)
        if rank in unfinished:
            excluded.append((rank, f"{name}.part left: the rank did not finish"))
        else:
            excluded.append((rank, f"{name} missing"))
    for rank, rank_file in loaded.items():
        if rank >= world_size:
            raise MetricsError(
                f"{rank_file.path}: rank {rank} is outside the world size {world_size}"
            )
        _check_rank(rank_file, rank, world_size)
    _check_same_run(run_dir, loaded, run_json)
    shown = "; ".join(why for _, why in excluded[:4])
    more = f" (and {len(excluded) - 4} more)" if len(excluded) > 4 else ""
    if excluded and not loaded:
        # E.g. a cancelled job: every rank left only its .part file. --allow-partial keeps the
        # ranks that finished, so it cannot help here and must not be suggested.
        raise MetricsError(
            f"{run_dir}: none of the {plural(world_size, 'rank')} finished ({shown}{more}); "
            "there is nothing to aggregate, even with --allow-partial"
        )
    if excluded and not allow_partial:
        raise MetricsError(
            f"{run_dir}: {len(excluded)} of {world_size} rank files not finished: {shown}{more}; "
            "pass --allow-partial to aggregate the finished ranks"
        )
    ranks = list(loaded.values())
    if not ranks:
        raise MetricsError(f"{run_dir}: no finished rank file (rank-NNNNN.h5) to aggregate")
    return LoadedRun(
        run_dir=run_dir,
        world_size=world_size,
        ranks=tuple(ranks),
        excluded=tuple(excluded),
        run_json=run_json,
        plan=plan,
        spec_json=spec_json,
    )


def find_rank_files(run_dir: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """The finished (``.h5``) and unfinished (``.h5.part``) rank files of ``run_dir`` by rank.

    Exactly one name per rank: a file named like a rank file but not exactly
    ``rank_file_name(rank)`` (``rank-1.h5``, other digits), anything but a regular file, or a
    rank with both a finished and an unfinished file (two launches in one folder) is a
    MetricsError naming it.
    """
    finished: dict[int, Path] = {}
    unfinished: dict[int, Path] = {}
    for entry in sorted(run_dir.iterdir()):
        match = _RANK_LIKE.fullmatch(entry.name)
        if not match:
            continue
        digits, part = match.group(1), match.group(2)
        rank = int(digits) if _RANK_NUMBER.fullmatch(digits) else -1
        if rank < 0 or entry.name != rank_file_name(rank) + (part or ""):
            raise MetricsError(
                f"{entry}: named like a rank file but is not one (rank files are named "
                "rank-00001.h5); move it out of the run directory"
            )
        if not stat.S_ISREG(entry.lstat().st_mode):
            raise MetricsError(f"{entry}: not a regular file (a rank file is a plain HDF5 file)")
        (unfinished if part else finished)[rank] = entry
    both = sorted(finished.keys() & unfinished.keys())
    if both:
        rank = both[0]
        raise MetricsError(
            f"{run_dir}: rank {rank} has both {finished[rank].name} and {unfinished[rank].name}: "
            "files of two launches of this run directory; keep one launch's files"
        )
    return finished, unfinished


def _check_same_run(
    run_dir: Path, loaded: dict[int, RankFile], run_json: dict[str, Any] | None
) -> None:
    """Every rank file comes from this run (run.json's run id) and from one launch."""
    expected = (run_json or {}).get("run_id")
    if isinstance(expected, str):
        strangers = [r for r in loaded.values() if r.attrs.get("run_id") != expected]
        if strangers:
            shown = ", ".join(f"{r.path.name} ({r.attrs.get('run_id')!r})" for r in strangers[:4])
            raise MetricsError(
                f"{run_dir}: rank files of another run (run.json says {expected!r}): {shown}"
            )
    for key, label in (("run_id", "runs"), ("launch_id", "launches")):
        values: dict[Any, list[str]] = {}
        for r in loaded.values():
            values.setdefault(r.attrs.get(key), []).append(r.path.name)
        if len(values) > 1:
            shown = "; ".join(
                f"{key} {value!r}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                for value, names in values.items()
            )
            raise MetricsError(f"{run_dir}: rank files from different {label} ({shown})")


def _world_size(
    run_dir: Path,
    plan: dict[str, Any] | None,
    loaded: dict[int, RankFile],
    unfinished: dict[int, Path],
) -> int:
    if plan is not None and isinstance(plan.get("ranks"), list):
        return len(plan["ranks"])
    sizes = {int(r.attrs.get("world_size", -1)) for r in loaded.values()}
    if len(sizes) > 1 or -1 in sizes:
        shown = ", ".join(f"{r.path.name}: {r.attrs.get('world_size')}" for r in loaded.values())
        raise MetricsError(f"{run_dir}: rank files disagree on world_size ({shown})")
    if sizes:
        return sizes.pop()
    if unfinished:
        return max(unfinished) + 1
    raise MetricsError(f"{run_dir}: no rank files (rank-NNNNN.h5) and no plan.json")


def _check_rank(rank_file: RankFile, rank: int, world_size: int) -> None:
    where = rank_file.path
    if rank_file.rank != rank:
        raise MetricsError(f"{where}: attribute rank={rank_file.rank} does not match the name")
    if int(rank_file.attrs.get("world_size", world_size)) != world_size:
        raise MetricsError(
            f"{where}: world_size={rank_file.attrs.get('world_size')} but the run has {world_size}"
        )
    if not rank_file.complete:
        raise MetricsError(f"{where}: attribute complete is false (the rank did not finish)")
    if rank_file.t_begin_ns is None or rank_file.t_finish_ns is None:
        raise MetricsError(f"{where}: timed phase has no t_begin_ns/t_finish_ns attributes")
    if rank_file.t_finish_ns < rank_file.t_begin_ns and rank_file.clock_stepped:
        raise MetricsError(
            f"{where}: timed.clock_step_ns: the wall clock stepped "
            f"{(rank_file.clock_step_ns or 0) / 1e9:+.3f} s during the timed phase; "
            "its times cannot be used (run again)"
        )
    if rank_file.t_finish_ns < rank_file.t_begin_ns:
        raise MetricsError(
            f"{where}: timed phase ends ({rank_file.t_finish_ns}) before it begins "
            f"({rank_file.t_begin_ns})"
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data = read_json(path, path.name, MetricsError)
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------ result.h5
def read_result_ranks(path: Path) -> tuple[RankFile, ...]:
    """The rank groups stored in a merged ``result.h5``, read like rank files."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "ranks" not in f:
                raise MetricsError(f"{path}: no /ranks group (not an hpcbench result file)")
            return tuple(
                read_rank_group(f["ranks"][name], Path(f"{path}:/ranks/{name}"))
                for name in sorted(f["ranks"])
            )
    except MetricsError:
        raise
    except FileNotFoundError as exc:
        raise MetricsError(f"{path}: result file not found") from exc
    except (OSError, KeyError, ValueError) as exc:
        raise MetricsError(f"{path}: unreadable or truncated result file ({exc})") from exc
