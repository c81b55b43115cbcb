"""``hpcbench report``: the table of runs and the PNG pictures."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcbench.aggregate import aggregate_run, figures
from hpcbench.cli import main
from hpcbench.errors import UsageError
from hpcbench.plots import busy_intervals, load_plot_data, plot_throughput, write_plots
from hpcbench.report import format_report, load_summaries
from hpcbench.resources import install_hint
from hpcbench.units import SEQUENCE_MODELS
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
    # From the checkout, never by name from the package index (another project's hpcbench).
    with pytest.raises(UsageError, match=re.escape(install_hint("plot"))):
        write_plots(load_plot_data(tmp_path), tmp_path / "plots")


def test_busy_intervals_merge_overlaps_and_small_gaps() -> None:
    # Overlapping in-flight batches (queue depth 2) and a gap of 1 ns below the threshold.
    starts = np.array([0, 5, 21, 100])
    ends = np.array([10, 20, 30, 110])
    merged = busy_intervals(starts, ends, min_gap_ns=2)
    assert [a.tolist() for a in merged] == [[0, 100], [30, 110]]


def _slow_batches_run(run_dir: Path, batch_s: float = 14.0, batches: int = 4) -> Path:
    # BERT on a CPU: 4 sequences a batch, each batch far longer than a hundredth of the run.
    run_dir.mkdir()
    for rank in range(2):
        write_rank(
            run_dir,
            rank,
            2,
            iteration_batches(T0_NS, [batch_s * 1000.0] * batches, 1, 4),
            attrs={"model": "bert_base", "backend": "torch"},
        )
    return run_dir


def test_throughput_over_time_is_flat_when_batches_outlast_the_bins(tmp_path: Path) -> None:
    data = load_plot_data(_slow_batches_run(tmp_path / "bert"))
    fig = plot_throughput(data)
    top, bottom = fig.axes
    # Two ranks, 4 sequences every 14 s each: every bin reads the true rate, none reads 0.
    (total,) = [line for line in top.get_lines() if line.get_label() == "all ranks"]
    assert np.asarray(total.get_ydata()) == pytest.approx(2 * 4 / 14.0, rel=1e-6)
    for line in bottom.get_lines():
        assert np.asarray(line.get_ydata()) == pytest.approx(4 / 14.0, rel=1e-6)
    assert top.get_ylabel() == "all ranks, sequences/s"


def test_throughput_bins_are_spread_by_batch_not_by_completion() -> None:
    # Bins of a quarter batch: counting completions gave 0, 0, 0, 4·rate, ...
    starts = T0_NS + np.arange(4) * 1_000_000_000
    centres, rate = figures.throughput_over_time(
        starts, starts + 1_000_000_000, np.full(4, 8), T0_NS, T0_NS + 4_000_000_000, 16
    )
    assert rate == pytest.approx(np.full(16, 8.0))
    assert centres[0] == pytest.approx(0.125)


def test_small_rates_have_distinct_tick_labels(tmp_path: Path) -> None:
    fig = plot_throughput(load_plot_data(_slow_batches_run(tmp_path / "bert")))
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert len(labels) > 2 and len(set(labels)) == len(labels), labels


def test_sequence_models_are_the_torch_backends_token_models() -> None:
    torch_backend = pytest.importorskip("hpcbench.backends.torch_backend")
    tokens = {m.name for m in torch_backend.MODELS.values() if m.kind == "tokens"}
    assert tokens == SEQUENCE_MODELS


def _truncated_run(run_dir: Path) -> Path:
    run_dir.mkdir()
    worked_example(run_dir)
    victim = run_dir / "rank-00001.h5"
    victim.write_bytes(victim.read_bytes()[:3000])
    return run_dir


def test_a_broken_run_is_named_and_the_others_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    worked_example(good)
    broken = _truncated_run(tmp_path / "broken")
    other = _partial_run(tmp_path / "other")
    plots = tmp_path / "plots"
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(good), str(broken), str(other), "--plot", str(plots)])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"hpcbench: skipped {broken}: ")
    assert "rank-00001.h5: unreadable or truncated rank file" in line
    rows = [row.split()[0] for row in out.splitlines()[2:4]]
    assert rows == ["good", "other"]
    assert sorted(p.name.split("-")[0] for p in plots.iterdir()) == ["good"] * 3 + ["other"] * 3


def test_no_readable_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = [_truncated_run(tmp_path / name) for name in ("a", "b")]
    with pytest.raises(SystemExit) as exit_:
        main(["report", *map(str, broken)])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["hpcbench"] * 3
    assert lines[-1] == "hpcbench: error: none of the 2 runs could be read (see above)"
    assert out == ""


def test_table_counts_sequences_for_a_language_model(tmp_path: Path) -> None:
    bert = _slow_batches_run(tmp_path / "bert")
    header = format_report(load_summaries([bert])).splitlines()[0]
    assert "window seq/s" in header and "img" not in header
    worked = tmp_path / "worked"
    worked.mkdir()
    worked_example(worked)
    text = format_report(load_summaries([worked, bert]))
    assert "window samples/s" in text.splitlines()[0]
    assert text.splitlines()[-1] == "samples: images for resnet50; sequences for bert_base"
