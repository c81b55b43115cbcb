"""The ``telemetry`` block of a summary: energy, power, clocks and throttling over the window.

Pure functions over the rank files' sampled NVML telemetry (see docs/metrics-format.md, group
``telemetry``). Only the samples inside the common window count, so the figures describe the
interval the headline throughput was measured over. A run without telemetry (CPU backend, no
NVML driver, ``--telemetry-hz 0``) gets ``{"available": false, "reason": ...}`` and no numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpcbench.aggregate import figures
from hpcbench.metrics import RankFile
from hpcbench.telemetry import THROTTLE_BITS


def telemetry_block(
    ranks: Sequence[RankFile],
    window_start_ns: int,
    window_end_ns: int,
    gpus: Mapping[int, Sequence[int] | None] | None = None,
) -> dict[str, Any]:
    """The summary's ``telemetry`` block; ``gpus`` maps a rank to its planned GPUs."""
    window_ns = window_end_ns - window_start_ns
    rows: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for rank_file in ranks:
        columns = rank_file.telemetry
        if columns is None:
            reason = rank_file.telemetry_attrs.get("disabled") or "no telemetry group"
            missing.append({"rank": rank_file.rank, "reason": str(reason)})
            continue
        planned = (gpus or {}).get(rank_file.rank) or ()
        for device in sorted({int(d) for d in np.unique(columns["device"])}):
            rows.append(
                device_telemetry(
                    rank_file, columns, device, window_start_ns, window_end_ns,
                    gpu=planned[device] if device < len(planned) else None,
                )
            )  # fmt: skip
    measured = [row for row in rows if row["samples"]]
    if window_ns <= 0 or not measured:
        reasons = [f"rank {m['rank']}: {m['reason']}" for m in missing]
        if rows and not measured:
            reasons.append("no telemetry sample inside the common window")
        if window_ns <= 0:
            reasons.append("the common window is empty")
        return {
            "available": False,
            "reason": "; ".join(_dedupe(reasons)) or "no telemetry",
            "devices": rows,
            "missing": missing,
        }
    return {
        "available": True,
        "reason": None,
        "window_s": window_ns / figures.NS_PER_S,
        "total": _total(measured, window_ns),
        "devices": rows,
        "missing": missing,
    }


def device_telemetry(
    rank_file: RankFile,
    columns: Mapping[str, np.ndarray],
    device: int,
    window_start_ns: int,
    window_end_ns: int,
    gpu: int | None = None,
) -> dict[str, Any]:
    """One device's figures over [window_start_ns, window_end_ns]."""
    mine = np.asarray(columns["device"]) == device
    t_ns = np.asarray(columns["t_ns"], dtype=np.int64)[mine]
    order = np.argsort(t_ns, kind="stable")
    t_ns = t_ns[order]

    def column(name: str, dtype: Any = np.float64) -> np.ndarray:
        if name not in columns:
            return np.full(t_ns.shape[0], np.nan, dtype=dtype)
        return np.asarray(columns[name])[mine][order].astype(dtype)

    inside = (t_ns >= window_start_ns) & (t_ns <= window_end_ns)
    power = column("power_w")
    timed = rank_file.timed
    on_device = timed.device == device
    images = figures.images_in_window(
        timed.t_start_ns[on_device], timed.t_end_ns[on_device], timed.images[on_device],
        window_start_ns, window_end_ns,
    )  # fmt: skip
    energy_j, source = window_energy_j(
        t_ns, column("energy_j"), power, window_start_ns, window_end_ns
    )
    masks = column("throttle_reasons", np.uint64)[inside]
    known = column("throttle_known", bool)[inside] if "throttle_known" in columns else None
    # Mean power over the window is its energy over its length, as in the total (so devices add
    # up to it). The mean of the power samples is only the fallback: NVML's power reading is
    # itself an average over the last second or so, which lags the load (on an H200 the samples
    # averaged 659 W where the energy counter gave 683 W over the same window).
    window_s = (window_end_ns - window_start_ns) / figures.NS_PER_S
    if energy_j is not None and window_s > 0:
        mean_power_w: float | None = energy_j / window_s
    else:
        mean_power_w = _stat(np.nanmean, power[inside])
    return {
        "rank": rank_file.rank,
        "device": device,
        "gpu": gpu,
        "samples": int(inside.sum()),
        "energy_j": energy_j,
        "energy_source": source,
        "images": images,
        "images_per_j": images / energy_j if energy_j else None,
        "mean_power_w": mean_power_w,
        "max_power_w": _stat(np.nanmax, power[inside]),
        "median_sm_clock_mhz": _stat(np.nanmedian, column("sm_clock_mhz")[inside]),
        "max_temperature_c": _stat(np.nanmax, column("temperature_c")[inside]),
        "throttle_reasons": throttle_shares(masks, known),
    }


def window_energy_j(
    t_ns: np.ndarray,
    energy_j: np.ndarray,
    power_w: np.ndarray,
    window_start_ns: int,
    window_end_ns: int,
) -> tuple[float | None, str | None]:
    """Energy spent over the window and how it was found (``counter`` or ``power_integral``).

    From the energy counter: its values interpolated at the window's edges, differenced; where
    the samples cover only part of the window, that part's energy scaled to the whole. Without
    a counter (NaN), the trapezoid integral of power. (None, None) without two usable samples.

    >>> t = np.array([0, 10**9, 2 * 10**9, 3 * 10**9])
    >>> window_energy_j(t, np.array([100.0, 200.0, 300.0, 400.0]), np.full(4, 100.0),
    ...                 5 * 10**8, 25 * 10**8)
    (200.0, 'counter')
    >>> window_energy_j(t, np.full(4, np.nan), np.full(4, 50.0), 0, 3 * 10**9)
    (150.0, 'power_integral')
    """
    window_ns = window_end_ns - window_start_ns
    if window_ns <= 0:
        return None, None
    for values, source in ((energy_j, "counter"), (power_w, "power_integral")):
        ok = np.isfinite(values)
        t, v = t_ns[ok], values[ok].astype(np.float64)
        if t.shape[0] < 2:
            continue
        lo, hi = max(window_start_ns, int(t[0])), min(window_end_ns, int(t[-1]))
        if hi <= lo:
            continue
        # Relative float seconds: epoch nanoseconds do not fit a float64 exactly.
        rel = (t - lo) / figures.NS_PER_S
        span_s = (hi - lo) / figures.NS_PER_S
        if source == "counter":
            spent = float(np.interp(span_s, rel, v) - np.interp(0.0, rel, v))
        else:
            grid = np.concatenate(([0.0], rel[(rel > 0) & (rel < span_s)], [span_s]))
            watts = np.interp(grid, rel, v)
            spent = float(np.sum((watts[1:] + watts[:-1]) / 2 * np.diff(grid)))
        return spent * window_ns / (hi - lo), source
    return None, None


def throttle_shares(masks: np.ndarray, known: np.ndarray | None = None) -> dict[str, float]:
    """Share of the samples (where the mask is known) during which each reason was set.

    >>> throttle_shares(np.array([0x4, 0x4, 0x0, 0x44], dtype=np.uint64))
    {'sw_power_cap': 0.75, 'hw_thermal_slowdown': 0.25}
    """
    masks = np.asarray(masks, dtype=np.uint64)
    if known is not None:
        masks = masks[np.asarray(known, dtype=bool)]
    if masks.shape[0] == 0:
        return {}
    shares = {}
    for bit, name in sorted(THROTTLE_BITS.items()):
        held = int(np.count_nonzero(masks & np.uint64(bit)))
        if held:
            shares[name] = held / masks.shape[0]
    return shares


def _total(rows: Sequence[Mapping[str, Any]], window_ns: int) -> dict[str, Any]:
    energies = [row["energy_j"] for row in rows]
    energy = float(sum(energies)) if all(e is not None for e in energies) else None
    images = float(sum(row["images"] for row in rows))
    samples = sum(row["samples"] for row in rows)
    shares: dict[str, float] = {}
    for row in rows:
        for name, share in row["throttle_reasons"].items():
            shares[name] = shares.get(name, 0.0) + share * row["samples"] / samples
    clocks = [row["median_sm_clock_mhz"] for row in rows if row["median_sm_clock_mhz"]]
    peaks = [row["max_power_w"] for row in rows if row["max_power_w"] is not None]
    return {
        "devices": len(rows),
        "samples": samples,
        "energy_j": energy,
        "images": images,
        "images_per_j": images / energy if energy else None,
        # All devices together: the energy over the window's length.
        "mean_power_w": energy * figures.NS_PER_S / window_ns if energy is not None else None,
        "max_device_power_w": max(peaks) if peaks else None,
        "median_sm_clock_mhz": float(np.median(clocks)) if clocks else None,
        "throttle_reasons": dict(sorted(shares.items())),
    }


def _stat(function: Any, values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(function(finite)) if finite.shape[0] else None


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
