"""Queries over archived runs: dotted keys, ``--where`` filters, sorting, run parameters.

A key names a value of a run's index entry: a dotted path into ``summary.json``
(``run.model``, ``throughput.common_window_img_s``, ``ranks.0.own_img_s``), or into the
entry's ``params`` / ``spec`` / ``archive`` blocks (``spec.prefetchers``, ``archive.archived_at``);
a key without a dot that is not a summary key is looked up in ``params`` (``model``,
``batch_size``, ``layout``, ``site``, ``partition``, ``gpus_total``...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcbench.cpulist import is_decimal
from hpcbench.errors import UsageError, closest

# The figures compared, exported and checked, with the direction that is better.
FIGURES: dict[str, str] = {
    "throughput.common_window_img_s": "higher",
    "throughput.per_device_img_s": "higher",
    "throughput.sum_own_img_s": "higher",
    "throughput.dlbs_adjusted_img_s": "higher",
    "throughput.dlbs_effective_sum_img_s": "higher",
    "latency_ms.p50": "lower",
    "latency_ms.p90": "lower",
    "latency_ms.p99": "lower",
    "latency_ms.max": "lower",
    "skew.start_s": "lower",
    "skew.end_s": "lower",
    "telemetry.total.images_per_j": "higher",
    "telemetry.total.energy_j": "lower",
    "telemetry.total.mean_power_w": "lower",
}
HEADLINE = "throughput.common_window_img_s"
# Parameters that describe a run's configuration: runs equal on all of them (and on the spec,
# less SPEC_IGNORED) are repeats of one another, and a reference file's `match:` takes these keys.
PARAM_KEYS = (
    "site",
    "partition",
    "backend",
    "model",
    "precision",
    "batch_size",
    "layout",
    "world_size",
    "nodes",
    "gpus_total",
)
# Spec fields that do not change what is measured, so runs differing only there are repeats.
SPEC_IGNORED = frozenset({"barrier_timeout_s", "strict_binding", "validity"})

_MISSING = object()
ENTRY_KEYS = ("run_id", "archived_at", "complete", "incomplete_reason")
_WHERE = re.compile(r"^\s*([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(>=|<=|!=|==|=|>|<|~)\s*(.*?)\s*$")


def get_path(data: Any, key: str) -> Any:
    """The value at a dotted ``key`` (list items by index), or ``MISSING``.

    >>> get_path({"a": {"b": [5, 6]}}, "a.b.1")
    6
    >>> get_path({"a": 1}, "a.c") is MISSING
    True
    """
    node = data
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and is_decimal(part) and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


MISSING = _MISSING


def lookup(entry: Mapping[str, Any], key: str) -> Any:
    """Resolve ``key`` against an index entry (see the module docstring); ``MISSING`` if absent."""
    if key in ENTRY_KEYS:
        # The archive's verdict, not the summary's: a failed Slurm job is incomplete too.
        return entry.get(key, _MISSING)
    summary = entry.get("summary") or {}
    value = get_path(summary, key)
    if value is not _MISSING:
        return value
    head = key.split(".", 1)[0]
    if head in ("params", "spec"):
        return get_path(entry, key)
    if head == "archive":
        block = {k: entry.get(k) for k in (*ENTRY_KEYS, "source")}
        return get_path({"archive": block}, key)
    if "." not in key:
        params = entry.get("params") or {}
        if key in params:
            return params[key]
    return _MISSING


def known_keys(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every dotted key of the entries (summary paths, params names, spec/archive paths)."""
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for name, value in node.items():
                walk(value, f"{prefix}{name}.")
        elif prefix:
            keys.add(prefix[:-1])

    for entry in entries:
        walk(entry.get("summary") or {}, "")
        walk(entry.get("spec") or {}, "spec.")
        for name in entry.get("params") or {}:
            keys.add(name)
            keys.add(f"params.{name}")
        keys.update(ENTRY_KEYS)
        keys.update(f"archive.{k}" for k in (*ENTRY_KEYS, "source"))
    return sorted(keys)


def parse_scalar(text: str) -> Any:
    """A command-line value as a number, bool or null when it reads as one, else the string.

    >>> [parse_scalar(t) for t in ("256", "1e3", "true", "null", "0,2;4,6")]
    [256, 1000.0, True, None, '0,2;4,6']
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``--where`` condition: ``key op value``."""

    key: str
    op: str
    value: Any
    text: str

    def matches(self, actual: Any) -> bool:
        if actual is _MISSING:
            return False
        if self.op == "~":
            return re.search(str(self.value), _as_text(actual)) is not None
        if self.op in ("=", "==", "!="):
            equal = _equal(actual, self.value)
            return equal if self.op != "!=" else not equal
        if not _is_number(actual):
            return False
        threshold = float(self.value)
        number = float(actual)
        return {
            ">": number > threshold,
            ">=": number >= threshold,
            "<": number < threshold,
            "<=": number <= threshold,
        }[self.op]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _equal(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, list):
        return any(_equal(item, wanted) for item in actual)
    if _is_number(actual) and _is_number(wanted):
        return float(actual) == float(wanted)
    if isinstance(actual, bool) or isinstance(wanted, bool) or actual is None or wanted is None:
        return actual is wanted or actual == wanted
    return _as_text(actual) == _as_text(wanted)


def parse_where(text: str) -> Condition:
    """Parse ``key=value``, ``key!=value``, ``key>N`` (``>=``, ``<``, ``<=``) or ``key~regex``.

    >>> c = parse_where("throughput.common_window_img_s>=1000")
    >>> (c.key, c.op, c.value)
    ('throughput.common_window_img_s', '>=', 1000)
    >>> parse_where("run.model=resnet50").value
    'resnet50'
    """
    match = _WHERE.match(text)
    if not match:
        raise UsageError(
            f"--where {text!r}: expected KEY=VALUE (or !=, >, >=, <, <=, ~REGEX), "
            "e.g. run.model=resnet50"
        )
    key, op, raw = match.groups()
    value: Any = raw if op == "~" else parse_scalar(raw)
    if op in (">", ">=", "<", "<=") and not _is_number(value):
        raise UsageError(f"--where {text!r}: {op} needs a number, got {raw!r}")
    if op == "~":
        try:
            re.compile(raw)
        except re.error as exc:
            raise UsageError(f"--where {text!r}: bad regular expression ({exc})") from exc
    return Condition(key=key, op=op, value=value, text=text)


def select(
    entries: Sequence[Mapping[str, Any]], conditions: Sequence[Condition]
) -> list[Mapping[str, Any]]:
    """The entries matching every condition. A key no entry has is an error with a suggestion."""
    for condition in conditions:
        if entries and all(lookup(e, condition.key) is _MISSING for e in entries):
            keys = known_keys(entries)
            raise UsageError(
                f"--where {condition.text!r}: no archived run has the key "
                f"{condition.key!r}{closest(condition.key, keys)}"
            )
    return [e for e in entries if all(c.matches(lookup(e, c.key)) for c in conditions)]


def sort_entries(entries: Sequence[Mapping[str, Any]], key: str | None) -> list[Mapping[str, Any]]:
    """Sort by a key (``-key`` for descending); runs without the key go last, in id order."""
    if not key:
        return sorted(entries, key=lambda e: str(e.get("run_id")))
    descending = key.startswith("-")
    name = key.lstrip("-")
    if entries and all(lookup(e, name) is _MISSING for e in entries):
        raise UsageError(
            f"--sort {key!r}: no archived run has the key {name!r}"
            f"{closest(name, known_keys(entries))}"
        )
    present = [e for e in entries if lookup(e, name) not in (_MISSING, None)]
    absent = [e for e in entries if lookup(e, name) in (_MISSING, None)]

    def order(entry: Mapping[str, Any]) -> tuple[int, float, str]:
        value = lookup(entry, name)
        if _is_number(value):
            return (0, float(value), "")
        return (1, 0.0, _as_text(value))

    present.sort(key=lambda e: str(e.get("run_id")))
    present.sort(key=order, reverse=descending)
    absent.sort(key=lambda e: str(e.get("run_id")))
    return present + absent


def _name(value: Any) -> str | None:
    if isinstance(value, str):
        # run.json's "site" is the site config's path: the file's own name field is better,
        # so a path yields nothing here and the copied config (or the file stem) is used.
        return None if _is_path(value) else value
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return str(value["name"])
    return None


def _is_path(value: str) -> bool:
    return "/" in value or value.endswith((".yaml", ".yml"))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _site_stem(value: Any) -> str | None:
    """``mycluster`` for a site config path ``/x/site_configs/mycluster.yaml``.

    >>> _site_stem("/x/site_configs/mycluster.yaml")
    'mycluster'
    """
    if isinstance(value, str) and _is_path(value):
        name = value.rstrip("/").rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[0] if name.endswith((".yaml", ".yml")) else name
    return None


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None and value is not _MISSING:
            return value
    return None


def run_params(
    summary: Mapping[str, Any],
    spec: Mapping[str, Any] | None,
    run_info: Mapping[str, Any],
    site_doc: Mapping[str, Any] | None,
    plan: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parameters that identify a run's configuration, from whichever file records them.

    ``site`` and ``partition`` come from the summary's ``run`` block, else ``run.json``, else the
    site config copied with the run and the Slurm job info. The layout, ranks and GPUs come
    from ``plan.json`` when there is one: an incomplete run's summary lists only the ranks that
    reported, but it was still a run of the planned configuration.
    """
    run = _mapping(summary.get("run"))
    spec = spec or {}
    slurm_run = _mapping(run.get("slurm"))
    slurm_info = _mapping(run_info.get("slurm"))
    raw_ranks = summary.get("ranks")
    ranks: list[Any] = raw_ranks if isinstance(raw_ranks, list) else []
    planned = _planned(plan)
    if planned is not None:
        ranks = planned["ranks"]
    gpu_counts = [len(r["gpus"]) for r in ranks if isinstance(r, Mapping) and "gpus" in r]
    gpus_total = sum(gpu_counts) if gpu_counts and len(gpu_counts) == len(ranks) else None
    site_name = _first(
        _name(run.get("site")),
        _name(run_info.get("site")),
        _name(run_info.get("site_name")),
        _name(site_doc.get("name")) if site_doc else None,
        _site_stem(run_info.get("site")),
        # Slurm's ClusterName is the best remaining guess at which site ran it.
        slurm_run.get("cluster"),
        slurm_info.get("cluster"),
    )
    return {
        "site": site_name,
        "partition": _first(
            run.get("partition"),
            run_info.get("partition"),
            # hpcbench submit records the site config's node type (what --partition named).
            run_info.get("node_type"),
            slurm_run.get("partition"),
            slurm_info.get("partition"),
        ),
        "backend": _first(run.get("backend"), spec.get("backend")),
        "model": _first(run.get("model"), spec.get("model")),
        "precision": _first(run.get("precision"), spec.get("precision")),
        "batch_size": _first(run.get("batch_size"), spec.get("batch_size")),
        "world_size": _first(
            len(ranks) if planned else None, run.get("world_size"), len(ranks) or None
        ),
        "nodes": _first(planned and planned["nodes"], run.get("nodes"), 1),
        "layout": _first(planned and planned["layout"], run.get("layout")),
        "gpus_total": gpus_total,
        # Devices measured: the summary's count, else GPUs, else ranks (CPU backend).
        "devices": _first(
            summary.get("devices") if isinstance(summary.get("devices"), int) else None,
            gpus_total or None,
            run.get("world_size"),
            len(ranks) or None,
        ),
        "gpus_per_rank": gpu_counts[0] if gpu_counts and len(set(gpu_counts)) == 1 else None,
    }


def _planned(plan: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Layout facts from a plan.json document, or None when it is absent or malformed."""
    if not plan:
        return None
    try:
        from hpcbench.cpulist import format_cpulist
        from hpcbench.plan.model import Plan

        parsed = Plan.from_json(plan)
    except Exception:  # a foreign or damaged plan must not stop listing the archive
        return None
    if not parsed.ranks:
        return None
    first = min(r.node for r in parsed.ranks)
    node_ranks = [r for r in parsed.ranks if r.node == first]
    if any(r.gpus for r in node_ranks):
        layout = ";".join(",".join(str(g) for g in r.gpus) for r in node_ranks)
    else:
        layout = ";".join(format_cpulist(r.cpus) for r in node_ranks)
    return {
        "ranks": [{"gpus": list(r.gpus)} for r in parsed.ranks],
        "nodes": parsed.nodes,
        "layout": layout,
    }


def config_signature(entry: Mapping[str, Any]) -> str:
    """A string equal for two runs exactly when they are repeats of one configuration."""
    import json

    params = entry.get("params") or {}
    spec = {k: v for k, v in (entry.get("spec") or {}).items() if k not in SPEC_IGNORED}
    chosen = {k: params.get(k) for k in PARAM_KEYS}
    return json.dumps({"params": chosen, "spec": spec}, sort_keys=True, default=str)


def figure(entry: Mapping[str, Any], key: str) -> float | None:
    """A numeric figure of a run, or None when absent or undefined."""
    value = lookup(entry, key)
    return float(value) if _is_number(value) and math.isfinite(float(value)) else None
