"""Reference figures (YAML) and checking runs against them: a cluster acceptance test.

A reference file::

    version: 1
    defaults: {tolerance_pct: 5}
    references:
      - name: resnet50 2x4 GPUs          # optional, shown in the report
        match: {site: mycluster, partition: gpu, model: resnet50,
                layout: "0,1,2,3;4,5,6,7", batch_size: 256}
        figures:
          throughput.common_window_img_s: 40000              # shorthand: value, default tolerance
          latency_ms.p99: {value: 25.0, tolerance_pct: 10}   # direction from the figure: lower
          throughput.my_figure_img_s: {value: 9, direction: higher}
          telemetry.total.images_per_j: 55.0                 # energy efficiency (GPU runs)
        accept_invalid: false   # default: a run whose validity verdict is INVALID fails

A figure passes when it is no worse than its value by more than the tolerance: for
``direction: higher`` (throughput) ``measured >= value·(1 − tol/100)``, for ``lower`` (latency,
skew) ``measured <= value·(1 + tol/100)``. A run that is incomplete, lacks a figure, or was
judged invalid (``summary.validity.valid`` false; unless the reference says ``accept_invalid:
true``) fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.archive.query import FIGURES, MISSING, PARAM_KEYS, lookup
from hpcbench.configfile import read_yaml_file, validate
from hpcbench.errors import ConfigError, closest
from hpcbench.text import noun

DIRECTIONS = ("higher", "lower")
DEFAULT_TOLERANCE_PCT = 5.0

_FIGURE_OBJECT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["value"],
    "properties": {
        "value": {"type": "number"},
        "tolerance_pct": {"type": "number", "minimum": 0},
        "direction": {"enum": list(DIRECTIONS)},
    },
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["references"],
    "properties": {
        "version": {"const": 1},
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"tolerance_pct": {"type": "number", "minimum": 0}},
        },
        "references": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["match", "figures"],
                "properties": {
                    "name": {"type": "string"},
                    "accept_invalid": {"type": "boolean"},
                    "match": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {key: {"type": ["string", "integer"]} for key in PARAM_KEYS},
                    },
                    "figures": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {
                            "oneOf": [{"type": "number"}, _FIGURE_OBJECT],
                            "description": "give a number or {value, tolerance_pct, direction}",
                        },
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True, slots=True)
class Expected:
    """One expected figure."""

    key: str
    value: float
    tolerance_pct: float
    direction: str

    @property
    def limit(self) -> float:
        """The worst value that still passes."""
        factor = self.tolerance_pct / 100.0
        return (
            self.value * (1 - factor) if self.direction == "higher" else self.value * (1 + factor)
        )

    def passes(self, measured: float) -> bool:
        """Whether ``measured`` is within tolerance.

        >>> Expected("t", 100.0, 5.0, "higher").passes(95.0)
        True
        >>> Expected("t", 100.0, 5.0, "higher").passes(94.9)
        False
        >>> Expected("l", 10.0, 10.0, "lower").passes(11.5)
        False
        """
        return measured >= self.limit if self.direction == "higher" else measured <= self.limit


@dataclass(frozen=True, slots=True)
class Reference:
    """A set of expected figures for the runs that match ``match``."""

    name: str
    match: Mapping[str, Any]
    figures: tuple[Expected, ...]
    # Check the figures of runs the validity verdict calls invalid instead of failing them.
    accept_invalid: bool = False

    def matches(self, entry: Mapping[str, Any]) -> bool:
        params = entry.get("params") or {}
        return all(str(params.get(k)) == str(v) for k, v in self.match.items())


@dataclass(frozen=True, slots=True)
class Outcome:
    """One figure of one run checked against one reference."""

    run_id: str
    reference: str
    key: str
    measured: float | None
    expected: Expected
    status: str  # "pass", "FAIL", "missing", "incomplete", "invalid"

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    @property
    def deviation_pct(self) -> float | None:
        if self.measured is None or self.expected.value == 0:
            return None
        return 100.0 * (self.measured - self.expected.value) / self.expected.value

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "reference": self.reference,
            "figure": self.key,
            "measured": self.measured,
            "expected": self.expected.value,
            "tolerance_pct": self.expected.tolerance_pct,
            "direction": self.expected.direction,
            "limit": self.expected.limit,
            "deviation_pct": self.deviation_pct,
            "status": self.status,
        }


def parse_references(data: Any, source: str) -> list[Reference]:
    """Validate a loaded reference document and build the references."""
    validate(data, SCHEMA, source)
    default_tol = float((data.get("defaults") or {}).get("tolerance_pct", DEFAULT_TOLERANCE_PCT))
    references = []
    for i, item in enumerate(data["references"]):
        figures = []
        for key, spec in item["figures"].items():
            if not isinstance(spec, Mapping):
                spec = {"value": spec}
            for name in ("value", "tolerance_pct"):
                if name in spec and not math.isfinite(float(spec[name])):
                    raise ConfigError(
                        f"{source}: references[{i}].figures.{key}.{name}: must be a finite "
                        f"number, got {spec[name]!r}"
                    )
            direction = spec.get("direction") or FIGURES.get(key)
            if direction is None:
                raise ConfigError(
                    f"{source}: references[{i}].figures: unknown figure {key!r}"
                    f"{closest(key, list(FIGURES))}; known: {', '.join(FIGURES)} "
                    "(another summary key needs an explicit direction: higher or lower)"
                )
            figures.append(
                Expected(
                    key=key,
                    value=float(spec["value"]),
                    tolerance_pct=float(spec.get("tolerance_pct", default_tol)),
                    direction=direction,
                )
            )
        name = item.get("name") or ", ".join(f"{k}={v}" for k, v in item["match"].items())
        references.append(
            Reference(
                name=name or "(all runs)",
                match=item["match"],
                figures=tuple(figures),
                accept_invalid=bool(item.get("accept_invalid", False)),
            )
        )
    return references


def load_references(path: Path | str) -> list[Reference]:
    """Read and validate a reference file; a mistake raises ConfigError naming file and key."""
    data = read_yaml_file(path, "reference file")
    return parse_references(data, str(path))


def check_entries(
    entries: Sequence[Mapping[str, Any]], references: Sequence[Reference]
) -> list[Outcome]:
    """Check every run against every reference it matches."""
    outcomes = []
    for entry in entries:
        run_id = str(entry.get("run_id"))
        for reference in references:
            if not reference.matches(entry):
                continue
            for expected in reference.figures:
                value = lookup(entry, expected.key)
                measured = (
                    float(value)
                    if isinstance(value, (int, float)) and not isinstance(value, bool)
                    else None
                )
                if not entry.get("complete"):
                    status = "incomplete"
                elif not reference.accept_invalid and judged_invalid(entry):
                    status = "invalid"
                elif measured is None or value is MISSING:
                    status = "missing"
                else:
                    status = "pass" if expected.passes(measured) else "FAIL"
                outcomes.append(
                    Outcome(run_id, reference.name, expected.key, measured, expected, status)
                )
    return outcomes


def explain_no_match(
    entries: Sequence[Mapping[str, Any]], references: Sequence[Reference], most: int = 10
) -> list[str]:
    """Why no reference matched: each reference's ``match`` above each run's values of its keys.

    >>> ref = Reference("r50", {"site": "mycluster", "model": "resnet50"}, ())
    >>> run = {"run_id": "r1", "params": {"site": "lab", "model": "resnet50"}}
    >>> print("\\n".join(explain_no_match([run], [ref])))
    reference 'r50' match: site=mycluster model=resnet50
      run r1: site=lab (not mycluster) model=resnet50
    """
    lines = []
    for reference in references:
        wanted = " ".join(f"{k}={v}" for k, v in reference.match.items())
        lines.append(f"reference {reference.name!r} match: {wanted}")
        for entry in entries[:most]:
            params = entry.get("params") or {}
            cells = []
            for key, value in reference.match.items():
                got = params.get(key)
                cells.append(
                    f"{key}={got}" if str(got) == str(value) else f"{key}={got} (not {value})"
                )
            lines.append(f"  run {entry.get('run_id')}: {' '.join(cells)}")
        if len(entries) > most:
            lines.append(f"  ... and {len(entries) - most} more {noun(len(entries) - most, 'run')}")
    return lines


def judged_invalid(entry: Mapping[str, Any]) -> bool:
    """Whether the run's summary holds a verdict, and it is invalid (older runs have none)."""
    validity = (entry.get("summary") or {}).get("validity")
    return isinstance(validity, Mapping) and validity.get("valid") is False


def format_outcomes(outcomes: Sequence[Outcome]) -> str:
    """The check report: one line per figure."""
    from hpcbench.archive.tables import format_number
    from hpcbench.text import format_table

    rows = []
    for o in outcomes:
        sign = ">=" if o.expected.direction == "higher" else "<="
        rows.append(
            [
                o.status,
                o.run_id,
                o.reference,
                o.key,
                format_number(o.measured),
                f"{sign} {format_number(o.expected.limit)}",
                f"{format_number(o.expected.value)} ±{o.expected.tolerance_pct:g}%",
                "-" if o.deviation_pct is None else f"{o.deviation_pct:+.1f}%",
            ]
        )
    return format_table(
        ["status", "run", "reference", "figure", "measured", "needs", "expected", "deviation"], rows
    )
