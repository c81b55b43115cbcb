"""Sweeps: a grid of benchmark points, one run directory each, as one Slurm job array.

A sweep spec (YAML, validated against ``hpcbench/schemas/sweep.schema.json``) names a site, the
settings every point shares (``base``) and the values to vary (``grid``: model x batch size x
layout x precision ..., the way DLBS varied ``exp.model``, ``exp.replica_batch``, ``exp.gpus``).
Each point becomes a run directory ``pNNN`` holding its own ``job.sbatch`` (what ``hpcbench
render`` shows for that point); the array script runs one point's script per array task.
Re-running the same spec skips the points whose ``summary.json`` exists, so an interrupted or
partly failed sweep resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hpcbench.configfile import read_yaml_file, validate
from hpcbench.cpulist import is_decimal
from hpcbench.errors import ConfigError, HpcbenchError, RunError, UsageError
from hpcbench.follow import poll_until
from hpcbench.jsonfile import read_json, write_atomic, write_json_atomic
from hpcbench.plan.planner import PlanRequest
from hpcbench.runfiles import LOGS_DIR, SUBMITIT_DIR, RunFiles
from hpcbench.runtime.local_run import LocalInputs, plan_local
from hpcbench.site import NodeType, SiteConfig
from hpcbench.slurm.inputs import JobInputs, JobSettings, job_inputs
from hpcbench.slurm.render import ArrayPoint, render_array
from hpcbench.slurm.submit import (
    JobState,
    JobTracker,
    PatientPoller,
    add_job_to_summary,
    explain_failure,
    job_record,
    prepare,
    sbatch,
    slurm_version,
)
from hpcbench.spec import RunSpec, SpecChoices
from hpcbench.text import format_figure, format_table, plural
from hpcbench.topology.model import Topology
from hpcbench.topology_source import TopologySource

SWEEP_FILE = "sweep.json"
# Sweep settings that place ranks -> PlanRequest field; every other setting is a RunSpec field.
# layout/cpu_layout are the older names of gpus/cpus; numa picks the granularity.
_PLACEMENT = {
    "ranks": "ranks",
    "gpus_per_rank": "gpus_per_rank",
    "cores_per_rank": "cores_per_rank",
    "hwthreads": "use_hwthreads",
    "numa": "granularity",
    "gpus": "gpus",
    "layout": "gpus",
    "cpus": "cpus",
    "cpu_layout": "cpus",
    "nodes": "nodes",
    "accept_warnings": "accept_warnings",
}


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """A validated sweep spec."""

    name: str
    site: str | None  # None: a local sweep on this host, as probed
    partition: str | None
    base: Mapping[str, Any]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    out: Path
    max_parallel: int | None = None
    time_limit_min: int | None = None
    python: str | None = None
    # A caller that orders its points itself (``explore`` interleaves its candidates) lists
    # them here instead of taking the grid's product; ``label_keys`` name the keys of a point
    # that only label it and are no setting.
    listed_points: tuple[Mapping[str, Any], ...] | None = None
    label_keys: tuple[str, ...] = ()
    # Run every point on this node (the same hardware for all).
    nodelist: str | None = None
    # The spec every point starts from before its settings (``explore --spec FILE``).
    base_spec: RunSpec | None = None

    def points(self) -> list[dict[str, Any]]:
        """The listed points, else every combination of the grid, first key varying slowest.

        >>> grid = (("model", ("a", "b")), ("batch_size", (8, 16)))
        >>> spec = SweepSpec("s", "site", None, {}, grid, Path("out"))
        >>> [tuple(p.values()) for p in spec.points()]
        [('a', 8), ('a', 16), ('b', 8), ('b', 16)]
        """
        if self.listed_points is not None:
            return [dict(p) for p in self.listed_points]
        keys = [k for k, _ in self.grid]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in self.grid))]


@lru_cache(maxsize=1)
def sweep_schema() -> dict[str, Any]:
    text = resources.files("hpcbench").joinpath("schemas/sweep.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_sweep(
    path: Path,
    *,
    site: str | None = None,
    out: Path | None = None,
    max_parallel: int | None = None,
    validity: str | None = None,
    local: bool = False,
) -> SweepSpec:
    """Read and validate a sweep spec; command-line values override the file's.

    ``validity`` (rules the points are judged by) overrides the spec's ``base.validity``.
    A Slurm sweep needs a site; a ``local`` one without a site probes this host, like ``run``.
    """
    data = read_yaml_file(path, "sweep spec")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep spec must be a YAML mapping")
    validate(data, sweep_schema(), str(path))
    site_path = site or data.get("site")
    if not site_path and not local:
        raise ConfigError(
            f"{path}: no site: give 'site:' in the spec or --site (only a --local sweep probes "
            f"this host)"
        )
    # A relative site path in the spec is relative to the spec file, like templates_dir.
    if (
        site_path
        and not site
        and not os.path.isabs(site_path)
        and (Path(path).parent / site_path).is_file()
    ):
        site_path = str(Path(path).parent / site_path)
    name = data.get("name") or Path(path).stem
    for key, values in data["grid"].items():
        for value in values:
            if not isinstance(value, str | int | float | bool | dict):
                raise ConfigError(f"{path}: grid.{key}: {value!r} is not a single value")
    return SweepSpec(
        name=name,
        site=str(site_path) if site_path else None,
        partition=data.get("partition"),
        base={**(data.get("base") or {}), **({"validity": validity} if validity else {})},
        grid=tuple((k, tuple(v)) for k, v in data["grid"].items()),
        out=Path(out or data.get("out") or Path("hpcbench-sweeps") / name),
        max_parallel=max_parallel or data.get("max_parallel"),
        time_limit_min=data.get("time_limit_min"),
        python=data.get("python"),
    )


def point_request(settings: Mapping[str, Any]) -> PlanRequest:
    """The placement settings of a sweep point as a :class:`PlanRequest`.

    >>> point_request({"ranks": "2", "layout": 0, "numa": True, "model": "mlp"})
    ... # doctest: +ELLIPSIS
    PlanRequest(ranks=2, ..., granularity='numa', gpus='0', cpus=None, ...)
    """
    fields: dict[str, Any] = {}
    for key, value in settings.items():
        name = _PLACEMENT.get(key)
        if name is None or value is None:
            continue
        if key == "numa":
            value = "numa" if value else "socket"
        elif name in ("gpus", "cpus"):
            value = str(value)
        elif key == "ranks" and isinstance(value, str) and is_decimal(value.strip()):
            value = int(value)
        fields[name] = value
    return PlanRequest(**fields)


def point_spec(settings: Mapping[str, Any], base: RunSpec | None = None) -> SpecChoices:
    """The benchmark settings of a sweep point (every non-placement key) as spec choices."""
    changes = {k: v for k, v in settings.items() if k not in _PLACEMENT}
    return SpecChoices(base=base, changes=changes)


@dataclass(slots=True)
class PointRun:
    """One sweep point: its settings, its run directory and how it went."""

    index: int
    params: dict[str, Any]
    run_dir: Path
    # A Slurm point's job; a local point's plan for this host, checked like 'hpcbench run'.
    inputs: JobInputs | LocalInputs
    status: str = "pending"
    job_id: str | None = None
    message: str = ""
    summary: Mapping[str, Any] | None = field(default=None)


def plan_points(spec: SweepSpec, *, local: bool = False) -> list[PointRun]:
    """Resolve every point (plan, spec, job); a bad point is named with its settings.

    ``local`` points go through the checks and defaults of ``hpcbench run`` (this host's
    probe without a site; the plan must fit this host), all before any point starts.
    """
    points = []
    # A local sweep's node, loaded once (at the first point, so that a mistake names it).
    here: tuple[Topology, NodeType | None, SiteConfig | None] | None = None
    for index, params in enumerate(spec.points()):
        settings = {k: v for k, v in {**spec.base, **params}.items() if k not in spec.label_keys}
        inputs: JobInputs | LocalInputs
        try:
            if local:
                if here is None:
                    here = TopologySource(site=spec.site, partition=spec.partition).load_with_site()
                topology, node_type, site = here
                inputs = plan_local(
                    topology,
                    point_request(settings).with_node_type(node_type),
                    point_spec(settings, spec.base_spec),
                    site=site,
                    node_type=node_type,
                )
            else:
                if spec.site is None:
                    raise ConfigError("no site: a Slurm sweep needs 'site:' or --site")
                job = JobSettings(
                    site=spec.site,
                    partition=spec.partition,
                    job_name=f"{spec.name}-p{index:03d}",
                    python=spec.python,
                    time_limit_min=spec.time_limit_min,
                )
                inputs = job_inputs(
                    job, point_request(settings), point_spec(settings, spec.base_spec)
                )
        except HpcbenchError as exc:
            raise ConfigError(f"sweep point {index} {_label(params)}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"sweep point {index} {_label(params)}: {exc}") from None
        run_dir = (spec.out / f"p{index:03d}").resolve()
        points.append(PointRun(index, params, run_dir, inputs))
    return points


def _label(params: Mapping[str, Any]) -> str:
    """``key=value`` pairs; a value with a line break or a space is quoted (one line).

    >>> _label({"model": "resnet50", "layout": "0,2;4,6", "data": "a b"})
    "model=resnet50 layout=0,2;4,6 data='a b'"
    """
    return " ".join(
        f"{k}={v!r}"
        if isinstance(v, str) and (not v or any(c.isspace() for c in v))
        else f"{k}={v}"
        for k, v in params.items()
    )


def is_complete(run_dir: Path) -> bool:
    """A point is done once its summary.json exists."""
    return RunFiles(run_dir).summary.is_file()


def set_aside(run_dir: Path) -> None:
    """Move an unfinished point's directory away so the point starts fresh (kept for reading)."""
    if not run_dir.exists():
        return
    for n in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.incomplete-{n}")
        if not target.exists():
            run_dir.rename(target)
            return


def _check_same_sweep(spec: SweepSpec, sweep_dir: Path) -> None:
    """Refuse to resume into a directory that holds a different grid."""
    record = {
        "name": spec.name,
        "site": spec.site,
        "partition": spec.partition,
        "base": dict(spec.base),
        "grid": [[k, list(v)] for k, v in spec.grid],
    }
    if spec.base_spec is not None:
        record["base_spec"] = spec.base_spec.to_json()
    path = sweep_dir / SWEEP_FILE
    if path.is_file():
        old = read_json(path, "sweep record", UsageError)
        if not isinstance(old, dict):
            raise UsageError(f"{path}: sweep record is not a JSON object; choose another --out")
        if {k: old.get(k) for k in record} != json.loads(json.dumps(record)):
            raise UsageError(
                f"{sweep_dir} holds another sweep (its {SWEEP_FILE} differs from this spec); "
                f"choose another --out"
            )
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def run_sweep(
    spec: SweepSpec,
    *,
    local: bool = False,
    argv: Sequence[str] = (),
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
) -> list[PointRun]:
    """Run every point that is not complete yet; return all points with their outcome."""
    points = plan_points(spec, local=local)
    sweep_dir = spec.out.resolve()
    _check_same_sweep(spec, sweep_dir)
    pending = []
    for point in points:
        if is_complete(point.run_dir):
            from hpcbench.aggregate import read_summary

            point.status = "done (earlier)"
            point.summary = read_summary(point.run_dir)
            continue
        set_aside(point.run_dir)
        pending.append(point)
    echo(
        f"sweep {spec.name}: {plural(len(points), 'point')}, {len(pending)} to run, in {sweep_dir}"
    )
    if not pending:
        return points
    for point in pending:
        point_argv = [*argv, f"(sweep point {point.index})"]
        if isinstance(point.inputs, LocalInputs):
            point.inputs.create_run_dir(point.run_dir, point_argv)
        else:
            prepare(point.inputs, point.run_dir, point_argv)
    if local:
        _run_local(pending, spec.python, echo)
    else:
        _run_array(spec, pending, sweep_dir, poll_s, timeout_s, echo)
    return points


def _run_local(
    pending: list[PointRun], spec_python: str | None, echo: Callable[[str], None]
) -> None:
    from hpcbench.aggregate import aggregate_run
    from hpcbench.runtime.launcher import launch_local
    from hpcbench.runtime.rundir import read_run_info

    for point in pending:
        echo(f"point {point.index} ({_label(point.params)}): running locally")
        try:
            launch_local(
                point.run_dir,
                point.inputs.plan,
                read_run_info(point.run_dir),
                python=spec_python or sys.executable,
            )
            point.summary = aggregate_run(point.run_dir)
            point.status = "done"
        except (RunError, UsageError) as exc:
            point.status = "failed"
            point.message = str(exc)
            echo(f"point {point.index}: failed: {exc}")


def _run_array(
    spec: SweepSpec,
    pending: list[PointRun],
    sweep_dir: Path,
    poll_s: float,
    timeout_s: float | None,
    echo: Callable[[str], None],
) -> None:
    first = pending[0].inputs
    if not isinstance(first, JobInputs):
        raise TypeError("a Slurm sweep's points are planned as jobs (plan_points local=False)")
    node_type, site = first.node_type, first.site
    (sweep_dir / LOGS_DIR).mkdir(exist_ok=True)
    text = render_array(
        [ArrayPoint(p.index, str(RunFiles(p.run_dir).job_script), p.inputs.plan) for p in pending],
        node_type,
        str(sweep_dir),
        job_name=spec.name,
        max_parallel=spec.max_parallel,
        time_limit_min=spec.time_limit_min,
        site_templates_dir=site.templates_dir,
        nodelist=spec.nodelist,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    script = sweep_dir / f"array-{stamp}.sbatch"
    write_atomic(script, text, mode=None)
    version = slurm_version()
    submitted_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    array_id = sbatch(script)
    echo(f"submitted job array {array_id} ({plural(len(pending), 'task')}): {script}")
    trackers = {
        p.index: JobTracker(f"{array_id}_{p.index}", sweep_dir / SUBMITIT_DIR) for p in pending
    }
    states: dict[int, JobState] = {}
    patient = PatientPoller(echo)
    last = ""

    def step() -> bool | None:
        nonlocal last
        refresh = True
        for point in pending:
            if point.index not in states or not states[point.index].final:
                tracker = trackers[point.index]
                previous = states.get(point.index, JobState(tracker.job_id, "UNKNOWN"))
                states[point.index] = patient.state(tracker, previous, refresh)
                refresh = False
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state.state] = counts.get(state.state, 0) + 1
        line = f"array {array_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if line != last:
            echo(line)
            last = line
        return True if all(s.final for s in states.values()) else None

    poll_until(
        step,
        poll_s=poll_s,
        timeout_s=timeout_s or 86400.0,
        timed_out=lambda: RunError(
            f"job array {array_id} not finished after {timeout_s or 86400.0:.0f} s ({last}); "
            f"it keeps running: run the same sweep again later to collect it"
        ),
    )
    for point in pending:
        state = states[point.index]
        point.job_id = state.job_id
        record = job_record(state, submitted_at=submitted_at, script=script, version=version)
        write_json_atomic(RunFiles(point.run_dir).slurm_record, record)
        if state.state != "COMPLETED":
            point.status = "failed"
            array_err = sweep_dir / LOGS_DIR / f"slurm-{array_id}_{point.index}.err"
            point.message = explain_failure(
                state, point.run_dir, point.inputs.plan.world_size, [array_err]
            )
            continue
        try:
            point.summary = add_job_to_summary(point.run_dir, record)
            point.status = "done"
        except HpcbenchError as exc:
            point.status = "failed"
            point.message = str(exc)


def format_sweep(spec: SweepSpec, points: Sequence[PointRun]) -> str:
    """A table of every point: its settings, status, throughput and run directory."""
    from hpcbench.aggregate.validity import format_verdict, verdict_word

    keys = [k for k, _ in spec.grid]
    header = ["point", *keys, "status", "img/s", "validity", "run dir"]
    rows = []
    for point in points:
        throughput = None
        if point.summary is not None:
            throughput = point.summary.get("throughput", {}).get("common_window_img_s")
        rows.append(
            [
                f"p{point.index:03d}",
                *(str(point.params[k]) for k in keys),
                point.status,
                format_figure(throughput) if isinstance(throughput, int | float) else "-",
                verdict_word(point.summary.get("validity") if point.summary else None),
                str(point.run_dir),
            ]
        )
    lines = format_table(header, rows, right=[False] * len(header), rule=False).splitlines()
    for point in points:
        if point.message:
            lines.append(f"p{point.index:03d}: {point.message}")
        if point.summary is not None and not (point.summary.get("validity") or {}).get(
            "valid", True
        ):
            lines.extend(
                f"p{point.index:03d}: {line.strip()}"
                for line in format_verdict(point.summary["validity"])
            )
    return "\n".join(lines)
