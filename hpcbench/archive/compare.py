"""Compare two archived runs: ratios of the figures, judged against the run-to-run spread.

Repeats of a run are the archived complete runs with the same configuration (same
:func:`~hpcbench.archive.query.config_signature`: site, partition, backend, model, precision,
batch, ranks, nodes, layout and spec). The spread of a figure is its coefficient of variation
(sample standard deviation / mean) over a run's repeats. A ratio B/A is called a change when it
differs from 1 by more than ``NOISE_FACTOR`` times the larger spread of the two sides; with no
repeats on either side the spread is unknown and the verdict says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcbench.archive.query import FIGURES, config_signature, figure

NOISE_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class Spread:
    """A figure over a configuration's repeats."""

    n: int
    mean: float
    cv: float | None  # stdev / mean; None with fewer than 2 repeats


@dataclass(frozen=True, slots=True)
class FigureComparison:
    """One figure of runs A and B."""

    key: str
    direction: str
    a: float | None
    b: float | None
    ratio: float | None  # b / a
    spread_a: Spread | None
    spread_b: Spread | None
    verdict: str  # "better", "worse", "within noise", "no repeats", "missing"

    def to_json(self) -> dict[str, Any]:
        def spread(s: Spread | None) -> dict[str, Any] | None:
            return None if s is None else {"n": s.n, "mean": s.mean, "cv": s.cv}

        return {
            "key": self.key,
            "direction": self.direction,
            "a": self.a,
            "b": self.b,
            "ratio": self.ratio,
            "spread_a": spread(self.spread_a),
            "spread_b": spread(self.spread_b),
            "verdict": self.verdict,
        }


def spread_of(values: Sequence[float]) -> Spread | None:
    """Mean and coefficient of variation of repeats.

    >>> s = spread_of([100.0, 102.0, 98.0])
    >>> (s.n, s.mean, round(s.cv, 4))
    (3, 100.0, 0.02)
    >>> spread_of([5.0]).cv is None
    True
    """
    if not values:
        return None
    mean = statistics.fmean(values)
    cv = statistics.stdev(values) / mean if len(values) > 1 and mean != 0 else None
    return Spread(n=len(values), mean=mean, cv=cv)


def repeats(
    entries: Sequence[Mapping[str, Any]], run: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """The complete runs with the same configuration as ``run`` (``run`` itself included)."""
    signature = config_signature(run)
    found = [e for e in entries if e.get("complete") and config_signature(e) == signature]
    if run.get("run_id") not in {e.get("run_id") for e in found}:
        found.append(run)
    return found


def judge(ratio: float, direction: str, noise: float | None) -> str:
    """Verdict for a ratio B/A given the relative spread ``noise``.

    >>> judge(1.10, "higher", 0.01)
    'better'
    >>> judge(1.10, "lower", 0.01)
    'worse'
    >>> judge(1.02, "higher", 0.01)
    'within noise'
    >>> judge(1.5, "higher", None)
    'no repeats'
    """
    if noise is None:
        return "no repeats"
    if abs(ratio - 1.0) <= NOISE_FACTOR * noise:
        return "within noise"
    higher = ratio > 1.0
    return "better" if higher == (direction == "higher") else "worse"


def compare_runs(
    entries: Sequence[Mapping[str, Any]],
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    keys: Sequence[str] = tuple(FIGURES),
) -> list[FigureComparison]:
    """Compare run B with run A on each figure; their repeats in ``entries`` give the spread."""
    reps_a = repeats(entries, a)
    reps_b = repeats(entries, b)
    rows = []
    for key in keys:
        value_a, value_b = figure(a, key), figure(b, key)
        spread_a = spread_of([v for e in reps_a if (v := figure(e, key)) is not None])
        spread_b = spread_of([v for e in reps_b if (v := figure(e, key)) is not None])
        if value_a is None and value_b is None:
            continue
        direction = FIGURES.get(key, "higher")
        if value_a is None or value_b is None or value_a == 0:
            rows.append(
                FigureComparison(
                    key, direction, value_a, value_b, None, spread_a, spread_b, "missing"
                )
            )
            continue
        ratio = value_b / value_a
        cvs = [s.cv for s in (spread_a, spread_b) if s is not None and s.cv is not None]
        verdict = judge(ratio, direction, max(cvs) if cvs else None)
        rows.append(
            FigureComparison(key, direction, value_a, value_b, ratio, spread_a, spread_b, verdict)
        )
    return rows


def format_comparison(
    a: Mapping[str, Any], b: Mapping[str, Any], rows: Sequence[FigureComparison]
) -> str:
    """A readable table of a comparison."""
    from hpcbench.archive.tables import format_number as number
    from hpcbench.text import format_table

    def spread(s: Spread | None) -> str:
        if s is None:
            return "-"
        return f"n={s.n}" if s.cv is None else f"n={s.n} ±{100 * s.cv:.1f}%"

    lines = [f"A: {a['run_id']}{'' if a.get('complete') else ' (INCOMPLETE)'}"]
    lines.append(f"B: {b['run_id']}{'' if b.get('complete') else ' (INCOMPLETE)'}")
    differing = [
        f"{k}: {(a.get('params') or {}).get(k)} -> {(b.get('params') or {}).get(k)}"
        for k in sorted(set(a.get("params") or {}) | set(b.get("params") or {}))
        if (a.get("params") or {}).get(k) != (b.get("params") or {}).get(k)
    ]
    lines.append("differs in: " + ("; ".join(differing) if differing else "nothing (repeats)"))
    table = [
        [
            r.key,
            number(r.a),
            number(r.b),
            "-" if r.ratio is None else f"{r.ratio:.3f}",
            spread(r.spread_a),
            spread(r.spread_b),
            r.verdict,
        ]
        for r in rows
    ]
    lines.append(
        format_table(["figure", "A", "B", "B/A", "spread A", "spread B", "verdict"], table)
    )
    lines.append(
        f"spread: coefficient of variation over repeats (same configuration); a change is a ratio "
        f"beyond {NOISE_FACTOR:g}x the larger spread"
    )
    return "\n".join(lines)
