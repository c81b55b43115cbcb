"""Per-rank metrics files (HDF5): writer used by ranks, reader used by aggregation and reports.

Format (``schema_version`` 1, documented in docs/metrics-format.md):

- root attributes: ``schema_version``, ``rank``, ``world_size``, ``run_id``, ``host`` and more
  (``local_rank``, ``node``, ``backend``, ``model``, ``batch_size``, ``num_devices``,
  ``precision``, ``complete``) plus JSON strings ``plan_json``, ``binding_json``,
  ``config_json``, ``versions_json``, ``slurm_json``;
- groups ``timed`` and ``warmup``: equal-length datasets ``t_start_ns``, ``t_end_ns`` (int64 ns
  since the epoch, CLOCK_REALTIME), ``images`` (int32), ``device`` (int16, local device index),
  ``data_wait_ns`` (int64); ``timed`` has attributes ``t_begin_ns`` (start-barrier release)
  and ``t_finish_ns`` (end of this rank's timed phase);
- group ``barriers``: ``name`` (str), ``arrive_ns``, ``release_ns`` (int64), one row per barrier;
- group ``telemetry`` (optional): sampled device telemetry, see the format doc.

The file is written as ``rank-NNNNN.h5.part`` and renamed to ``rank-NNNNN.h5`` when the rank
finished cleanly; it is flushed often enough that a killed rank leaves a readable ``.part``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcbench.errors import MetricsError

SCHEMA_VERSION = 1
PHASES = ("warmup", "timed")
BATCH_FIELDS: dict[str, Any] = {
    "t_start_ns": np.int64,
    "t_end_ns": np.int64,
    "images": np.int32,
    "device": np.int16,
    "data_wait_ns": np.int64,
}
_CHUNK_ROWS = 4096


def rank_file_name(rank: int) -> str:
    """``rank-00003.h5`` for rank 3.

    >>> rank_file_name(3)
    'rank-00003.h5'
    """
    return f"rank-{rank:05d}.h5"


class RankMetricsWriter:
    """Collects one rank's batches and events and writes them to HDF5.

    ``add_batch`` and ``barrier`` are thread-safe and cheap (they append to Python lists);
    ``flush`` (called by the rank's main thread, or by ``maybe_flush`` at most every
    ``flush_interval_s``) moves the buffered rows into the file and flushes HDF5 so that a
    killed process leaves a readable file.
    """

    def __init__(
        self,
        run_dir: Path,
        rank: int,
        world_size: int,
        run_id: str,
        host: str,
        attrs: Mapping[str, Any] | None = None,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.final_path = Path(run_dir) / rank_file_name(rank)
        self.part_path = self.final_path.with_name(self.final_path.name + ".part")
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._buffers: dict[str, list[tuple[int, int, int, int, int]]] = {p: [] for p in PHASES}
        self._barriers: list[tuple[str, int, int]] = []
        self._last_flush = time.monotonic()
        self._closed = False
        # Built under a hidden name and renamed once its header is written, so that every
        # .part file says whose it is, even when the rank is stopped while creating it.
        init_path = self.part_path.with_name(f".{self.part_path.name}.{os.getpid()}.init")
        try:
            self._file = h5py.File(init_path, "w")
        except OSError as exc:
            raise MetricsError(f"{self.part_path}: cannot create metrics file ({exc})") from exc
        try:
            root = {"schema_version": SCHEMA_VERSION, "rank": rank, "world_size": world_size,
                    "run_id": run_id, "host": host, "complete": False}  # fmt: skip
            self._create_layout(root, attrs or {})
            os.replace(init_path, self.part_path)
        except BaseException as exc:
            # Also on SIGTERM (RankTerminated) or Ctrl-C: the half-made file holds no data.
            with contextlib.suppress(Exception):
                self._file.close()
            with contextlib.suppress(OSError):
                init_path.unlink()
            if isinstance(exc, (OSError, ValueError, RuntimeError)):
                raise MetricsError(
                    f"{self.part_path}: cannot create metrics file ({_one_line(exc)})"
                ) from exc
            raise

    def _create_layout(self, root: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        f = self._file
        for key, value in root.items():
            f.attrs[key] = value
        for key, value in attrs.items():
            self.set_attr(key, value)
        for phase in PHASES:
            group = f.create_group(phase)
            for name, dtype in BATCH_FIELDS.items():
                group.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_CHUNK_ROWS,)
                )
        barriers = f.create_group("barriers")
        barriers.create_dataset(
            "name", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(64,)
        )
        for name in ("arrive_ns", "release_ns"):
            barriers.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(64,)
            )
        f.flush()

    # ------------------------------------------------------------------ recording (thread-safe)
    def add_batch(
        self,
        phase: str,
        t_start_ns: int,
        t_end_ns: int,
        images: int,
        device: int,
        data_wait_ns: int = 0,
    ) -> None:
        """Record one batch of ``phase`` ("warmup" or "timed")."""
        with self._lock:
            self._buffers[phase].append((t_start_ns, t_end_ns, images, device, data_wait_ns))

    def barrier(self, name: str, arrive_ns: int, release_ns: int) -> None:
        """Record that this rank arrived at barrier ``name`` and was released."""
        with self._lock:
            self._barriers.append((name, arrive_ns, release_ns))

    # ------------------------------------------------------------------ main thread only
    @property
    def file(self) -> h5py.File:
        """The open HDF5 file, for groups other modules own (e.g. ``telemetry``)."""
        return self._file

    def set_attr(self, key: str, value: Any) -> None:
        """Set a root attribute; dicts and lists are stored as JSON strings under ``key``."""
        if isinstance(value, (dict, list, tuple)) and not _is_numeric_sequence(value):
            value = json.dumps(value, sort_keys=True, default=str)
        elif value is None:
            value = "null"
        self._file.attrs[key] = value

    def set_phase_bounds(self, t_begin_ns: int, t_finish_ns: int) -> None:
        """Set the timed phase's start (start-barrier release) and end."""
        self._file["timed"].attrs["t_begin_ns"] = np.int64(t_begin_ns)
        self._file["timed"].attrs["t_finish_ns"] = np.int64(t_finish_ns)

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows and flush the file; raises MetricsError when the write fails."""
        with self._lock:
            buffers = {p: rows for p, rows in self._buffers.items() if rows}
            self._buffers = {p: [] for p in PHASES}
            barriers, self._barriers = self._barriers, []
        try:
            for phase, rows in buffers.items():
                group = self._file[phase]
                columns = list(zip(*rows))
                for (name, dtype), column in zip(BATCH_FIELDS.items(), columns):
                    _append(group[name], np.asarray(column, dtype=dtype))
            if barriers:
                group = self._file["barriers"]
                _append(group["name"], np.asarray([b[0] for b in barriers], dtype=object))
                _append(group["arrive_ns"], np.asarray([b[1] for b in barriers], dtype=np.int64))
                _append(group["release_ns"], np.asarray([b[2] for b in barriers], dtype=np.int64))
            self._file.flush()
        except (OSError, ValueError, RuntimeError) as exc:
            # h5py reports a failed write (ENOSPC, EIO) as RuntimeError.
            raise MetricsError(
                f"{self.part_path}: writing metrics failed ({_one_line(exc)})"
            ) from exc
        self._last_flush = time.monotonic()

    def close(self, complete: bool = True) -> Path:
        """Flush and close. When ``complete``, rename ``.part`` to the final name atomically.

        Returns the path the file now has.
        """
        if self._closed:
            return self.final_path if complete else self.part_path
        try:
            self.flush()
            try:
                self._file.attrs["complete"] = bool(complete)
                self._file.close()
            except (OSError, ValueError, RuntimeError) as exc:
                raise MetricsError(
                    f"{self.part_path}: writing metrics failed ({_one_line(exc)})"
                ) from exc
        except MetricsError:
            # Release the HDF5 handle now: left to the garbage collector, a file whose writes
            # failed (a full disk) can crash the interpreter at exit inside h5py's dealloc.
            with contextlib.suppress(Exception):
                self._file.close()
            raise
        finally:
            self._closed = True
        if complete:
            self.part_path.replace(self.final_path)
            return self.final_path
        return self.part_path


def _one_line(exc: BaseException) -> str:
    """HDF5 messages embed a ctime() with its newline; error messages are one line.

    >>> _one_line(RuntimeError("write failed: time = Sat Nov 28 2026\\n, errno = 28"))
    'write failed: time = Sat Nov 28 2026 , errno = 28'
    """
    return " ".join(str(exc).split())


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize((start + len(values),))
    dataset[start:] = values


def _is_numeric_sequence(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and len(value) > 0
    )


# ---------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class PhaseData:
    """One phase's batches as numpy arrays of equal length."""

    t_start_ns: np.ndarray
    t_end_ns: np.ndarray
    images: np.ndarray
    device: np.ndarray
    data_wait_ns: np.ndarray

    def __len__(self) -> int:
        return int(self.t_end_ns.shape[0])


@dataclass(frozen=True)
class RankFile:
    """A rank file read back: attributes, phases and barrier events."""

    path: Path
    attrs: dict[str, Any]
    timed: PhaseData
    warmup: PhaseData
    t_begin_ns: int | None
    t_finish_ns: int | None
    barriers: list[tuple[str, int, int]]
    complete: bool
    # The ``telemetry`` group's columns (None when it has none) and its attributes (``disabled``
    # says why there is none).
    telemetry: dict[str, np.ndarray] | None = None
    telemetry_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.attrs["rank"])

    def json_attr(self, key: str) -> Any:
        """Decode a JSON-valued root attribute (None when absent)."""
        value = self.attrs.get(key)
        if value is None:
            return None
        return json.loads(value)


def read_rank_file(path: Path) -> RankFile:
    """Read a rank file; MetricsError (naming the file) when it is corrupt or of another schema."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            return read_rank_group(f, path)
    except MetricsError:
        raise
    except FileNotFoundError as exc:
        raise MetricsError(f"{path}: rank file not found") from exc
    except (OSError, KeyError, ValueError) as exc:
        raise MetricsError(f"{path}: unreadable or truncated rank file ({exc})") from exc


def read_rank_group(group: h5py.Group, where: Path) -> RankFile:
    """Read one rank from an open group laid out as a rank file's root.

    That is a rank file itself, or a rank copied into a merged ``result.h5`` (``/ranks/...``);
    ``where`` names it in errors. h5py's KeyError/OSError/ValueError are left to the caller,
    which knows which file it opened.
    """
    attrs = {k: _plain(v) for k, v in group.attrs.items()}
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MetricsError(
            f"{where}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
        )
    phases = {p: _read_phase(group, p, where) for p in PHASES}
    timed_attrs = group["timed"].attrs
    t_begin = timed_attrs.get("t_begin_ns")
    t_finish = timed_attrs.get("t_finish_ns")
    barriers: list[tuple[str, int, int]] = []
    if "barriers" in group:
        g = group["barriers"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["name"][()]]
        barriers = [
            (n, int(a), int(r)) for n, a, r in zip(names, g["arrive_ns"][()], g["release_ns"][()])
        ]
    return RankFile(
        path=where,
        attrs=attrs,
        timed=phases["timed"],
        warmup=phases["warmup"],
        t_begin_ns=None if t_begin is None else int(t_begin),
        t_finish_ns=None if t_finish is None else int(t_finish),
        barriers=barriers,
        complete=bool(attrs.get("complete", False)),
        telemetry=_read_telemetry(group, where),
        telemetry_attrs=(
            {k: _plain(v) for k, v in group["telemetry"].attrs.items()}
            if "telemetry" in group
            else {}
        ),
    )


def _read_telemetry(group: h5py.Group, where: Path) -> dict[str, np.ndarray] | None:
    """The telemetry columns, or None when the group is absent or holds no samples."""
    if "telemetry" not in group or "t_ns" not in group["telemetry"]:
        return None
    columns = {name: group["telemetry"][name][()] for name in group["telemetry"]}
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise MetricsError(
            f"{where}: datasets of group 'telemetry' have unequal lengths {sorted(lengths)}"
        )
    return columns


def _read_phase(root: h5py.Group, phase: str, path: Path) -> PhaseData:
    group = root[phase]
    arrays = {
        name: np.asarray(group[name][()], dtype=dtype) for name, dtype in BATCH_FIELDS.items()
    }
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise MetricsError(f"{path}: datasets of group {phase!r} have unequal lengths {lengths}")
    return PhaseData(**arrays)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
