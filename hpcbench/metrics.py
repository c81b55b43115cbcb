"""Per-rank metrics files (HDF5): writer used by ranks, reader used by aggregation and reports.

Format (``schema_version`` 2, documented in docs/metrics-format.md):

- root attributes: ``schema_version``, ``rank``, ``world_size``, ``run_id``, ``launch_id``,
  ``host`` and more
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
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcbench.errors import MetricsError, excerpt
from hpcbench.runfiles import RunFiles

SCHEMA_VERSION = 2
# Version 1 files (no launch_id) are still read: every other field means the same.
READABLE_SCHEMA_VERSIONS = (1, 2)
PHASES = ("warmup", "timed")
BATCH_FIELDS: dict[str, Any] = {
    "t_start_ns": np.int64,
    "t_end_ns": np.int64,
    "images": np.int32,
    "device": np.int16,
    "data_wait_ns": np.int64,
}
_CHUNK_ROWS = 4096


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
        *,
        launch_id: str = "default",
    ) -> None:
        files = RunFiles(run_dir)
        self.final_path = files.rank_file(rank)
        self.part_path = files.rank_part(rank)
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
                    "run_id": run_id, "launch_id": launch_id, "host": host,
                    "complete": False}  # fmt: skip
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

    def set_phase_bounds(
        self, t_begin_ns: int, t_finish_ns: int, *, clock_step_ns: int | None = None
    ) -> None:
        """Set the timed phase's start (start-barrier release) and end.

        ``clock_step_ns``: how far CLOCK_REALTIME moved beyond CLOCK_MONOTONIC over the phase
        (0 on a well-behaved node; a step makes the run's wall-clock figures meaningless).
        """
        self._file["timed"].attrs["t_begin_ns"] = np.int64(t_begin_ns)
        self._file["timed"].attrs["t_finish_ns"] = np.int64(t_finish_ns)
        if clock_step_ns is not None:
            self._file["timed"].attrs["clock_step_ns"] = np.int64(clock_step_ns)

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
    # How far CLOCK_REALTIME moved beyond CLOCK_MONOTONIC over the timed phase (None: files
    # written before hpcbench recorded it).
    clock_step_ns: int | None = None

    @property
    def rank(self) -> int:
        return int(self.attrs["rank"])

    @property
    def clock_stepped(self) -> bool:
        """Whether the wall clock stepped during the timed phase (beyond reading noise)."""
        step, begin, finish = self.clock_step_ns, self.t_begin_ns, self.t_finish_ns
        if step is None or begin is None or finish is None:
            return False
        return abs(step) > clock_step_limit_ns(finish - begin - step)

    @property
    def launch_id(self) -> str | None:
        """The launch (attempt) that wrote the file; None in schema version 1 files."""
        value = self.attrs.get("launch_id")
        return None if value is None else str(value)

    def json_attr(self, key: str) -> Any:
        """Decode a JSON-valued root attribute (None when absent)."""
        value = self.attrs.get(key)
        if value is None:
            return None
        return json.loads(value)


# A wall-clock step smaller than this plus NTP's largest slew (500 ppm, with margin) over the
# phase is reading noise; a larger one moved every timestamp after it.
CLOCK_STEP_LIMIT_NS = 100_000_000
CLOCK_SLEW_SHARE = 0.001


def clock_step_limit_ns(phase_ns: int) -> int:
    """The largest ``clock_step_ns`` that is not a step, for a phase of ``phase_ns`` (monotonic).

    >>> clock_step_limit_ns(600 * 10**9)
    700000000
    """
    return CLOCK_STEP_LIMIT_NS + int(CLOCK_SLEW_SHARE * max(phase_ns, 0))


def read_rank_file(path: Path) -> RankFile:
    """Read a rank file; MetricsError (naming the file) when it is corrupt or of another schema.

    Only a regular file is opened (a FIFO named like a rank file would block the open).
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise MetricsError(f"{path}: not a regular file (a rank file is a plain HDF5 file)")
        with h5py.File(path, "r") as f:
            return read_rank_group(f, path)
    except MetricsError:
        raise
    except FileNotFoundError as exc:
        raise MetricsError(f"{path}: rank file not found") from exc
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise MetricsError(f"{path}: unreadable or truncated rank file ({_one_line(exc)})") from exc


def read_rank_group(group: h5py.Group, where: Path) -> RankFile:
    """Read and validate one rank from an open group laid out as a rank file's root.

    That is a rank file itself, or a rank copied into a merged ``result.h5`` (``/ranks/...``);
    ``where`` names it in errors. Every attribute and column the readers rely on is checked
    here, once (types, ranges, ordering): a value that would give an absurd figure is a
    MetricsError naming the file and the field. h5py's KeyError/OSError/ValueError are left to
    the caller, which knows which file it opened.
    """
    attrs = {k: _plain(v) for k, v in group.attrs.items()}
    check = _Checker(where)
    version = attrs.get("schema_version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or (version not in READABLE_SCHEMA_VERSIONS)
    ):
        raise MetricsError(
            f"{where}: schema_version {excerpt(version)} is not supported "
            f"(expected one of {', '.join(map(str, READABLE_SCHEMA_VERSIONS))})"
        )
    _check_attrs(attrs, version, check)
    phases = {p: _read_phase(group, p, check, attrs) for p in PHASES}
    timed_attrs = {k: _plain(v) for k, v in group["timed"].attrs.items()}
    t_begin = timed_attrs.get("t_begin_ns")
    t_finish = timed_attrs.get("t_finish_ns")
    for name, value in (("t_begin_ns", t_begin), ("t_finish_ns", t_finish)):
        if value is not None:
            check.integer(f"timed.{name}", value, MIN_TIME_NS, MAX_TIME_NS)
    clock_step = timed_attrs.get("clock_step_ns")
    if clock_step is not None:
        check.integer("timed.clock_step_ns", clock_step, -MAX_TIME_NS, MAX_TIME_NS)
    barriers = _read_barriers(group, check)
    result = RankFile(
        path=where,
        attrs=attrs,
        timed=phases["timed"],
        warmup=phases["warmup"],
        t_begin_ns=None if t_begin is None else int(t_begin),
        t_finish_ns=None if t_finish is None else int(t_finish),
        barriers=barriers,
        complete=bool(attrs.get("complete", False)),
        clock_step_ns=clock_step,
        telemetry=_read_telemetry(group, where),
        telemetry_attrs=(
            {k: _plain(v) for k, v in group["telemetry"].attrs.items()}
            if "telemetry" in group
            else {}
        ),
    )
    _check_timed_bounds(result, check)
    return result


def _read_telemetry(group: h5py.Group, where: Path) -> dict[str, np.ndarray] | None:
    """The telemetry columns, or None when the group is absent or holds no samples."""
    if "telemetry" not in group or "t_ns" not in group["telemetry"]:
        return None
    check = _Checker(where)
    datasets = {}
    for name, dataset in group["telemetry"].items():
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
            raise check.fail(f"telemetry.{name}", "not a one-dimensional dataset")
        _check_storage(dataset, f"telemetry.{name}", check)
        datasets[name] = dataset
    columns = {name: dataset[()] for name, dataset in datasets.items()}
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise MetricsError(
            f"{where}: datasets of group 'telemetry' have unequal lengths {sorted(lengths)}"
        )
    return columns


class _Checker:
    """Refusals of one file, in one format: ``FILE: FIELD: what is wrong``."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> MetricsError:
        return MetricsError(f"{self.where}: {field}: {problem}")

    def integer(self, field: str, value: Any, low: int, high: int) -> int:
        # bool is an int in Python and numpy; a stored True is not a count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"{excerpt(value)} is not an integer")
        if not low <= value <= high:
            raise self.fail(field, f"{value} is outside [{low}, {high}]")
        return value

    def text(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
            raise self.fail(field, f"{excerpt(value)} is not a non-empty string")
        return value

    def json(self, field: str, value: Any, kind: type | None) -> Any:
        if not isinstance(value, str) or len(value) > _MAX_JSON:
            raise self.fail(field, f"{excerpt(value)} is not a JSON string")
        try:
            data = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise self.fail(field, f"not valid JSON ({_one_line(exc)[:80]})") from None
        if data is not None and kind is not None and not isinstance(data, kind):
            raise self.fail(field, f"JSON {type(data).__name__} where {kind.__name__} is expected")
        return data

    def int_list(self, field: str, value: Any, high: int) -> None:
        if not isinstance(value, list):
            raise self.fail(field, f"{excerpt(value)} is not a list")
        for item in value:
            self.integer(field, item, 0, high)


# Earliest and latest timestamp a reader accepts (2000-01-01 and 2100-01-01, ns since the
# epoch): every difference of two accepted times fits in int64 with room to spare.
MIN_TIME_NS = 946_684_800 * 1_000_000_000
MAX_TIME_NS = 4_102_444_800 * 1_000_000_000
MAX_RANKS = 1 << 20
MAX_DEVICES = 4096
MAX_BATCH_SIZE = 1 << 24
_MAX_TEXT = 4096
_MAX_JSON = 16 << 20
_MAX_BARRIER_ROWS = 1 << 16
# Timed batches may start this long before the start-barrier release that t_begin_ns records
# (device threads read the clock independently); anything further out is a damaged file.
_BOUNDS_SLACK_NS = 1_000_000_000
# JSON attributes and the type of their value (None: any JSON value).
_JSON_ATTRS: dict[str, type | None] = {
    "plan_json": dict,
    "binding_json": dict,
    "config_json": dict,
    "versions_json": dict,
    "devices_json": list,
    "slurm_json": dict,
    "identity_json": dict,
    "threads_json": dict,
}
# Integer attributes and their valid range.
_INT_ATTRS: dict[str, tuple[int, int]] = {
    "local_rank": (0, MAX_RANKS - 1),
    "node": (0, MAX_RANKS - 1),
    "pid": (0, 1 << 31),
    "batch_size": (1, MAX_BATCH_SIZE),
    "num_devices": (1, MAX_DEVICES),
    "flops_per_image": (0, 1 << 62),
    "tail_batches": (0, 1 << 40),
    # --until-stable: where the rank's timed phase was moved to end (CLOCK_REALTIME).
    "deadline_ns": (MIN_TIME_NS, MAX_TIME_NS),
}
_TEXT_ATTRS = ("host", "launcher", "backend", "model", "precision")


def _check_attrs(attrs: dict[str, Any], version: int, check: _Checker) -> None:
    world_size = check.integer("world_size", attrs.get("world_size"), 1, MAX_RANKS)
    check.integer("rank", attrs.get("rank"), 0, world_size - 1)
    if version >= 2 or "run_id" in attrs:
        check.text("run_id", attrs.get("run_id"))
    if version >= 2 or "launch_id" in attrs:
        check.text("launch_id", attrs.get("launch_id"))
    complete = attrs.get("complete", False)
    if not isinstance(complete, bool):
        raise check.fail("complete", f"{excerpt(complete)} is not a boolean")
    for name, (low, high) in _INT_ATTRS.items():
        if name in attrs:
            check.integer(name, attrs[name], low, high)
    for name in _TEXT_ATTRS:
        if name in attrs:
            check.text(name, attrs[name])
    for name, kind in _JSON_ATTRS.items():
        if name in attrs:
            data = check.json(name, attrs[name], kind)
            if name == "plan_json" and data is not None:
                for key in ("cpus", "gpus", "mem_nodes"):
                    if key in data:
                        check.int_list(f"plan_json.{key}", data[key], 1 << 20)
                for key in ("rank", "node", "local_rank"):
                    if key in data:
                        check.integer(f"plan_json.{key}", data[key], 0, MAX_RANKS - 1)
            if name == "binding_json" and data is not None:
                if "cpus" in data:
                    check.int_list("binding_json.cpus", data["cpus"], 1 << 20)
                mismatches = data.get("mismatches", [])
                if not isinstance(mismatches, list) or not all(
                    isinstance(m, str) for m in mismatches
                ):
                    raise check.fail("binding_json.mismatches", "not a list of strings")
                visible = data.get("cuda_visible_devices")
                if visible is not None and not isinstance(visible, str):
                    raise check.fail("binding_json.cuda_visible_devices", "not a string")


def _read_phase(
    root: h5py.Group, phase: str, check: _Checker, attrs: Mapping[str, Any]
) -> PhaseData:
    group = root[phase]
    if not isinstance(group, h5py.Group):
        raise check.fail(phase, "not a group")
    lengths: dict[str, int] = {}
    datasets: dict[str, h5py.Dataset] = {}
    for name in BATCH_FIELDS:
        dataset = group[name]
        field = f"{phase}.{name}"
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
            raise check.fail(field, "not a one-dimensional dataset")
        if dataset.dtype.kind not in "iu":
            raise check.fail(field, f"dtype {dataset.dtype} is not an integer type")
        _check_storage(dataset, field, check)
        datasets[name] = dataset
        lengths[name] = int(dataset.shape[0])
    if len(set(lengths.values())) != 1:
        raise check.fail(phase, f"datasets have unequal lengths {sorted(set(lengths.values()))}")
    arrays = {
        name: np.asarray(datasets[name][()], dtype=dtype) for name, dtype in BATCH_FIELDS.items()
    }
    data = PhaseData(**arrays)
    if len(data) == 0:
        return data
    for name in ("t_start_ns", "t_end_ns"):
        _check_range(check, f"{phase}.{name}", arrays[name], MIN_TIME_NS, MAX_TIME_NS)
    # Read as int64 from whatever integer type was stored: ranges checked on the raw values.
    raw_images = datasets["images"][()]
    batch_size = attrs.get("batch_size")
    high = batch_size if isinstance(batch_size, int) and batch_size >= 1 else MAX_BATCH_SIZE
    _check_range(check, f"{phase}.images", raw_images, 1, high)
    num_devices = attrs.get("num_devices")
    top = num_devices - 1 if isinstance(num_devices, int) and num_devices >= 1 else MAX_DEVICES
    _check_range(check, f"{phase}.device", datasets["device"][()], 0, top)
    _check_range(check, f"{phase}.data_wait_ns", datasets["data_wait_ns"][()], 0, MAX_TIME_NS)
    backwards = data.t_end_ns < data.t_start_ns
    if bool(np.any(backwards)):
        raise check.fail(
            f"{phase}.t_end_ns", f"batch {int(np.argmax(backwards))} ends before it starts"
        )
    return data


def _check_storage(dataset: h5py.Dataset, field: str, check: _Checker) -> None:
    """Refuse a dataset whose declared size is not backed by data in the file.

    An HDF5 file can declare 2^28 rows in a few hundred bytes (chunks never written read back
    as fill values): reading it would allocate gigabytes. The writer stores chunks
    uncompressed, so its files always hold at least the declared bytes.
    """
    declared = int(dataset.shape[0]) * dataset.dtype.itemsize
    if declared == 0:
        return
    stored = int(dataset.id.get_storage_size())
    filters = dataset.id.get_create_plist().get_nfilters()
    # A compressing writer (another tool) may store less; 1000:1 is beyond any real column.
    needed = declared // 1000 if filters else declared
    if stored < needed:
        raise check.fail(
            field, f"declares {dataset.shape[0]} rows but the file holds {stored} bytes of them"
        )


def _check_range(check: _Checker, field: str, values: np.ndarray, low: int, high: int) -> None:
    values = np.asarray(values)
    if values.shape[0] == 0:
        return
    small, large = int(values.min()), int(values.max())
    if small < low or large > high:
        bad = small if small < low else large
        index = int(np.argmin(values)) if small < low else int(np.argmax(values))
        raise check.fail(field, f"row {index} holds {bad}, outside [{low}, {high}]")


def _read_barriers(group: h5py.Group, check: _Checker) -> list[tuple[str, int, int]]:
    if "barriers" not in group:
        return []
    g = group["barriers"]
    columns = {}
    for name in ("name", "arrive_ns", "release_ns"):
        dataset = g[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
            raise check.fail(f"barriers.{name}", "not a one-dimensional dataset")
        if dataset.shape[0] > _MAX_BARRIER_ROWS:
            raise check.fail(f"barriers.{name}", f"{dataset.shape[0]} rows (a run has a few)")
        if name != "name" and dataset.dtype.kind not in "iu":
            raise check.fail(f"barriers.{name}", f"dtype {dataset.dtype} is not an integer type")
        columns[name] = dataset[()]
    if len({len(c) for c in columns.values()}) != 1:
        raise check.fail("barriers", "datasets have unequal lengths")
    for name in ("arrive_ns", "release_ns"):
        _check_range(check, f"barriers.{name}", columns[name], MIN_TIME_NS, MAX_TIME_NS)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in columns["name"]]
    barriers = [
        (n, int(a), int(r)) for n, a, r in zip(names, columns["arrive_ns"], columns["release_ns"])
    ]
    for name, arrive, release in barriers:
        if release < arrive:
            raise check.fail(
                "barriers.release_ns", f"barrier {name!r} released before it was reached"
            )
    return barriers


def _check_timed_bounds(rank_file: RankFile, check: _Checker) -> None:
    """Timed batches lie in [t_begin_ns, t_finish_ns], and t_finish_ns is the last batch end."""
    begin, finish, timed = rank_file.t_begin_ns, rank_file.t_finish_ns, rank_file.timed
    if begin is None or finish is None or len(timed) == 0 or rank_file.clock_stepped:
        # A recorded step of the wall clock explains batches outside the bounds; the run is
        # then refused or judged invalid on that ground, which says more.
        return
    first_start = int(timed.t_start_ns.min())
    last_end = int(timed.t_end_ns.max())
    if first_start < begin - _BOUNDS_SLACK_NS:
        raise check.fail(
            "timed.t_start_ns",
            f"a batch starts {(begin - first_start) / 1e9:.3f} s before t_begin_ns",
        )
    if last_end > finish:
        raise check.fail(
            "timed.t_end_ns", f"a batch ends {(last_end - finish) / 1e9:.3f} s after t_finish_ns"
        )
    if finish > last_end + _BOUNDS_SLACK_NS:
        raise check.fail(
            "timed.t_finish_ns",
            f"{(finish - last_end) / 1e9:.3f} s after the last batch ends (it is that batch's end)",
        )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
