"""Writing ``result.h5`` (every rank in one file, plus the aggregate) and ``summary.json``.

``result.h5`` layout (``schema`` ``hpcbench.result``, ``schema_version`` 1):

- root attributes: ``schema``, ``schema_version``, ``run_id``, ``complete``, ``summary_json``
  (the whole summary as JSON text);
- ``/ranks/rank-NNNNN``: a copy of each aggregated rank file's root group (attributes,
  ``timed``, ``warmup``, ``barriers``, ``telemetry``), so the merged file stands alone when the
  rank files are gone (an archive keeps only it);
- ``/aggregate``: attributes ``window_start_ns``, ``window_end_ns``, ``common_window_img_s``
  (NaN when undefined), ``dlbs_trim``; one row per aggregated rank in datasets ``rank``,
  ``num_devices``, ``images``, ``own_img_s``, ``window_images``, ``dlbs_effective_img_s``
  (NaN when undefined), ``t_begin_ns``, ``t_finish_ns``.

The copy is done by HDF5 itself (``H5Ocopy``): raw chunks move without passing through numpy.
Both files are written under a temporary name and renamed, so a reader sees all or nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcbench.aggregate.summary import dumps
from hpcbench.errors import MetricsError
from hpcbench.metrics import RankFile
from hpcbench.runfiles import rank_file_name

RESULT_SCHEMA = "hpcbench.result"
RESULT_SCHEMA_VERSION = 1


def write_result(
    path: Path,
    ranks: Sequence[RankFile],
    summary: Mapping[str, Any],
    summary_text: str | None = None,
) -> None:
    """Write ``result.h5`` atomically from the rank files and their summary.

    ``summary_text`` is the summary already rendered by :func:`dumps` (saves rendering twice).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with h5py.File(tmp, "w") as out:
            out.attrs["schema"] = RESULT_SCHEMA
            out.attrs["schema_version"] = RESULT_SCHEMA_VERSION
            out.attrs["run_id"] = str(summary.get("run", {}).get("run_id") or "")
            out.attrs["complete"] = bool(summary["complete"])
            out.attrs["summary_json"] = summary_text if summary_text is not None else dumps(summary)
            group = out.create_group("ranks")
            for rank_file in ranks:
                try:
                    with h5py.File(rank_file.path, "r") as src:
                        out.copy(src["/"], group, name=rank_file_name(rank_file.rank)[:-3])
                except OSError as exc:
                    raise MetricsError(
                        f"{rank_file.path}: cannot copy into {path} ({exc})"
                    ) from exc
            _write_aggregate(out.create_group("aggregate"), summary)
        _not_writable_by_others(tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:
        # h5py reports a failed write (a full disk) as OSError or RuntimeError, with a newline.
        tmp.unlink(missing_ok=True)
        raise MetricsError(f"{path}: cannot write ({' '.join(str(exc).split())})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_aggregate(group: h5py.Group, summary: Mapping[str, Any]) -> None:
    window = summary["window"]
    throughput = summary["throughput"]
    group.attrs["window_start_ns"] = np.int64(window["start_ns"])
    group.attrs["window_end_ns"] = np.int64(window["end_ns"])
    group.attrs["common_window_img_s"] = _float(throughput["common_window_img_s"])
    group.attrs["dlbs_trim"] = int(throughput["dlbs_trim"])
    rows = summary["ranks"]
    columns: dict[str, tuple[str, Any]] = {
        "rank": ("rank", np.int32),
        "num_devices": ("num_devices", np.int32),
        "images": ("images", np.int64),
        "own_img_s": ("own_img_s", np.float64),
        "window_images": ("window_images", np.float64),
        "dlbs_effective_img_s": ("dlbs_effective_img_s", np.float64),
        "t_begin_ns": ("t_begin_ns", np.int64),
        "t_finish_ns": ("t_finish_ns", np.int64),
    }
    for name, (key, dtype) in columns.items():
        values = [row[key] for row in rows]
        if dtype is np.float64:
            values = [_float(v) for v in values]
        group.create_dataset(name, data=np.asarray(values, dtype=dtype))


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def write_summary(path: Path, summary: Mapping[str, Any], summary_text: str | None = None) -> None:
    """Write ``summary.json`` atomically (``summary_text``: the summary already rendered)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        tmp.write_text(summary_text if summary_text is not None else dumps(summary))
        _not_writable_by_others(tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MetricsError(f"{path}: cannot write ({exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _not_writable_by_others(path: Path) -> None:
    # Results take the umask (to be shared as the user chooses) but a umask of 000 must not
    # let another user rewrite a measurement.
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o022)
