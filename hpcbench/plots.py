"""PNG pictures of a run: rank timeline, throughput over time, batch latency histogram.

Needs the ``plot`` extra (matplotlib), imported only when a picture is drawn, with the
non-interactive Agg backend (no display on a compute node). Data come from the rank files, or
from ``result.h5`` where only the merged file was kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcbench.aggregate import figures
from hpcbench.aggregate.load import load_run, read_result_ranks
from hpcbench.aggregate.summary import summarize
from hpcbench.errors import MetricsError, UsageError
from hpcbench.metrics import RankFile
from hpcbench.resources import install_hint
from hpcbench.runfiles import RESULT_FILE, RunFiles
from hpcbench.text import plural
from hpcbench.units import summary_unit

NS_PER_S = figures.NS_PER_S
# Lanes are merged into busy intervals at about this many intervals per axis width, so a run
# of 100 000 batches a device draws as quickly as 100 and looks the same at PNG resolution.
_PIXELS = 2000
# Up to this many batches per lane, each batch is drawn with its own outline.
_OUTLINE_BATCHES = 300
# More ranks than this: one pooled latency histogram instead of one per rank.
_MAX_LATENCY_LINES = 8
# More lanes than this: one lane per rank; more labels than this: label every k-th lane.
_MAX_LANES = 32
_MAX_LANE_LABELS = 40
# At most this many time bins in the throughput plot.
_MAX_RATE_BINS = 60
_BARRIER_MARKERS = {"start": ">", "end": "s"}
_WINDOW_COLOUR = "#2ca02c"


@dataclass(frozen=True, slots=True)
class PlotData:
    """What the pictures need: the ranks' batches and the run's summary."""

    name: str
    ranks: tuple[RankFile, ...]
    summary: dict[str, Any]


def load_plot_data(run_dir: Path, *, dlbs_trim: int = 50) -> PlotData:
    """Ranks and summary of a run directory (rank files, else ``result.h5``)."""
    run_dir = Path(run_dir)
    if any(run_dir.glob("rank-*.h5")) or any(run_dir.glob("rank-*.h5.part")):
        run = load_run(run_dir, allow_partial=True)
        summary = summarize(run, dlbs_trim=dlbs_trim)
        return PlotData(run_dir.name, run.ranks, summary)
    result = RunFiles(run_dir).result
    if not result.exists():
        raise MetricsError(f"{run_dir}: neither rank files nor {RESULT_FILE} to plot")
    import json

    import h5py

    with h5py.File(result, "r") as f:
        summary = json.loads(f.attrs["summary_json"])
    return PlotData(run_dir.name, read_result_ranks(result), summary)


def write_plots(data: PlotData, out_dir: Path, prefix: str | None = None) -> list[Path]:
    """Write ``<prefix>-timeline.png``, ``-throughput.png`` and ``-latency.png``; return paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = prefix or data.name
    written = []
    for suffix, draw in (
        ("timeline", plot_timeline),
        ("throughput", plot_throughput),
        ("latency", plot_latency),
    ):
        fig = draw(data)
        path = out_dir / f"{prefix}-{suffix}.png"
        tmp = path.with_name(f".{path.name}.part")
        fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written


def require_pyplot() -> None:
    """Raise the install hint now when matplotlib is missing (before any picture is drawn)."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise UsageError(f"plots need matplotlib: {install_hint('plot')} (or drop --plot)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _origin_ns(data: PlotData) -> int:
    return int(min(r.t_begin_ns for r in data.ranks if r.t_begin_ns is not None))


def _title(data: PlotData, what: str) -> str:
    run = data.summary.get("run", {})
    incomplete = "" if data.summary.get("complete", True) else "  [INCOMPLETE]"
    return (
        f"{what} — {data.name}: {run.get('model')} batch {run.get('batch_size')}, "
        f"{plural(run.get('world_size'), 'rank')}, layout {shorten(run.get('layout') or '-', 40)}"
        f"{incomplete}"
    )


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis.

    >>> shorten("0,1,2,3;4,5,6,7", 9)
    '0,1,2,3;…'
    """
    return text if len(text) <= width else text[: width - 1] + "…"


def busy_intervals(
    t_start_ns: np.ndarray, t_end_ns: np.ndarray, min_gap_ns: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merge batch intervals whose gaps are below ``min_gap_ns`` into (starts, ends).

    >>> busy_intervals(np.array([0, 10, 30, 31]), np.array([10, 20, 31, 40]), 5)
    (array([ 0, 30]), array([20, 40]))
    """
    if t_start_ns.shape[0] == 0:
        return t_start_ns[:0], t_end_ns[:0]
    order = np.argsort(t_start_ns, kind="stable")
    starts, ends = t_start_ns[order], t_end_ns[order]
    # An interval starts a new block when it begins after everything before it has ended.
    reach = np.maximum.accumulate(ends)
    new_block = np.ones(starts.shape[0], dtype=bool)
    new_block[1:] = starts[1:] > reach[:-1] + min_gap_ns
    first = np.flatnonzero(new_block)
    last = np.append(first[1:] - 1, starts.shape[0] - 1)
    return starts[first], reach[last]


def plot_timeline(data: PlotData) -> Any:
    """One lane per rank/device: batches as bars, barrier releases marked, window shaded."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    origin = _origin_ns(data)
    # One lane per device while that stays readable, else one lane per rank (device None).
    lanes: list[tuple[RankFile, int | None]] = []
    for rank_file in data.ranks:
        devices = sorted({int(d) for d in np.unique(rank_file.timed.device)}) or [0]
        lanes.extend((rank_file, d) for d in devices)
    if len(lanes) > _MAX_LANES:
        lanes = [(rank_file, None) for rank_file in data.ranks]
    height = min(2.0 + 0.32 * len(lanes), 14.0)
    fig, ax = plt.subplots(figsize=(11, height), layout="constrained")
    span_ns = max(
        max(int(r.t_finish_ns or 0) for r in data.ranks),
        max((int(r.timed.t_end_ns.max()) for r in data.ranks if len(r.timed)), default=0),
    ) - min(
        min((int(r.warmup.t_start_ns.min()) for r in data.ranks if len(r.warmup)), default=origin),
        origin,
    )
    min_gap_ns = max(span_ns, 1) / _PIXELS
    colours = plt.get_cmap("tab10")
    labels = []
    window = data.summary["window"]
    window_label = "common window (empty)"
    if window["end_ns"] > window["start_ns"]:
        window_label = f"common window ({window['length_s']:.3f} s)"
        left = (window["start_ns"] - origin) / NS_PER_S
        right = (window["end_ns"] - origin) / NS_PER_S
        ax.axvspan(left, right, color=_WINDOW_COLOUR, alpha=0.12, zorder=0)
        # Edges drawn over the bars: the shading alone hides behind busy lanes.
        for edge in (left, right):
            ax.axvline(edge, color=_WINDOW_COLOUR, lw=1.5, ls="--", zorder=5)
    for y, (rank_file, device) in enumerate(lanes):
        colour = colours(rank_file.rank % 10)
        for phase, alpha in ((rank_file.warmup, 0.35), (rank_file.timed, 0.9)):
            if device is None:
                starts, ends = phase.t_start_ns, phase.t_end_ns
            else:
                mask = phase.device == device
                starts, ends = phase.t_start_ns[mask], phase.t_end_ns[mask]
            outline = starts.shape[0] <= _OUTLINE_BATCHES
            if not outline:
                starts, ends = busy_intervals(starts, ends, min_gap_ns)
            bars = [((s - origin) / NS_PER_S, (e - s) / NS_PER_S) for s, e in zip(starts, ends)]
            ax.broken_barh(
                bars,
                (y - 0.35, 0.7),
                facecolors=colour if phase is rank_file.timed else "#bbbbbb",
                edgecolors="white" if outline else "none",
                linewidth=0.4,
                alpha=alpha,
            )
        for barrier, arrive, release in rank_file.barriers:
            marker = _BARRIER_MARKERS.get(barrier)
            if marker is None:
                continue
            # The wait at the barrier as a thin line, its release as a marker.
            ax.plot(
                [(arrive - origin) / NS_PER_S, (release - origin) / NS_PER_S],
                [y, y],
                color="black",
                lw=0.8,
                ls=":",
            )
            ax.plot((release - origin) / NS_PER_S, y, marker=marker, color="black", ms=6, ls="")
        if device is None:
            labels.append(f"rank {rank_file.rank}")
        else:
            gpu = _gpu_of(data.summary["ranks"], rank_file.rank, device)
            labels.append(
                f"rank {rank_file.rank} · dev {device}" + (f" (GPU {gpu})" if gpu else "")
            )
    step = max(1, -(-len(lanes) // _MAX_LANE_LABELS))
    ax.set_yticks(range(0, len(lanes), step), labels[::step], fontsize=8 if step > 1 else 10)
    ax.set_ylim(len(lanes) - 0.5, -0.6)
    ax.set_xlabel("seconds since the first rank's timed phase began")
    ax.set_title(_title(data, "Rank timeline"), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(
        handles=[
            Patch(color="#bbbbbb", alpha=0.5, label="warm-up batches"),
            Patch(color=colours(0), alpha=0.9, label="timed batches (colour = rank)"),
            Patch(color=_WINDOW_COLOUR, alpha=0.25, label=window_label),
            Line2D([], [], marker=">", ls=":", color="black", label="start barrier: wait, release"),
            Line2D([], [], marker="s", ls=":", color="black", label="end barrier: wait, release"),
        ],
        loc="outside lower center",
        ncol=5,
        fontsize=8,
        frameon=False,
    )
    return fig


def _gpu_of(rows: Sequence[dict[str, Any]], rank: int, device: int) -> str | None:
    """The physical GPU behind a rank's local device, from the summary's ``gpus``."""
    for row in rows:
        if row["rank"] == rank:
            gpus = row.get("gpus") or []
            return str(gpus[device]) if device < len(gpus) else None
    return None


def rate_bin_ns(data: PlotData) -> float:
    """Width of the throughput plot's time bins: a hundredth of the run, or one batch if longer.

    A bin shorter than a batch would show the rate inside single batches (the gaps between
    them included) rather than the rate the run sustained.
    """
    span_ns = max(_end_ns(data) - _origin_ns(data), 1)
    durations = [r.timed.t_end_ns - r.timed.t_start_ns for r in data.ranks if len(r.timed)]
    typical_ns = float(np.median(np.concatenate(durations))) if durations else 0.0
    return max(span_ns / _MAX_RATE_BINS, typical_ns)


def _end_ns(data: PlotData) -> int:
    return max(int(r.t_finish_ns or 0) for r in data.ranks)


def plot_throughput(data: PlotData) -> Any:
    """Samples per second over time: the whole run on top, each rank below."""
    plt = _pyplot()
    unit = summary_unit(data.summary)
    origin = _origin_ns(data)
    span_ns = max(_end_ns(data) - origin, 1)
    bins = max(1, round(span_ns / rate_bin_ns(data)))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, layout="constrained", height_ratios=(1, 1.4)
    )
    total = np.zeros(bins)
    centres = np.zeros(bins)
    for rank_file in data.ranks:
        timed = rank_file.timed
        centres, rate = figures.throughput_over_time(
            timed.t_start_ns, timed.t_end_ns, timed.images, origin, origin + span_ns, bins
        )
        total += rate
        # A rank's own curve uses bins of about the same width laid over its own timed phase,
        # so no bin is half outside it (a rank that finished is not "at zero").
        begin_ns = int(rank_file.t_begin_ns or origin)
        finish_ns = max(int(rank_file.t_finish_ns or origin + span_ns), begin_ns + 1)
        own_bins = max(1, round((finish_ns - begin_ns) / (span_ns / bins)))
        own_centres, own_rate = figures.throughput_over_time(
            timed.t_start_ns, timed.t_end_ns, timed.images, begin_ns, finish_ns, own_bins
        )
        bottom.plot(
            own_centres + (begin_ns - origin) / NS_PER_S, own_rate, lw=1.2, marker=".", ms=3,
            label=f"rank {rank_file.rank}",
        )  # fmt: skip
    top.plot(centres, total, color="black", lw=1.5, label="all ranks")
    window = data.summary["window"]
    headline = data.summary["throughput"]["common_window_img_s"]
    for ax in (top, bottom):
        if window["end_ns"] > window["start_ns"]:
            ax.axvspan(
                (window["start_ns"] - origin) / NS_PER_S,
                (window["end_ns"] - origin) / NS_PER_S,
                color=_WINDOW_COLOUR,
                alpha=0.12,
                label="common window" if ax is top else None,
            )
        ax.grid(alpha=0.3)
        # Head room above the highest point, so a flat curve is not lost in the frame.
        peaks = [np.nanmax(np.asarray(line.get_ydata(), float)) for line in ax.get_lines()]
        floor = float(headline or 0) if ax is top else 0.0
        ax.set_ylim(0, max([floor, *peaks]) * 1.12 or 1.0)
        ax.yaxis.set_major_formatter(_distinct_formatter())
    if headline:
        top.axhline(
            headline,
            color=_WINDOW_COLOUR,
            ls="--",
            lw=1,
            label=f"common-window throughput {headline:,.{_decimals(headline)}f} {unit.rate}",
        )
    top.set_ylabel(f"all ranks, {unit.plural}/s")
    bottom.set_ylabel(f"per rank, {unit.plural}/s")
    top.legend(fontsize=8, loc="lower center")
    if len(data.ranks) <= 16:
        bottom.legend(fontsize=8, ncol=min(len(data.ranks), 8), loc="lower center")
    bottom.set_xlabel(
        f"seconds since the first rank's timed phase began (bins of {span_ns / bins / 1e6:,.0f} "
        "ms; a batch counts over its own start to end)"
    )
    top.set_title(_title(data, "Throughput over time"), fontsize=10)
    return fig


def tick_decimals(values: Sequence[float]) -> int:
    """The fewest decimals that show every tick value exactly (so no two read the same).

    >>> tick_decimals([0, 2000, 4000]), tick_decimals([0, 0.5, 1, 1.5]), tick_decimals([0, 0.25])
    (0, 1, 2)
    """
    for decimals in range(6):
        if all(abs(round(v, decimals) - v) <= 1e-9 * max(1.0, abs(v)) for v in values):
            return decimals
    return 6


def _decimals(value: float) -> int:
    # A rate of a few samples per second needs its decimals; thousands do not.
    return 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2


def _distinct_formatter() -> Any:
    """A tick formatter with thousands separators and as many decimals as the ticks need."""
    from matplotlib.ticker import Formatter

    class DistinctFormatter(Formatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:,.{_decimals(x)}f}"

        def format_ticks(self, values: Sequence[float]) -> list[str]:
            decimals = tick_decimals(values)
            return [f"{v:,.{decimals}f}" for v in values]

    return DistinctFormatter()


def plot_latency(data: PlotData) -> Any:
    """Histogram of batch latency (end − start), per rank or pooled, with percentiles marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    per_rank = [
        (r.rank, (r.timed.t_end_ns - r.timed.t_start_ns) / 1e6) for r in data.ranks if len(r.timed)
    ]
    if not per_rank:
        ax.text(0.5, 0.5, "no timed batches", ha="center", transform=ax.transAxes)
        return fig
    pooled = np.concatenate([values for _, values in per_rank])
    lat = data.summary["latency_ms"]
    low, high = float(pooled.min()), float(pooled.max())
    # A long tail (first batches, a stall) would squeeze the body into one bin: cut the axis
    # at twice p99 and say how many batches lie beyond.
    note = ""
    p99 = lat.get("p99")
    if p99 and high > 2 * p99:
        beyond = int(np.count_nonzero(pooled > 2 * p99))
        note = f"{beyond} batch(es) above {2 * p99:.2f} ms not shown (max {high:.2f} ms)"
        high = 2 * p99
    edges = np.linspace(low, high if high > low else low + 1.0, 80)
    if len(per_rank) <= _MAX_LATENCY_LINES:
        for rank, values in per_rank:
            ax.hist(values, bins=edges, histtype="step", lw=1.3, label=f"rank {rank}")
    else:
        ax.hist(pooled, bins=edges, color="#1f77b4", alpha=0.8, label=f"{len(per_rank)} ranks")
    for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        if lat.get(key) is not None:
            ax.axvline(lat[key], color="black", ls=style, lw=1, label=f"{key} {lat[key]:.2f} ms")
    if note:
        ax.text(0.99, 0.6, note, ha="right", transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("batch latency (ms, from submit to completion)")
    ax.set_ylabel("batches")
    ax.set_title(_title(data, "Batch latency"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig
