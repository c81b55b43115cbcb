"""``hpcbench report``: the table of runs and the PNG pictures."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcbench.aggregate import aggregate_run
from hpcbench.cli import main
from hpcbench.errors import UsageError
from hpcbench.plots import busy_intervals, load_plot_data, write_plots
from hpcbench.report import format_report, load_summaries
from tests.rankfiles import T0_NS, Batches, iteration_batches, worked_example, write_rank

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _partial_run(run_dir: Path) -> Path:
    run_dir.mkdir()
    write_rank(run_dir, 0, 2, iteration_batches(T0_NS, [10.0] * 20, 2, 32), num_devices=2)
    return run_dir


def test_table_lists_runs_with_figures_and_notes(tmp_path: Path) -> None:
    worked = tmp_path / "worked"
    worked.mkdir()
    worked_example(worked)
    aggregate_run(worked)
    partial = _partial_run(tmp_path / "half")
    text = format_report(load_summaries([worked, partial]))
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["run", "model", "layout", "batch", "ranks"]
    worked_line = next(line for line in lines if line.startswith("worked"))
    assert "0,1,2,3;4,5,6,7" in worked_line
    assert "19 553.8" in worked_line  # common window
    assert "19 883.5" in worked_line  # DLBS adjusted
    assert "half (partial)" in text
    # The 20-iteration run has no DLBS adjusted figure, and the table says why.
    assert "half: DLBS adjusted undefined: rank 0 has K=20 iterations" in text


def test_cli_report_writes_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    worked_example(run)
    plots = tmp_path / "plots"
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(run), "--plot", str(plots)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["run-latency.png", "run-throughput.png", "run-timeline.png"]
    for path in plots.iterdir():
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 10_000
        assert f"wrote {path}" in out


@pytest.mark.slow
def test_runs_of_the_same_name_keep_their_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for parent in ("a", "b"):
        run = tmp_path / parent / "run"
        run.mkdir(parents=True)
        write_rank(run, 0, 1, iteration_batches(T0_NS, [10.0] * 20, 1, 8))
    monkeypatch.chdir(tmp_path / "a" / "run")
    with pytest.raises(SystemExit) as exit_:
        main(["report", ".", str(tmp_path / "b" / "run"), "--plot", str(tmp_path / "plots")])
    assert exit_.value.code == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["run", "run"]
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names[0] == "run-0-latency.png" and len(names) == 6


def test_pictures_from_result_h5_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    worked_example(run)
    aggregate_run(run)
    kept = tmp_path / "archived"
    kept.mkdir()
    for name in ("result.h5", "summary.json"):
        shutil.copy(run / name, kept / name)
    data = load_plot_data(kept)
    assert [r.rank for r in data.ranks] == [0, 1]
    assert data.summary["throughput"]["dlbs_adjusted_img_s"] == pytest.approx(19883.5, abs=0.05)
    paths = write_plots(data, tmp_path / "plots", prefix="x")
    assert [p.name for p in paths] == ["x-timeline.png", "x-throughput.png", "x-latency.png"]


@pytest.mark.slow
def test_many_ranks_and_a_long_latency_tail_still_draw(tmp_path: Path) -> None:
    # 9 ranks × 4 devices exceed the per-device lane limit; one stalled batch is 100× p99.
    for rank in range(9):
        batches = iteration_batches(T0_NS, [5.0] * 50, 4, 8)
        ends = batches.t_end_ns.copy()
        if rank == 3:
            ends[-1] += 2_000_000_000
        write_rank(
            tmp_path,
            rank,
            9,
            Batches.of(batches.t_start_ns, ends, 8, batches.device),
            num_devices=4,
        )
    paths = write_plots(load_plot_data(tmp_path), tmp_path / "plots")
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_plots_without_matplotlib_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worked_example(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"hpcbench\[plot\]"):
        write_plots(load_plot_data(tmp_path), tmp_path / "plots")


def test_busy_intervals_merge_overlaps_and_small_gaps() -> None:
    # Overlapping in-flight batches (queue depth 2) and a gap of 1 ns below the threshold.
    starts = np.array([0, 5, 21, 100])
    ends = np.array([10, 20, 30, 110])
    merged = busy_intervals(starts, ends, min_gap_ns=2)
    assert [a.tolist() for a in merged] == [[0, 100], [30, 110]]
