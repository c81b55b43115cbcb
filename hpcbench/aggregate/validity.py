"""The verdict on a run: is its throughput a number one may publish, and if not, why.

Every check is a pure function of the loaded rank data and the summary built from it, and
returns ``{"name", "passed", "measured", "limit", "why"}``. Two sets of limits: ``default``
(catches a run that measured nothing much, drifted, overshot or ran elsewhere than planned) and
``strict`` (publication grade, modelled on MLPerf LoadGen's Offline scenario: at least 600 s and
24 576 samples). The rules and their sources are explained in docs/concepts.md ("Validity").
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcbench.aggregate import figures
from hpcbench.aggregate.load import LoadedRun
from hpcbench.errors import UsageError
from hpcbench.metrics import clock_step_limit_ns
from hpcbench.text import format_figure, plural
from hpcbench.units import summary_unit

CHECKS = (
    "enough_work",
    "steady_state",
    "duration",
    "synchronised",
    "binding",
    "device_health",
    "complete",
    "clock",
)
# Throttle reasons that mean the GPU slowed itself down (heat, power brake, hardware): the
# measured throughput is not the GPU's.
SLOWDOWN_REASONS = (
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)
POWER_CAP_REASON = "sw_power_cap"
STEADY_WINDOWS = 3


@dataclass(frozen=True, slots=True)
class Rules:
    """The limits of one rule set."""

    name: str
    min_batches_per_device: int
    # MLPerf Offline: min_query_count 24 576 samples and min_duration 600 s (None: not asked).
    min_samples: int | None
    min_timed_s: float | None
    # perf_analyzer: the last three measurement windows agree within 10 %.
    max_steady_ratio: float
    max_duration_overshoot: float
    max_start_skew_share: float
    min_window_cover: float
    power_cap_fails: bool


RULES: dict[str, Rules] = {
    "default": Rules("default", 50, None, None, 1.1, 0.10, 0.01, 0.90, False),
    "strict": Rules("strict", 50, 24_576, 600.0, 1.1, 0.10, 0.01, 0.90, True),
}
RULE_NAMES = tuple(RULES)


def rules_named(name: str | None) -> Rules:
    """The rule set ``name`` (None: ``default``); UsageError naming the valid ones."""
    if name is None:
        return RULES["default"]
    try:
        return RULES[name]
    except KeyError:
        raise UsageError(
            f"validity rules {name!r} unknown; valid: {', '.join(RULE_NAMES)}"
        ) from None


def judge(run: LoadedRun, summary: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """The ``validity`` block: every check of :data:`CHECKS` under ``rules``."""
    checks = [
        enough_work(summary, rules),
        steady_state(run, summary, rules),
        duration(run, summary, rules),
        synchronised(summary, rules),
        binding(summary),
        device_health(summary.get("telemetry"), rules),
        complete(run),
        clock(run),
    ]
    return {
        "valid": all(c["passed"] for c in checks),
        "rules": rules.name,
        "checks": checks,
    }


def _check(name: str, passed: bool, measured: Any, limit: Any, why: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "measured": measured, "limit": limit, "why": why}


# ----------------------------------------------------------------------------- the checks
def enough_work(summary: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """Timed batches per device (and, strict, total samples and timed seconds) are enough."""
    batches = [
        int(device["batches"]) for row in summary["ranks"] for device in row.get("devices", [])
    ]
    fewest = min(batches) if batches else 0
    problems = []
    if fewest < rules.min_batches_per_device:
        problems.append(
            f"{fewest} timed batches on the least-used device < {rules.min_batches_per_device}"
        )
    measured: dict[str, Any] = {"batches_per_device": fewest}
    limit: dict[str, Any] = {"batches_per_device": rules.min_batches_per_device}
    if rules.min_samples is not None:
        samples = int(summary["images"])
        measured["samples"] = samples
        limit["samples"] = rules.min_samples
        if samples < rules.min_samples:
            problems.append(f"{samples} samples < {rules.min_samples}")
    if rules.min_timed_s is not None:
        timed_s = float(summary["window"]["length_s"])
        measured["timed_s"] = timed_s
        limit["timed_s"] = rules.min_timed_s
        if timed_s < rules.min_timed_s:
            problems.append(f"timed phase {timed_s:.1f} s < {rules.min_timed_s:g} s")
    if problems:
        mlperf = len(problems) > (fewest < rules.min_batches_per_device)
        why = "; ".join(problems) + (" (MLPerf Offline minimums)" if mlperf else "")
    else:
        why = f"at least {fewest} timed batches per device" + (
            f", {measured['samples']} samples over {measured['timed_s']:.1f} s"
            if "samples" in measured and "timed_s" in measured
            else ""
        )
    return _check("enough_work", not problems, measured, limit, why)


def slice_images(
    t_start_ns: np.ndarray,
    t_end_ns: np.ndarray,
    images: np.ndarray,
    start_ns: int,
    end_ns: int,
    parts: int = STEADY_WINDOWS,
) -> list[float]:
    """Images completed in each of ``parts`` equal slices of [start_ns, end_ns] (pro-rated).

    >>> slice_images(np.array([0, 10, 20]), np.array([10, 20, 30]), np.array([4, 4, 4]), 0, 30)
    [4.0, 4.0, 4.0]
    """
    edges = np.linspace(start_ns, end_ns, parts + 1).round().astype(np.int64)
    return [
        figures.images_in_window(t_start_ns, t_end_ns, images, int(lo), int(hi))
        for lo, hi in itertools.pairwise(edges)
    ]


def window_rates(
    run: LoadedRun, window_start_ns: int, window_end_ns: int, parts: int = STEADY_WINDOWS
) -> list[float]:
    """Aggregate throughput (img/s) of all ranks in ``parts`` equal slices of the window."""
    per_rank = [
        slice_images(
            r.timed.t_start_ns, r.timed.t_end_ns, r.timed.images,
            window_start_ns, window_end_ns, parts,
        )
        for r in run.ranks
    ]  # fmt: skip
    slice_ns = (window_end_ns - window_start_ns) / parts
    return [figures.rate_img_s(sum(images), slice_ns) or 0.0 for images in zip(*per_rank)]


def steady_ratio(rates: Sequence[float]) -> float | None:
    """max/min of window rates; None when a window completed nothing (no ratio exists).

    >>> steady_ratio([100.0, 105.0, 110.0])
    1.1
    >>> steady_ratio([100.0, 0.0, 100.0]) is None
    True
    """
    if not rates or min(rates) <= 0:
        return None
    return round(max(rates) / min(rates), 12)


def steady_state(run: LoadedRun, summary: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """Three equal slices of the common window agree within ``max_steady_ratio``."""
    window = summary["window"]
    limit = rules.max_steady_ratio
    if window["end_ns"] <= window["start_ns"]:
        return _check("steady_state", False, None, limit, "the common window is empty")
    rates = window_rates(run, int(window["start_ns"]), int(window["end_ns"]))
    ratio = steady_ratio(rates)
    shown = " / ".join(format_figure(rate) for rate in rates)
    unit = summary_unit(summary).rate
    if ratio is None:
        return _check(
            "steady_state", False, None, limit,
            f"a third of the common window completed no batch ({unit} per third: {shown})",
        )  # fmt: skip
    passed = ratio <= limit
    why = f"{unit} per third of the window {shown}: max/min {ratio:.3f}" + (
        f" ≤ {limit:g}" if passed else f" > {limit:g} (still warming up, sliding or unsteady)"
    )
    return _check("steady_state", passed, ratio, limit, why)


def requested_duration_s(run: LoadedRun) -> float | None:
    """The timed-phase length the run asked for (None for a batch-count run)."""
    spec = run.spec_json or run.ranks[0].json_attr("config_json") or {}
    value = spec.get("duration_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def duration(run: LoadedRun, summary: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """No rank's timed phase overshot what was asked by more than ``max_duration_overshoot``.

    The request is the rank's own deadline when it recorded one (``--until-stable`` moves it),
    else the spec's ``duration_s``.
    """
    limit = 1.0 + rules.max_duration_overshoot
    asked = requested_duration_s(run)
    worst: tuple[float, int, float, float] | None = None
    for rank_file, row in zip(run.ranks, summary["ranks"]):
        deadline = rank_file.attrs.get("deadline_ns")
        wanted = asked
        if deadline is not None and row["t_begin_ns"] is not None:
            wanted = (int(deadline) - int(row["t_begin_ns"])) / figures.NS_PER_S
        if wanted is None or wanted <= 0:
            continue
        took = (int(row["t_finish_ns"]) - int(row["t_begin_ns"])) / figures.NS_PER_S
        ratio = took / wanted
        if worst is None or ratio > worst[0]:
            worst = (ratio, int(row["rank"]), took, wanted)
    if worst is None:
        return _check("duration", True, None, limit, "a batch-count run: no duration was asked")
    ratio, rank, took, wanted = worst
    passed = ratio <= limit
    why = f"rank {rank} timed {took:.3f} s for {wanted:.3f} s asked (×{ratio:.3f})" + (
        ""
        if passed
        else f", more than {100 * rules.max_duration_overshoot:g} % over: "
        "batches too long for the duration"
    )
    return _check("duration", passed, round(ratio, 6), limit, why)


def synchronised(summary: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """Start skew small against the window; the window covers most of every rank's phase."""
    window_s = float(summary["window"]["length_s"])
    skew_s = summary["skew"].get("start_s") or 0.0
    limit = {"start_skew_share": rules.max_start_skew_share, "window_cover": rules.min_window_cover}
    if window_s <= 0:
        return _check("synchronised", False, None, limit, "the common window is empty")
    covers = []
    for row in summary["ranks"]:
        phase_s = (int(row["t_finish_ns"]) - int(row["t_begin_ns"])) / figures.NS_PER_S
        covers.append((window_s / phase_s if phase_s > 0 else 1.0, int(row["rank"])))
    cover, rank = min(covers)
    skew_share = float(skew_s) / window_s
    measured = {"start_skew_share": skew_share, "window_cover": cover}
    problems = []
    if skew_share > rules.max_start_skew_share:
        problems.append(
            f"start skew {skew_s:.4f} s is {100 * skew_share:.2f} % of the window "
            f"(> {100 * rules.max_start_skew_share:g} %)"
        )
    if cover < rules.min_window_cover:
        problems.append(
            f"the common window covers {100 * cover:.1f} % of rank {rank}'s timed phase "
            f"(< {100 * rules.min_window_cover:g} %)"
        )
    why = "; ".join(problems) or (
        f"start skew {100 * skew_share:.3f} % of the window, which covers ≥ "
        f"{100 * cover:.1f} % of every rank's timed phase"
    )
    return _check("synchronised", not problems, measured, limit, why)


def binding(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every rank ran where its plan put it, and no two ranks of a host share a GPU."""
    problems = []
    for row in summary["ranks"]:
        for mismatch in row.get("binding_mismatches") or []:
            problems.append(f"rank {row['rank']}: {mismatch}")
    owners: dict[tuple[Any, Any, str], list[int]] = {}
    for row in summary["ranks"]:
        for gpu in (row.get("gpu_identity") or {}).get("actual") or []:
            # By plan node too: the fake nodes of a test cluster share one host name.
            key = (row.get("host"), row.get("node"), str(gpu))
            owners.setdefault(key, []).append(int(row["rank"]))
    for (host, _, gpu), ranks in sorted(owners.items(), key=lambda item: str(item[0])):
        if len(set(ranks)) > 1:
            problems.append(
                f"GPU {gpu} on {host} is bound to ranks {', '.join(map(str, sorted(set(ranks))))}"
            )
    verified = [
        row["rank"]
        for row in summary["ranks"]
        if (row.get("gpu_identity") or {}).get("source") is not None
    ]
    gpu_ranks = [row["rank"] for row in summary["ranks"] if row.get("gpus")]
    if problems:
        why = "; ".join(problems[:4]) + (f" (and {len(problems) - 4} more)" if problems[4:] else "")
    elif gpu_ranks and len(verified) < len(gpu_ranks):
        why = (
            "CPUs and memory as planned; GPU identity of "
            f"{plural(len(gpu_ranks) - len(verified), 'rank')} not verifiable (no NVML, no srun "
            "gpu-bind line): only CUDA_VISIBLE_DEVICES was compared"
        )
    else:
        why = "every rank ran on its planned CPUs, GPUs and memory"
    return _check("binding", not problems, len(problems), 0, why)


def device_health(telemetry: Mapping[str, Any] | None, rules: Rules) -> dict[str, Any]:
    """No slowdown throttle reason in the window; a power cap fails only under strict rules."""
    limit = {"slowdown_share": 0.0, "power_cap_share": 0.0 if rules.power_cap_fails else None}
    if not telemetry or not telemetry.get("available"):
        reason = (telemetry or {}).get("reason") or "no telemetry"
        return _check("device_health", True, None, limit, f"not checked: {reason}")
    problems: list[str] = []
    notes: list[str] = []
    worst_slowdown, worst_cap = 0.0, 0.0
    for row in telemetry["devices"]:
        where = f"rank {row['rank']} device {row['device']}" + (
            f" (GPU {row['gpu']})" if row.get("gpu") is not None else ""
        )
        for name, share in row["throttle_reasons"].items():
            text = f"{where}: {name} in {100 * share:.0f} % of samples"
            if name in SLOWDOWN_REASONS:
                worst_slowdown = max(worst_slowdown, share)
                problems.append(text)
            elif name == POWER_CAP_REASON:
                worst_cap = max(worst_cap, share)
                (problems if rules.power_cap_fails else notes).append(text)
    measured = {"slowdown_share": worst_slowdown, "power_cap_share": worst_cap}
    if problems:
        why = "; ".join(problems[:4]) + (f" (and {len(problems) - 4} more)" if problems[4:] else "")
    else:
        why = "no slowdown reason during the window" + (
            "; reported, not failed: " + "; ".join(notes[:4]) if notes else ""
        )
    return _check("device_health", not problems, measured, limit, why)


def complete(run: LoadedRun) -> dict[str, Any]:
    """Every rank of the world finished and left a complete file."""
    finished = len(run.ranks)
    if run.excluded:
        why = "; ".join(reason for _, reason in run.excluded[:4]) + (
            f" (and {len(run.excluded) - 4} more)" if run.excluded[4:] else ""
        )
    else:
        why = f"all {finished} rank files complete"
    return _check("complete", not run.excluded, finished, run.world_size, why)


def clock(run: LoadedRun) -> dict[str, Any]:
    """CLOCK_REALTIME did not step during any rank's timed phase.

    Batch times are wall-clock (they align ranks); each rank also measured its phase on
    CLOCK_MONOTONIC and recorded the difference (``clock_step_ns``). A step (NTP, an
    administrator's ``date``) makes durations and throughput meaningless.
    """
    worst: tuple[float, int, float] | None = None
    for rank_file in run.ranks:
        step_ns = rank_file.clock_step_ns
        if step_ns is None or rank_file.t_begin_ns is None or rank_file.t_finish_ns is None:
            continue
        phase_ns = rank_file.t_finish_ns - rank_file.t_begin_ns - step_ns
        limit_s = clock_step_limit_ns(phase_ns) / figures.NS_PER_S
        step_s = step_ns / figures.NS_PER_S
        if worst is None or abs(step_s) - limit_s > abs(worst[0]) - worst[2]:
            worst = (step_s, rank_file.rank, limit_s)
    if worst is None:
        return _check("clock", True, None, None, "not recorded by these rank files")
    step_s, rank, limit_s = worst
    passed = abs(step_s) <= limit_s
    why = (
        f"wall clock within {limit_s:.3f} s of CLOCK_MONOTONIC on every rank (largest: rank "
        f"{rank}, {step_s:+.3f} s)"
        if passed
        else f"the wall clock stepped {step_s:+.3f} s during rank {rank}'s timed phase: "
        "durations and throughput are wrong"
    )
    return _check("clock", passed, round(step_s, 6), round(limit_s, 6), why)


# ------------------------------------------------------------------------------ printing
def format_verdict(validity: Mapping[str, Any] | None) -> list[str]:
    """The verdict in one line, then one line per failed check."""
    if not validity:
        return ["validity: not judged (a summary written before hpcbench judged runs)"]
    checks = validity.get("checks", [])
    failed = [c for c in checks if not c.get("passed")]
    rules = validity.get("rules")
    if not failed:
        return [f"validity ({rules} rules): VALID, all {len(checks)} checks passed"]
    lines = [f"validity ({rules} rules): INVALID, {len(failed)} of {len(checks)} checks failed"]
    lines.extend(f"  {c['name']}: {c['why']}" for c in failed)
    return lines


def verdict_word(validity: Mapping[str, Any] | None) -> str:
    """``valid``, ``INVALID`` (with the rules when strict) or ``-`` for a summary not judged.

    >>> verdict_word({"valid": False, "rules": "strict", "checks": []})
    'INVALID (strict)'
    >>> verdict_word(None)
    '-'
    """
    if not validity:
        return "-"
    word = "valid" if validity.get("valid") else "INVALID"
    return word if validity.get("rules") == "default" else f"{word} ({validity.get('rules')})"
