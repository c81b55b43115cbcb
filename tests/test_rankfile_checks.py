"""What aggregation refuses: rank files of another run or launch, stray names, impossible values.

Every case is a file that once gave a figure with exit 0 (issue 18, items 3-5 and 13): now one
line naming the file and the field, exit 2 on the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcbench.aggregate import aggregate_run
from hpcbench.errors import MetricsError
from tests.rankfiles import T0_NS, iteration_batches, write_rank

NS_PER_S = 1_000_000_000
REPO = Path(__file__).resolve().parent.parent


def _two_ranks(run_dir: Path, **kwargs: object) -> list[Path]:
    """Two finished ranks of 20 iterations of 50 ms, one device, batch 8."""
    batches = iteration_batches(T0_NS, [50.0] * 20, num_devices=1, batch_size=8)
    return [write_rank(run_dir, rank, 2, batches, **kwargs) for rank in (0, 1)]  # type: ignore[arg-type]


def _refusal(run_dir: Path, allow_partial: bool = False) -> str:
    with pytest.raises(MetricsError) as info:
        aggregate_run(run_dir, allow_partial=allow_partial)
    message = str(info.value)
    assert "\n" not in message
    assert not (run_dir / "summary.json").exists()
    return message


# ------------------------------------------------------------------ other runs and launches
def test_a_rank_file_of_another_run_is_refused(tmp_path: Path) -> None:
    _two_ranks(tmp_path, run_id="run-a")
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "run-a"}))
    assert aggregate_run(tmp_path)["complete"] is True
    (tmp_path / "summary.json").unlink()
    # Copied in from a concurrent run.
    batches = iteration_batches(T0_NS, [50.0] * 20, num_devices=1, batch_size=8)
    write_rank(tmp_path, 1, 2, batches, run_id="run-b")
    message = _refusal(tmp_path)
    assert "rank-00001.h5 ('run-b')" in message and "another run" in message
    (tmp_path / "run.json").unlink()
    assert "different runs" in _refusal(tmp_path)


def test_ranks_of_two_launches_are_refused(tmp_path: Path) -> None:
    batches = iteration_batches(T0_NS, [50.0] * 20, num_devices=1, batch_size=8)
    write_rank(tmp_path, 0, 2, batches, launch_id="j77.0.0")
    write_rank(tmp_path, 1, 2, batches, launch_id="j77.0.1")
    message = _refusal(tmp_path, allow_partial=True)
    assert "different launches" in message and "j77.0.0" in message and "j77.0.1" in message


def test_a_finished_and_an_unfinished_file_of_one_rank_are_refused(tmp_path: Path) -> None:
    # A requeued job reusing its run directory: attempt 0 finished rank 0, attempt 1 runs it.
    _two_ranks(tmp_path, launch_id="j77.0.0")
    batches = iteration_batches(T0_NS, [50.0] * 3, num_devices=1, batch_size=8)
    write_rank(tmp_path, 0, 2, batches, launch_id="j77.0.1", complete=False)
    message = _refusal(tmp_path, allow_partial=True)
    assert "rank 0 has both rank-00000.h5 and rank-00000.h5.part" in message


@pytest.mark.parametrize("stray", ["rank-1.h5", "rank-\u0661.h5", "rank-000001.h5", "rank-x.h5"])
def test_a_stray_file_named_like_a_rank_is_refused(tmp_path: Path, stray: str) -> None:
    paths = _two_ranks(tmp_path)
    (tmp_path / stray).write_bytes(paths[1].read_bytes())
    message = _refusal(tmp_path)
    assert str(tmp_path / stray) in message and "not one" in message


def test_a_fifo_or_folder_named_like_a_rank_file_is_one_line(tmp_path: Path) -> None:
    paths = _two_ranks(tmp_path)
    paths[1].unlink()
    os.mkfifo(paths[1])
    # In a child with a time limit: before the fix, opening the FIFO blocked for ever.
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", "aggregate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"{paths[1]}: not a regular file" in done.stderr
    paths[1].unlink()
    paths[1].mkdir()
    assert f"{paths[1]}: not a regular file" in _refusal(tmp_path)


# ------------------------------------------------------------------------ impossible values
def _set_attr(name: str, value: object) -> Callable[[h5py.File], None]:
    return lambda f: f.attrs.__setitem__(name, value)


def _set_row(column: str, value: int, row: int = 0) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f["timed"][column][row] = value

    return edit


def _replace_column(column: str, values: np.ndarray) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f["timed"][column]
        f["timed"].create_dataset(column, data=values)

    return edit


def _shift_batch(seconds: int) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        for column in ("t_start_ns", "t_end_ns"):
            f["timed"][column][0] += seconds * NS_PER_S

    return edit


def _late_finish(f: h5py.File) -> None:
    timed = f["timed"].attrs
    timed["t_finish_ns"] = timed["t_begin_ns"] + 10 * (timed["t_finish_ns"] - timed["t_begin_ns"])


def _huge_declared_column(f: h5py.File) -> None:
    # 2^28 rows declared, none written: a few hundred bytes of file.
    del f["timed"]["t_start_ns"]
    f["timed"].create_dataset("t_start_ns", shape=(1 << 28,), dtype=np.int64, chunks=(4096,))


IMPOSSIBLE: dict[str, tuple[Callable[[h5py.File], None], str]] = {
    "negative images": (_set_row("images", -5), "timed.images"),
    "2^31-1 images": (_set_row("images", 2**31 - 1), "timed.images"),
    "float images with NaN": (
        _replace_column("images", np.full(20, np.nan)),
        "timed.images: dtype float64",
    ),
    "int64-extreme start": (_set_row("t_start_ns", -(2**63)), "timed.t_start_ns"),
    "int64-extreme end": (_set_row("t_end_ns", 2**63 - 1), "timed.t_end_ns"),
    "batch an hour early": (_shift_batch(-3600), "timed.t_start_ns"),
    "batch an hour late": (_shift_batch(3600), "timed.t_end_ns"),
    "t_finish 10x late": (_late_finish, "timed.t_finish_ns"),
    "batch_size 0": (_set_attr("batch_size", 0), "batch_size"),
    "complete as a string": (_set_attr("complete", "False"), "complete"),
    "negative device": (_set_row("device", -1), "timed.device"),
    "device beyond num_devices": (_set_row("device", 3), "timed.device"),
    "num_devices 0": (_set_attr("num_devices", 0), "num_devices"),
    "num_devices text": (_set_attr("num_devices", "two"), "num_devices"),
    "rank as text": (_set_attr("rank", "1"), "rank"),
    "world_size negative": (_set_attr("world_size", -2), "world_size"),
    "plan_json not JSON": (_set_attr("plan_json", "{not json"), "plan_json"),
    "binding_json a list": (_set_attr("binding_json", "[1, 2]"), "binding_json"),
    "plan_json negative GPU": (
        _set_attr("plan_json", json.dumps({"gpus": [-1], "cpus": [0]})),
        "plan_json.gpus",
    ),
    "2^28 rows declared": (_huge_declared_column, "timed.t_start_ns: declares 268435456 rows"),
    "deadline_ns as text": (_set_attr("deadline_ns", "soon"), "deadline_ns"),
    "threads_json a number": (_set_attr("threads_json", "5"), "threads_json"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_values_are_refused_naming_file_and_field(tmp_path: Path, case: str) -> None:
    edit, field = IMPOSSIBLE[case]
    paths = _two_ranks(tmp_path)
    with h5py.File(paths[1], "r+") as f:
        edit(f)
    message = _refusal(tmp_path, allow_partial=True)
    assert message.startswith(f"{paths[1]}: {field}"), message


def test_schema_version_1_files_are_still_read(tmp_path: Path) -> None:
    # What hpcbench wrote before launch ids: schema_version 1, no launch_id.
    paths = _two_ranks(tmp_path)
    for path in paths:
        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = 1
            del f.attrs["launch_id"]
    summary = aggregate_run(tmp_path)
    assert summary["complete"] is True
    assert summary["throughput"]["common_window_img_s"] == pytest.approx(2 * 8 * 1000 / 50.0)


def test_schema_version_2_requires_a_launch_id(tmp_path: Path) -> None:
    paths = _two_ranks(tmp_path)
    with h5py.File(paths[0], "r+") as f:
        del f.attrs["launch_id"]
    assert _refusal(tmp_path).startswith(f"{paths[0]}: launch_id")


# ------------------------------------------------------------------- efficiency references
@pytest.mark.parametrize(
    "value", ['"fast"', "-1234.5", "[1000]", "0", "true", "{}"], ids=lambda v: v
)
def test_a_reference_with_an_impossible_throughput_is_one_line(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_archive import cli

    (tmp_path / "run").mkdir()
    _two_ranks(tmp_path / "run")
    reference = tmp_path / "ref.json"
    reference.write_text(
        '{"complete": true, "run": {"world_size": 1}, '
        f'"throughput": {{"common_window_img_s": {value}}}}}'
    )
    code, _, err = cli(capsys, "aggregate", str(tmp_path / "run"), "--reference", str(reference))
    assert code == 2 and err.count("\n") == 1, err
    assert "common_window_img_s must be a positive number" in err
    assert not (tmp_path / "run" / "summary.json").exists()
