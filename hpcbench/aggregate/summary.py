"""Build the run summary (the ``summary.json`` contract) from loaded rank files, and print it.

The keys named in issue 5 are a contract other tools read (archive, checks, reports):
``throughput.common_window_img_s``, ``throughput.sum_own_img_s``,
``throughput.dlbs_adjusted_img_s`` (null when undefined) with ``throughput.dlbs_adjusted_reason``,
``throughput.dlbs_effective_sum_img_s``, ``window.start_ns``, ``window.end_ns``,
``skew.start_s``, ``latency_ms.{p50,p90,p99,max}``, ``complete`` and
``ranks: [{rank, gpus, images, own_img_s, t_begin_ns, t_finish_ns}]``, plus the ``run`` block
and per-rank ``cpus``, ``cpus_actual``, ``gpus``, ``gpus_visible``. Other keys add detail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcbench.aggregate import figures
from hpcbench.aggregate.load import LoadedRun
from hpcbench.aggregate.telemetry import telemetry_block
from hpcbench.aggregate.validity import Rules, format_verdict, judge, rules_named
from hpcbench.cpulist import format_cpulist
from hpcbench.errors import MetricsError
from hpcbench.metrics import RankFile
from hpcbench.text import format_figure, noun, plural
from hpcbench.units import IMAGES, SampleUnit, summary_unit

SUMMARY_SCHEMA = "hpcbench.summary"
SUMMARY_SCHEMA_VERSION = 1
START_BARRIER = "start"
END_BARRIER = "end"


def summarize(
    run: LoadedRun,
    *,
    dlbs_trim: int = 50,
    reference: Mapping[str, Any] | None = None,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """The summary of a loaded run; ``reference`` is a single-rank run's summary (or None).

    ``rules`` judge its validity (default: the rules in the run's spec, else ``default``).
    """
    if dlbs_trim < 0:
        raise MetricsError(f"dlbs trim must be non-negative, got {dlbs_trim}")
    ranks = run.ranks
    begins = [int(r.t_begin_ns) for r in ranks if r.t_begin_ns is not None]
    finishes = [int(r.t_finish_ns) for r in ranks if r.t_finish_ns is not None]
    window_start_ns, window_end_ns = figures.common_window(begins, finishes)
    window_ns = window_end_ns - window_start_ns

    per_rank = [_rank_figures(run, r, window_start_ns, window_end_ns) for r in ranks]
    rank_rows = [p.row for p in per_rank]
    window_images_total = sum((p.window_images for p in per_rank), 0.0)
    common_img_s = figures.rate_img_s(window_images_total, window_ns)
    total_devices = sum(p.num_devices for p in per_rank)

    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "complete": run.complete,
        "excluded_ranks": [{"rank": r, "reason": why} for r, why in run.excluded],
        "run": run_block(run),
        "throughput": _throughput_block(per_rank, common_img_s, window_ns, dlbs_trim),
        "window": {
            "start_ns": window_start_ns,
            "end_ns": window_end_ns,
            "length_s": window_ns / figures.NS_PER_S,
            "images": window_images_total,
        },
        "images": int(sum(row["images"] for row in rank_rows)),
        "devices": total_devices,
        "skew": _skew_block(rank_rows),
        # Each rank's latencies were sorted in place by _rank_figures.
        "latency_ms": figures.pooled_latency_ms([p.latency_ns for p in per_rank]),
        "efficiency": _efficiency(common_img_s, run.world_size, reference),
        "ranks": rank_rows,
    }
    summary["telemetry"] = telemetry_block(
        ranks, window_start_ns, window_end_ns, {row["rank"]: row["gpus"] for row in rank_rows}
    )
    summary["validity"] = judge(run, summary, rules or rules_named(_spec_rules(run)))
    return summary


@dataclass(slots=True)
class _RankFigures:
    """One rank's summary row and what the run-wide figures need from it."""

    row: dict[str, Any]
    window_images: float
    num_devices: int
    batch_size: int | None
    iterations_ms: np.ndarray  # DLBS iteration times
    latency_ns: np.ndarray  # sorted in place


def _rank_figures(
    run: LoadedRun, rank_file: RankFile, window_start_ns: int, window_end_ns: int
) -> _RankFigures:
    num_devices = _num_devices(rank_file, run.plan)
    batch_size = _batch_size(rank_file)
    timed = rank_file.timed
    # load_run checked that both bounds exist.
    t_begin_ns, t_finish_ns = int(rank_file.t_begin_ns or 0), int(rank_file.t_finish_ns or 0)
    duration_ns = t_finish_ns - t_begin_ns
    images = int(timed.images.sum(dtype=np.int64))
    window_images = figures.images_in_window(
        timed.t_start_ns, timed.t_end_ns, timed.images, window_start_ns, window_end_ns
    )
    latency_ns = timed.t_end_ns - timed.t_start_ns
    rank_latency = figures.latency_ms(latency_ns, in_place=True)
    iterations = figures.dlbs_iteration_times_ms(timed.t_end_ns, t_begin_ns, num_devices)

    start = _barrier(rank_file, START_BARRIER, first=True)
    end = _barrier(rank_file, END_BARRIER, first=False)
    effective = None
    if start is not None and end is not None:
        effective = figures.rate_img_s(images, end[1] - start[0])

    placement = _placement(rank_file, run.plan)
    binding = rank_file.json_attr("binding_json") or {}
    gpus = [int(g) for g in placement.get("gpus", [])] if placement else None
    row = {
        "rank": rank_file.rank,
        "host": rank_file.attrs.get("host"),
        "node": rank_file.attrs.get("node", placement.get("node") if placement else None),
        "local_rank": rank_file.attrs.get(
            "local_rank", placement.get("local_rank") if placement else None
        ),
        "gpus": gpus,
        "gpus_visible": binding.get("cuda_visible_devices"),
        "cpus": [int(c) for c in placement.get("cpus", [])] if placement else None,
        "cpus_actual": [int(c) for c in binding["cpus"]] if "cpus" in binding else None,
        "binding_mismatches": list(binding.get("mismatches", [])),
        "gpu_identity": binding.get("gpu_identity"),
        "num_devices": num_devices,
        "batch_size": batch_size,
        "batches": len(timed),
        "images": images,
        "own_img_s": figures.rate_img_s(images, duration_ns),
        "window_images": window_images,
        "window_img_s": figures.rate_img_s(window_images, window_end_ns - window_start_ns),
        "dlbs_effective_img_s": effective,
        "dlbs_iterations": int(iterations.shape[0]),
        "t_begin_ns": rank_file.t_begin_ns,
        "t_finish_ns": rank_file.t_finish_ns,
        "start_barrier_ns": _barrier_json(start),
        "end_barrier_ns": _barrier_json(end),
        "latency_ms": rank_latency,
        "devices": _device_rows(rank_file, num_devices, gpus, duration_ns),
    }
    return _RankFigures(row, window_images, num_devices, batch_size, iterations, latency_ns)


def _throughput_block(
    per_rank: Sequence[_RankFigures], common_img_s: float | None, window_ns: int, dlbs_trim: int
) -> dict[str, Any]:
    """The ``throughput`` block: the headline, the sum of own rates and the DLBS figures."""
    adjusted = figures.dlbs_adjusted(
        [p.iterations_ms for p in per_rank],
        [p.num_devices for p in per_rank],
        [p.batch_size for p in per_rank],
        dlbs_trim,
        [p.row["rank"] for p in per_rank],
    )
    effective_missing = [p.row["rank"] for p in per_rank if p.row["dlbs_effective_img_s"] is None]
    effective_sum = None
    effective_reason = None
    if effective_missing:
        effective_reason = (
            f"{noun(len(effective_missing), 'rank')} {_short_list(effective_missing)} recorded no "
            f"'{START_BARRIER}'/"
            f"'{END_BARRIER}' barrier events"
        )
    else:
        effective_sum = float(sum(p.row["dlbs_effective_img_s"] for p in per_rank))
    dlbs_candidates = [v for v in (adjusted.img_s, effective_sum) if v is not None]
    window_reason = None
    if common_img_s is None:
        window_reason = (
            "the ranks' timed phases do not overlap: a rank finished "
            f"{-window_ns / figures.NS_PER_S:.3f} s before the last one began"
        )
    own_values = [p.row["own_img_s"] for p in per_rank]
    total_devices = sum(p.num_devices for p in per_rank)
    return {
        "common_window_img_s": common_img_s,
        "common_window_reason": window_reason,
        "per_device_img_s": (
            common_img_s / total_devices if common_img_s and total_devices else None
        ),
        "sum_own_img_s": float(sum(v for v in own_values if v is not None)),
        "dlbs_adjusted_img_s": adjusted.img_s,
        "dlbs_adjusted_reason": adjusted.reason,
        "dlbs_trim": dlbs_trim,
        "dlbs_mean_iteration_ms": adjusted.mean_iteration_ms,
        "dlbs_effective_sum_img_s": effective_sum,
        "dlbs_effective_reason": effective_reason,
        "dlbs_reported_img_s": max(dlbs_candidates) if dlbs_candidates else None,
    }


def _skew_block(rank_rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Spreads of the barrier releases and of the timed phases' bounds.

    ``begin_s`` equals ``start_s`` by construction (a rank's timed phase begins at its start
    barrier's release); both stay because summary.json is read by archives and reference files
    that name either (dropping one would need a schema version bump; docs/concepts.md says so).
    """
    starts = [row["start_barrier_ns"] for row in rank_rows]
    ends = [row["end_barrier_ns"] for row in rank_rows]
    return {
        "start_s": figures.spread_s(
            [s["release"] if s else None for s in starts]
            if all(starts)
            else [row["t_begin_ns"] for row in rank_rows]
        ),
        "end_s": figures.spread_s([e["release"] if e else None for e in ends]),
        "begin_s": figures.spread_s([row["t_begin_ns"] for row in rank_rows]),
        "finish_s": figures.spread_s([row["t_finish_ns"] for row in rank_rows]),
    }


def _spec_rules(run: LoadedRun) -> str | None:
    spec = run.spec_json or run.ranks[0].json_attr("config_json") or {}
    value = spec.get("validity")
    return value if isinstance(value, str) else None


def _num_devices(rank_file: RankFile, plan: Mapping[str, Any] | None) -> int:
    value = rank_file.attrs.get("num_devices")
    if value is not None:
        return int(value)
    placement = _placement(rank_file, plan)
    if placement and placement.get("gpus"):
        return len(placement["gpus"])
    devices = rank_file.timed.device
    return int(devices.max()) + 1 if len(devices) else 1


def _batch_size(rank_file: RankFile) -> int | None:
    value = rank_file.attrs.get("batch_size")
    if value is not None:
        return int(value)
    sizes = np.unique(rank_file.timed.images)
    return int(sizes[0]) if sizes.shape[0] == 1 else None


def _placement(rank_file: RankFile, plan: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A rank's placement: the one its file recorded (attribute ``plan_json``), else its entry
    in the run's plan.json document."""
    recorded = rank_file.json_attr("plan_json")
    if recorded:
        return recorded
    if not plan:
        return None
    rank = rank_file.rank
    for entry in plan.get("ranks", []):
        if isinstance(entry, dict) and entry.get("rank") == rank:
            return entry
    return None


def _barrier(rank_file: RankFile, name: str, *, first: bool) -> tuple[int, int] | None:
    events = [(arrive, release) for n, arrive, release in rank_file.barriers if n == name]
    if not events:
        return None
    return events[0] if first else events[-1]


def _barrier_json(event: tuple[int, int] | None) -> dict[str, int] | None:
    return None if event is None else {"arrive": event[0], "release": event[1]}


def _device_rows(
    rank_file: RankFile, num_devices: int, gpus: Sequence[int] | None, duration_ns: int
) -> list[dict[str, Any]]:
    timed = rank_file.timed
    count = max(num_devices, int(timed.device.max()) + 1 if len(timed) else 0)
    batches = np.bincount(timed.device, minlength=count)
    if len(timed) and int(timed.images.min()) == int(timed.images.max()):
        # Every batch full (the usual case): counting is 4× faster than a weighted bincount.
        per_device = batches * int(timed.images[0])
    else:
        per_device = np.bincount(timed.device, weights=timed.images, minlength=count)
    return [
        {
            "device": device,
            "gpu": gpus[device] if gpus and device < len(gpus) else None,
            "batches": int(batches[device]),
            "images": int(per_device[device]),
            "own_img_s": figures.rate_img_s(float(per_device[device]), duration_ns),
        }
        for device in range(count)
    ]


def _efficiency(
    common_img_s: float | None, world_size: int, reference: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    if reference is None:
        return None
    ref_img_s = reference["throughput"]["common_window_img_s"]
    ref_run = reference.get("run", {})
    ideal = world_size * ref_img_s if ref_img_s else None
    return {
        "reference_run_id": ref_run.get("run_id"),
        "reference_img_s": ref_img_s,
        "ideal_img_s": ideal,
        "value": common_img_s / ideal if common_img_s is not None and ideal else None,
    }


def _short_list(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return shown + (f" and {len(values) - 8} more" if len(values) > 8 else "")


def run_block(run: LoadedRun) -> dict[str, Any]:
    """The ``run`` block: what ran, where and how it was laid out."""
    first = run.ranks[0]
    spec = run.spec_json or first.json_attr("config_json") or {}
    attrs = first.attrs
    run_json = run.run_json or {}

    def pick(key: str) -> Any:
        value = attrs.get(key)
        return spec.get(key) if value is None else value

    placements = []
    for rank_file in run.ranks:
        placements.append((rank_file, _placement(rank_file, run.plan) or {}))
    nodes_seen = {p.get("node", rank_file.attrs.get("node")) for rank_file, p in placements}
    first_node = min((n for n in nodes_seen if n is not None), default=None)
    node_ranks = [
        (r, p)
        for r, p in placements
        if first_node is None or p.get("node", r.attrs.get("node")) == first_node
    ]
    gpu_layout = ";".join(",".join(str(g) for g in p.get("gpus", [])) for _, p in node_ranks)
    cpu_layout = ";".join(format_cpulist(p.get("cpus", [])) for _, p in node_ranks)
    has_gpus = any(p.get("gpus") for _, p in node_ranks)
    slurm = next(
        (s for s in (r.json_attr("slurm_json") for r in run.ranks) if s),
        None,
    )
    plan_nodes = (run.plan or {}).get("nodes")
    return {
        "run_id": run_json.get("run_id", attrs.get("run_id")),
        "created": run_json.get("created"),
        "backend": pick("backend"),
        "model": pick("model"),
        "batch_size": pick("batch_size"),
        "precision": pick("precision"),
        "world_size": run.world_size,
        "nodes": int(plan_nodes) if plan_nodes else max(len(nodes_seen - {None}), 1),
        "layout": gpu_layout if has_gpus else cpu_layout,
        "gpu_layout": gpu_layout if has_gpus else None,
        "cpu_layout": cpu_layout or None,
        "hosts": sorted({str(r.attrs.get("host")) for r in run.ranks if r.attrs.get("host")}),
        "slurm": slurm,
        "hpcbench_version": run_json.get("hpcbench_version", run_json.get("version")),
        # The site's name: (runs recorded before it became the identity kept a path there).
        "site": run_json.get("site") if "site_config" in run_json else None,
        "partition": run_json.get("node_type"),
    }


# ------------------------------------------------------------------------------ printing
def format_summary(summary: Mapping[str, Any]) -> str:
    """A readable, multi-line rendering of a summary for a terminal.

    Figures are in the unit of the model's samples (images, or sequences for a language model)
    and end with one line per rank whose binding differed from the plan.
    """
    run = summary.get("run", {})
    tp = summary["throughput"]
    window = summary["window"]
    skew = summary["skew"]
    lat = summary["latency_ms"]
    unit = summary_unit(summary)
    rate = unit.rate
    world_size = run.get("world_size")
    ranks = plural(world_size, "rank") if isinstance(world_size, int) else "? ranks"
    nodes = plural(run["nodes"], "node") if isinstance(run.get("nodes"), int) else "? nodes"
    lines = [
        f"run {run.get('run_id')}: {run.get('backend')}/{run.get('model')} "
        f"batch {run.get('batch_size')} {run.get('precision')}, {ranks} on {nodes}, "
        f"layout {run.get('layout') or '-'}",
    ]
    if not summary.get("complete", True):
        lines.append(
            "INCOMPLETE: aggregated without "
            + "; ".join(e["reason"] for e in summary.get("excluded_ranks", []))
        )
    if tp["common_window_img_s"] is None:
        lines.append(f"{'common-window throughput':<26}undefined ({tp['common_window_reason']})")
    else:
        lines.append(
            f"{'common-window throughput':<26}{format_figure(tp['common_window_img_s'])} {rate} "
            f"({format_figure(tp['per_device_img_s'])} per device) over {window['length_s']:.3f} s"
        )
    lines.append(f"{'sum of own throughputs':<26}{format_figure(tp['sum_own_img_s'])} {rate}")
    adjusted = (
        f"{format_figure(tp['dlbs_adjusted_img_s'])} {rate}"
        if tp["dlbs_adjusted_img_s"] is not None
        else f"undefined ({tp['dlbs_adjusted_reason']})"
    )
    lines.append(f"{'DLBS adjusted (N=' + str(tp['dlbs_trim']) + ')':<26}{adjusted}")
    effective = (
        f"{format_figure(tp['dlbs_effective_sum_img_s'])} {rate}"
        if tp["dlbs_effective_sum_img_s"] is not None
        else f"undefined ({tp['dlbs_effective_reason']})"
    )
    lines.append(f"{'DLBS sum of effective':<26}{effective}")
    if tp.get("dlbs_reported_img_s") is not None:
        lines.append(
            f"{'DLBS reported':<26}{format_figure(tp['dlbs_reported_img_s'])} {rate} "
            "(max of adjusted and sum of effective)"
        )
    lines.append(
        f"skew: start {_secs(skew['start_s'])}, end {_secs(skew['end_s'])}, "
        f"timed-phase ends {_secs(skew['finish_s'])}"
    )
    if lat["p50"] is not None:
        lines.append(
            f"batch latency ms: p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  "
            f"p99 {lat['p99']:.3f}  max {lat['max']:.3f}"
        )
    eff = summary.get("efficiency")
    if eff:
        value = "undefined" if eff["value"] is None else f"{100 * eff['value']:.1f} %"
        lines.append(
            f"efficiency vs {world_size} × single-rank "
            f"{format_figure(eff['reference_img_s'])} {rate}: {value}"
        )
    lines.extend(format_telemetry(summary.get("telemetry"), unit))
    any_gpus = any(row.get("gpus") for row in summary["ranks"])
    lines.append(
        f"rank  host          {'gpus' if any_gpus else 'devices':<8}  {unit.plural:>10}  "
        f"{'own ' + rate:>13}  {'effective ' + rate:>15}"
    )
    for row in summary["ranks"]:
        gpus = ",".join(str(g) for g in row["gpus"]) if row.get("gpus") else str(row["num_devices"])
        lines.append(
            f"{row['rank']:>4}  {str(row.get('host') or '-')[:12]:<12}  {gpus:<8}  "
            f"{row['images']:>10}  {format_figure(row['own_img_s']):>13}  "
            f"{format_figure(row['dlbs_effective_img_s']):>15}"
        )
    lines.extend(binding_lines(summary))
    lines.extend(format_verdict(summary.get("validity")))
    return "\n".join(lines)


def binding_lines(summary: Mapping[str, Any]) -> list[str]:
    """One line per rank whose actual binding differed from the plan, saying what it got.

    >>> binding_lines({"ranks": [{"rank": 0, "binding_mismatches": []}, {"rank": 1,
    ...     "binding_mismatches": ["memory: planned 1, got 0", "cpus: planned 2, got 3"]}]})
    ['rank 1: binding differs from the plan: memory: planned 1, got 0; cpus: planned 2, got 3']
    """
    return [
        f"rank {row['rank']}: binding differs from the plan: "
        + "; ".join(row["binding_mismatches"])
        for row in summary.get("ranks", [])
        if row.get("binding_mismatches")
    ]


def format_telemetry(telemetry: Mapping[str, Any] | None, unit: SampleUnit = IMAGES) -> list[str]:
    """The telemetry block in a line or two (nothing for a summary written without it)."""
    if not telemetry:
        return []
    if not telemetry.get("available"):
        return [f"{'telemetry':<26}none ({telemetry.get('reason')})"]
    total = telemetry["total"]
    energy = total["energy_j"]
    per_j = total["images_per_j"]
    clock = total["median_sm_clock_mhz"]
    per_joule = unit.rate.removesuffix("/s") + "/J"
    mean_w = total["mean_power_w"]
    line = (
        f"{'telemetry (window)':<26}"
        + (
            f"{format_figure(energy)} J, {per_j:.2f} {per_joule}, "
            if energy is not None and per_j
            else ""
        )
        + (f"mean {format_figure(mean_w)} W, " if mean_w is not None else "")
        + f"max {format_figure(total['max_device_power_w'])} W per device, "
        + f"median SM clock {format_figure(clock)} MHz"
    )
    reasons = total["throttle_reasons"]
    throttled = ", ".join(f"{name} {100 * share:.0f} %" for name, share in reasons.items())
    return [line, f"{'throttle reasons':<26}{throttled or 'none'} (share of samples)"]


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"


def dumps(summary: Mapping[str, Any]) -> str:
    """The summary as JSON text (stable key order, non-finite numbers as null)."""
    return json.dumps(_finite(summary), indent=2) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
