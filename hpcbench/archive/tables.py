"""Reports across archived runs: export rows, exploration and scaling tables, plots.

Only complete runs enter the tables; repeats (same configuration) are averaged and their
spread shown. Devices ``N`` of a run are the devices its summary counts: its GPUs, or the CPU
devices (groups of a rank's cores) of the CPU backend and of torch on a CPU. Scaling uses the
time of one iteration, one batch on every device: ``t_N = N·B·1000 / X_N`` ms for per-device
batch ``B`` and throughput ``X_N``.

- weak scaling (per-device batch fixed): efficiency ``100·t_1/t_N``;
- strong scaling (global batch ``N·B`` fixed): efficiency ``100·t_1/(N·t_N)``;

with ``t_1`` the smallest run of the series (``N_0`` devices, best layout): for ``N_0 > 1``
strong efficiency becomes ``100·N_0·t_0/(N·t_N)``. Both reduce to ``X_N/(N·X_1)`` for the
series they compare; what differs is which runs form a series.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbench.archive.query import FIGURES, HEADLINE, config_signature, figure
from hpcbench.text import format_figure, format_table
from hpcbench.units import sample_unit, samples_of


@dataclass(frozen=True, slots=True)
class Table:
    """A titled table of strings, with the numbers behind it for ``--json``."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    data: tuple[Mapping[str, Any], ...] = field(default=())
    note: str | None = None  # a line under the table (the unit of its throughput)

    def format(self) -> str:
        text = f"{self.title}\n{format_table(self.headers, self.rows)}"
        return f"{text}\n{self.note}" if self.note else text


def format_number(value: float | None) -> str:
    """A figure with as many digits as its size needs.

    >>> [format_number(v) for v in (40123.456, 12.3456, 0.0000388, 0.0, None)]
    ['40 123.5', '12.346', '3.88e-05', '0', '-']
    """
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return format_figure(value)
    if size >= 0.01:
        return f"{value:.3f}"
    return f"{value:.3g}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# -- export ---------------------------------------------------------------------------------


def _flat_params(entry: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = dict(entry.get("params") or {})
    for key, value in (entry.get("spec") or {}).items():
        flat[f"spec.{key}"] = (
            json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        )
    return flat


def export_rows(
    entries: Sequence[Mapping[str, Any]], *, all_params: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per run: id, time, completeness, the parameters that varied, the figures."""
    flats = [_flat_params(e) for e in entries]
    names: list[str] = []
    for flat in flats:
        names.extend(k for k in flat if k not in names)
    varied = [
        name
        for name in names
        if all_params
        or len({json.dumps(f.get(name), sort_keys=True, default=str) for f in flats}) > 1
    ]
    columns = ["run_id", "archived_at", "complete", *varied, *FIGURES]
    rows = []
    for entry, flat in zip(entries, flats):
        row: dict[str, Any] = {
            "run_id": entry.get("run_id"),
            "archived_at": entry.get("archived_at"),
            "complete": bool(entry.get("complete")),
        }
        row.update({name: flat.get(name) for name in varied})
        row.update({key: figure(entry, key) for key in FIGURES})
        rows.append(row)
    return columns, rows


# -- configurations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration and its complete repeats' headline throughput."""

    params: Mapping[str, Any]
    gpu_set: tuple[int, ...]
    throughputs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.throughputs)

    @property
    def cv(self) -> float | None:
        if len(self.throughputs) < 2 or self.mean == 0:
            return None
        return statistics.stdev(self.throughputs) / self.mean

    @property
    def devices(self) -> int:
        value = self.params.get("devices") or self.params.get("gpus_total")
        return int(value or self.params.get("world_size") or 1)

    @property
    def layout(self) -> str:
        """The per-node layout, prefixed by the node count beyond one node.

        A run of "0;1" on 2 nodes is another configuration than "0;1" on one node: ``2×(0;1)``.
        """
        layout = str(self.p("layout"))
        nodes = self.p("nodes")
        return layout if nodes in (None, 1) else f"{nodes}×({layout})"

    @property
    def device_kind(self) -> str:
        """What a device of this run is: "GPU", or "CPU device" (a rank's core group).

        The CPU backend computes on cores even where the plan gave its ranks GPUs.
        """
        return "GPU" if self.gpu_set and self.p("backend") != "cpu" else "CPU device"

    @property
    def devices_per_rank(self) -> int | None:
        per_rank = self.p("gpus_per_rank") if self.device_kind == "GPU" else None
        ranks = self.p("world_size")
        if not per_rank and isinstance(ranks, int) and ranks > 0 and self.devices % ranks == 0:
            per_rank = self.devices // ranks
        return per_rank or None

    def p(self, key: str) -> Any:
        return self.params.get(key)

    def cell(self) -> str:
        text = _number(self.mean)
        return text if self.cv is None else f"{text} ±{100 * self.cv:.1f}%"


def configurations(entries: Iterable[Mapping[str, Any]]) -> list[Config]:
    """Complete runs grouped into configurations (repeats together)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        if entry.get("complete") and figure(entry, HEADLINE) is not None:
            groups.setdefault(config_signature(entry), []).append(entry)
    configs = []
    for members in groups.values():
        first = members[0]
        ranks = (first.get("summary") or {}).get("ranks") or []
        gpu_set = tuple(
            sorted(g for r in ranks if isinstance(r, Mapping) for g in r.get("gpus") or ())
        )
        values = tuple(v for e in members if (v := figure(e, HEADLINE)) is not None)
        configs.append(
            Config(params=dict(first.get("params") or {}), gpu_set=gpu_set, throughputs=values)
        )
    configs.sort(
        key=lambda c: json.dumps(
            [c.p("model"), c.p("batch_size"), c.devices, c.p("world_size"), c.layout],
            default=str,
        )
    )
    return configs


def _label(config: Config, keys: Sequence[str]) -> tuple[str, ...]:
    return tuple("-" if config.p(k) is None else str(config.p(k)) for k in keys)


def _samples(configs: Sequence[Config]) -> tuple[str, str | None]:
    # img/s, seq/s for a language model; "samples/s" and a note when the models mix.
    return samples_of(c.p("model") for c in configs) if configs else ("img", None)


def _group_keys(configs: Sequence[Config]) -> list[str]:
    # Site, partition, backend and precision are shown only when they vary, to keep rows short.
    optional = [
        k
        for k in ("site", "partition", "backend", "precision")
        if len({str(c.p(k)) for c in configs}) > 1
    ]
    return optional


# -- tables ---------------------------------------------------------------------------------


def exploration_table(configs: Sequence[Config]) -> Table:
    """Throughput by model × per-device batch (rows) and layout (columns)."""
    keys = [*_group_keys(configs), "model", "batch_size"]
    layouts: list[str] = []
    for config in sorted(configs, key=lambda c: (c.devices, c.layout)):
        if config.layout not in layouts:
            layouts.append(config.layout)
    cells: dict[tuple[str, ...], dict[str, Config]] = {}
    for config in configs:
        cells.setdefault(_label(config, keys), {})[config.layout] = config
    rows = []
    data = []
    for label in sorted(cells, key=lambda t: tuple(x.zfill(12) if x.isdigit() else x for x in t)):
        row = [*label]
        for layout in layouts:
            found = cells[label].get(layout)
            row.append("-" if found is None else found.cell())
            if found is not None:
                data.append(
                    {
                        **dict(zip(keys, label)),
                        "layout": layout,
                        "img_s": found.mean,
                        "repeats": len(found.throughputs),
                        "cv": found.cv,
                    }
                )
        rows.append(tuple(row))
    headers = (*keys, *layouts)
    unit, note = _samples(configs)
    return Table(
        "Exploration: common-window throughput by layout",
        headers,
        tuple(rows),
        tuple(data),
        note or f"throughput in {unit}/s",
    )


def _scaling(configs: Sequence[Config], strong: bool) -> Table:
    base_keys = [*_group_keys(configs), "model"]
    series: dict[tuple[str, ...], list[Config]] = {}
    for config in configs:
        batch = config.p("batch_size")
        if not isinstance(batch, int):
            continue
        global_batch = batch * config.devices
        key = (*_label(config, base_keys), str(global_batch if strong else batch))
        series.setdefault(key, []).append(config)
    rows = []
    data = []
    batch_name = "global_batch" if strong else "batch_size"
    for key in sorted(series):
        members = sorted(series[key], key=lambda c: (c.devices, -c.mean))
        if len({c.devices for c in members}) < 2:
            continue
        n0 = members[0].devices
        # The baseline is the best layout at the smallest device count.
        base = max((c for c in members if c.devices == n0), key=lambda c: c.mean)

        def t_ms(c: Config) -> float:
            return c.devices * int(c.p("batch_size")) * 1000.0 / c.mean

        t0 = t_ms(base)
        for config in members:
            n = config.devices
            t_n = t_ms(config)
            efficiency = 100.0 * n0 * t0 / (n * t_n) if strong else 100.0 * t0 / t_n
            rows.append(
                (
                    *key,
                    str(n),
                    str(config.p("world_size")),
                    config.layout,
                    config.cell(),
                    f"{t_n:.2f}",
                    f"{efficiency:.1f}%",
                )
            )
            data.append(
                {
                    **dict(zip([*base_keys, batch_name], key)),
                    "devices": n,
                    "ranks": config.p("world_size"),
                    "nodes": config.p("nodes"),
                    "layout": config.layout,
                    "img_s": config.mean,
                    "t_ms": t_n,
                    "efficiency_pct": efficiency,
                }
            )
    title = (
        "Strong scaling (global batch fixed): efficiency 100·t1/(N·tN)"
        if strong
        else "Weak scaling (per-device batch fixed): efficiency 100·t1/tN"
    )
    unit, note = _samples(configs)
    headers = (*base_keys, batch_name, "N", "ranks", "layout", f"{unit}/s", "t_ms", "efficiency")
    return Table(title, headers, tuple(rows), tuple(data), note)


def strong_scaling_table(configs: Sequence[Config]) -> Table:
    """Series of equal global batch over growing device counts."""
    return _scaling(configs, strong=True)


def weak_scaling_table(configs: Sequence[Config]) -> Table:
    """Series of equal per-device batch over growing device counts."""
    return _scaling(configs, strong=False)


def multiprocess_table(configs: Sequence[Config]) -> Table:
    """Multi-process runs against the single-process run on the same GPUs."""
    keys = [*_group_keys(configs), "model", "batch_size"]
    groups: dict[tuple[Any, ...], list[Config]] = {}
    for config in configs:
        if config.device_kind != "GPU":
            continue
        key = (*_label(config, keys), str(config.p("nodes")), config.gpu_set)
        groups.setdefault(key, []).append(config)
    rows: list[tuple[str, ...]] = []
    data = []
    for key in sorted(groups, key=str):
        members = groups[key]
        singles = [c for c in members if c.p("world_size") == 1]
        multis = [
            c for c in members if isinstance(c.p("world_size"), int) and c.p("world_size") > 1
        ]
        if not singles or not multis:
            continue
        single = max(singles, key=lambda c: c.mean)
        gpus = ",".join(map(str, key[-1]))
        for multi in sorted(multis, key=lambda c: (c.p("world_size"), c.layout)):
            ratio = multi.mean / single.mean
            rows.append(
                (
                    *(str(k) for k in key[: len(keys)]),
                    gpus,
                    single.cell(),
                    str(multi.p("world_size")),
                    multi.layout,
                    multi.cell(),
                    f"{ratio:.3f}",
                )
            )
            data.append(
                {
                    **dict(zip(keys, key)),
                    "gpus": list(key[-1]),
                    "single_img_s": single.mean,
                    "ranks": multi.p("world_size"),
                    "layout": multi.layout,
                    "multi_img_s": multi.mean,
                    "ratio": ratio,
                }
            )
    unit, note = _samples(configs)
    headers = (
        *keys,
        "gpus",
        f"1 process {unit}/s",
        "ranks",
        "layout",
        f"multi {unit}/s",
        "multi/single",
    )
    return Table(
        "Multi-process against single-process on the same GPUs",
        headers,
        tuple(rows),
        tuple(data),
        note,
    )


def report_tables(entries: Sequence[Mapping[str, Any]]) -> list[Table]:
    """Every cross-run table for the given entries."""
    configs = configurations(entries)
    return [
        exploration_table(configs),
        weak_scaling_table(configs),
        strong_scaling_table(configs),
        multiprocess_table(configs),
    ]


# -- plots ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Chart:
    """What one scaling chart shows: one model's runs on one kind of node of one site."""

    site: str
    partition: str
    model: str
    backend: str
    precision: str
    device_kind: str

    @property
    def title(self) -> str:
        site = f"site {self.site}" if self.site != "-" else "site not recorded"
        where = site + (f", node type {self.partition}" if self.partition != "-" else "")
        return f"{self.model} ({self.backend}, {self.precision}) on {self.devices} — {where}"

    @property
    def devices(self) -> str:
        """The devices' name for an axis: GPUs, or CPU devices (a CPU backend's core groups)."""
        return "GPUs" if self.device_kind == "GPU" else "CPU devices (groups of a rank's cores)"

    @property
    def file_name(self) -> str:
        parts = [self.site, self.partition, self.model, self.backend, self.precision]
        if self.device_kind != "GPU" and self.backend != "cpu":
            parts.append("cpu")
        return "scaling_" + "_".join(_safe(p) for p in parts if p != "-") + ".png"


def scaling_charts(configs: Iterable[Config]) -> dict[Chart, list[Config]]:
    """Configurations by chart: sites, node types and device kinds are never mixed."""
    charts: dict[Chart, list[Config]] = {}
    for config in configs:
        site, partition, model, backend, precision = _label(
            config, ("site", "partition", "model", "backend", "precision")
        )
        key = Chart(site, partition, model, backend, precision, config.device_kind)
        charts.setdefault(key, []).append(config)
    return dict(sorted(charts.items()))


def plot_scaling(entries: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """PNG plots of throughput against devices and against ranks, one pair per chart."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for chart, members in scaling_charts(configurations(entries)).items():
        fig = draw_scaling(chart, members)
        path = out_dir / chart.file_name
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written


def draw_scaling(chart: Chart, members: Sequence[Config]) -> Any:
    """The figure of one chart: throughput against devices beside throughput against ranks."""
    plt = _pyplot()
    rate = sample_unit(chart.model).rate
    fig, (ax_dev, ax_rank) = plt.subplots(1, 2, figsize=(12, 4.8))
    _plot_lines(ax_dev, members, x="devices", lines_of=_mode_labels)
    ax_dev.set_xlabel(chart.devices)
    ax_dev.set_title("throughput against devices")
    _plot_lines(ax_rank, members, x="world_size", lines_of=_rank_labels)
    ax_rank.set_xlabel("ranks (processes)")
    ax_rank.set_title("throughput against ranks")
    for ax in (ax_dev, ax_rank):
        ax.set_ylabel(f"common-window throughput ({rate})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(chart.title)
    fig.tight_layout()
    return fig


def _pyplot() -> Any:
    # Imported here so that nothing else depends on matplotlib (the ``plot`` extra).
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from hpcbench.errors import UsageError
        from hpcbench.resources import install_hint

        raise UsageError(f"--plot needs matplotlib: {install_hint('plot')}") from exc
    return plt


def _mode_labels(config: Config) -> list[str]:
    """Lines a point of the devices plot belongs to (one device in one process is on both)."""
    batch = config.p("batch_size")
    per_rank = config.devices_per_rank
    noun = "GPU" if config.device_kind == "GPU" else "device"
    labels = []
    if config.p("world_size") == 1:
        labels.append(f"B={batch}, 1 process")
    if per_rank and (config.p("world_size") != 1 or per_rank == 1):
        labels.append(f"B={batch}, {per_rank} {noun}{'s' if per_rank > 1 else ''}/rank")
    return labels or [f"B={batch}, mixed {noun}s/rank"]


def _rank_labels(config: Config) -> list[str]:
    n = config.devices
    nodes = config.p("nodes")
    on_nodes = f" on {nodes} nodes" if isinstance(nodes, int) and nodes > 1 else ""
    return [f"B={config.p('batch_size')}, {n} device{'s' if n > 1 else ''}{on_nodes}"]


def _plot_lines(ax: Any, configs: Sequence[Config], *, x: str, lines_of: Any) -> None:
    lines: dict[str, dict[int, list[Config]]] = {}
    for config in configs:
        xv = config.devices if x == "devices" else int(config.p("world_size") or 1)
        for label in lines_of(config):
            lines.setdefault(label, {}).setdefault(xv, []).append(config)
    for label, points in sorted(lines.items()):
        xs = sorted(points)
        # Several layouts may share an x (e.g. 2 GPUs as "0,1" or "0,2"): plot the best.
        best = [max(points[v], key=lambda c: c.mean) for v in xs]
        ys = [c.mean for c in best]
        low = [c.mean - min(c.throughputs) for c in best]
        high = [max(c.throughputs) - c.mean for c in best]
        handle = ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
        if x == "devices" and len(xs) > 1:
            # Linear scaling from the line's smallest point, to read efficiency by eye.
            ideal = [ys[0] * v / xs[0] for v in xs]
            ax.plot(xs, ideal, linestyle=":", color=handle[0].get_color(), alpha=0.6)
    ax.set_xticks(sorted({v for p in lines.values() for v in p}))
    ax.set_ylim(bottom=0)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name)
