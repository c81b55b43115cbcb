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

import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hpcbench.configfile import read_yaml_file, validate
from hpcbench.cpulist import is_decimal
from hpcbench.errors import ConfigError, HpcbenchError, RunError, SlurmError, UsageError
from hpcbench.jsonfile import read_json, write_atomic, write_json_atomic
from hpcbench.launch import Launch, Prepared, RunOutcome, execute, follow
from hpcbench.plan.planner import PlanRequest
from hpcbench.runfiles import LOGS_DIR, SUBMITIT_DIR, RunFiles
from hpcbench.runtime.local_run import LocalInputs, plan_local
from hpcbench.site import NodeType, SiteConfig
from hpcbench.slurm.inputs import JobInputs, JobSettings, job_inputs
from hpcbench.slurm.render import ArrayPoint, render_array
from hpcbench.slurm.submit import (
    FINAL_STATES,
    JobState,
    JobTracker,
    PatientPoller,
    add_job_to_summary,
    explain_failure,
    job_script,
    prepare,
    put_job_record,
    refresh_job_record,
    sbatch,
    slurm_version,
    write_job_record,
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
    # How its run ended (the one result type of every launch); None until it ran.
    outcome: RunOutcome | None = None

    @property
    def status(self) -> str:
        return "pending" if self.outcome is None else self.outcome.status

    @property
    def message(self) -> str:
        return "" if self.outcome is None else self.outcome.message

    @property
    def summary(self) -> Mapping[str, Any] | None:
        return None if self.outcome is None else self.outcome.summary


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
    """Run every point that is not complete yet; return all points with their outcome.

    A Slurm sweep is one :class:`JobArrayLaunch`; a local one is a
    :class:`~hpcbench.runtime.launcher.LocalLaunch` per point, every point's run directory made
    before the first one runs, the points run one after another.
    """
    points = plan_points(spec, local=local)
    sweep_dir = spec.out.resolve()
    _check_same_sweep(spec, sweep_dir)
    pending = []
    for point in points:
        if is_complete(point.run_dir):
            summary = _earlier_summary(point.run_dir, echo)
            point.outcome = RunOutcome(point.run_dir, "done (earlier)", summary=summary)
            continue
        set_aside(point.run_dir)
        pending.append(point)
    echo(
        f"sweep {spec.name}: {plural(len(points), 'point')}, {len(pending)} to run, in {sweep_dir}"
    )
    if not pending:
        return points
    if local:
        _run_local(pending, argv, spec.python, echo)
        return points
    launch = JobArrayLaunch(
        spec, pending, sweep_dir, argv, poll_s=poll_s, timeout_s=timeout_s, echo=echo
    )
    for point, outcome in zip(pending, execute(launch), strict=True):
        point.outcome = outcome
    return points


def _earlier_summary(run_dir: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """A point that completed in an earlier run of the sweep: its summary, with its Slurm task's
    final record put in where that run left before the task ended (interrupted, or past its
    wait), as 'hpcbench aggregate' would."""
    from hpcbench.aggregate import read_summary

    summary = read_summary(run_dir)
    known = (summary.get("run") or {}).get("slurm_job") or {}
    if known.get("state") in FINAL_STATES:
        return summary
    record = refresh_job_record(run_dir, echo)
    if record is None or record.get("state") not in FINAL_STATES:
        return summary
    return put_job_record(run_dir, summary, record)


def _point_argv(argv: Sequence[str], point: PointRun) -> list[str]:
    """The command recorded in a point's run.json: the sweep's, and which point it is."""
    return [*argv, f"(sweep point {point.index})"]


def _run_local(
    pending: list[PointRun],
    argv: Sequence[str],
    spec_python: str | None,
    echo: Callable[[str], None],
) -> None:
    from hpcbench.runtime.launcher import LocalLaunch

    launches = []
    for point in pending:
        inputs = point.inputs
        if not isinstance(inputs, LocalInputs):
            raise TypeError("a local sweep's points are planned here (plan_points local=True)")
        launch = LocalLaunch(
            inputs.plan,
            point.run_dir,
            create=functools.partial(
                inputs.create_run_dir, point.run_dir, _point_argv(argv, point)
            ),
            python=spec_python or sys.executable,
        )
        launch.prepare()
        launches.append(launch)
    for point, launch in zip(pending, launches, strict=True):
        echo(f"point {point.index} ({_label(point.params)}): running locally")
        try:
            (point.outcome,) = follow(launch)
        except (RunError, UsageError) as exc:  # a rank that could not start
            point.outcome = RunOutcome(point.run_dir, "failed").failed(exc)
        if point.status == "failed":
            echo(f"point {point.index}: failed: {point.message}")


class JobArrayLaunch(Launch):
    """A sweep's pending points as one Slurm job array: the array implementation of the launch
    protocol (:mod:`hpcbench.launch`).

    ``prepare`` makes every point's run directory with its ``job.sbatch`` (what ``hpcbench
    render`` shows for that point) and writes the array script, which runs one point's script
    per task; ``start`` submits it; ``wait`` follows every task, one sacct query per poll for
    all of them; each point's outcome records its task's final state (``slurm.json``) and,
    for a task that did not complete, why; ``aggregate`` reuses a summary the point's job
    wrote, else aggregates its rank files.
    """

    def __init__(
        self,
        spec: SweepSpec,
        pending: Sequence[PointRun],
        sweep_dir: Path,
        argv: Sequence[str],
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        jobs = [p.inputs for p in pending]
        if not jobs or not all(isinstance(job, JobInputs) for job in jobs):
            raise TypeError("a Slurm sweep's points are planned as jobs (plan_points local=False)")
        self.spec = spec
        self.pending = list(pending)
        self.sweep_dir = sweep_dir
        self.argv = argv
        self.poll_s = poll_s
        self.timeout_s = timeout_s or 86400.0
        self.echo = echo
        self.script: Path | None = None
        self.array_id: str | None = None
        self._submitted: tuple[str | None, str] = (None, "")
        self._trackers: dict[int, JobTracker] = {}
        self._states: dict[int, JobState] = {}
        self._records: dict[Path, dict[str, Any]] = {}
        self._patient = PatientPoller(echo)
        self._last = ""

    @staticmethod
    def _job(point: PointRun) -> JobInputs:
        assert isinstance(point.inputs, JobInputs)
        return point.inputs

    def prepare(self, *, dry_run: bool = False) -> Prepared:
        sent = []
        for point in self.pending:
            if dry_run:
                text = job_script(self._job(point), point.run_dir)
            else:
                _, script = prepare(self._job(point), point.run_dir, _point_argv(self.argv, point))
                text = script.read_text()
            sent.append((str(RunFiles(point.run_dir).job_script), text))
        first = self._job(self.pending[0])
        text = render_array(
            [
                ArrayPoint(p.index, str(RunFiles(p.run_dir).job_script), self._job(p).plan)
                for p in self.pending
            ],
            first.node_type,
            str(self.sweep_dir),
            job_name=self.spec.name,
            max_parallel=self.spec.max_parallel,
            time_limit_min=self.spec.time_limit_min,
            site_templates_dir=first.site.templates_dir,
            nodelist=self.spec.nodelist,
        )
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        script = self.sweep_dir / f"array-{stamp}.sbatch"
        if not dry_run:
            (self.sweep_dir / LOGS_DIR).mkdir(exist_ok=True)
            write_atomic(script, text, mode=None)
            self.script = script
        sent.append((str(script), text))
        return Prepared(tuple(p.run_dir for p in self.pending), tuple(sent))

    def start(self) -> None:
        if self.script is None:
            raise RuntimeError("JobArrayLaunch.start() before prepare()")
        version = slurm_version()
        submitted_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.array_id = sbatch(self.script)
        self._submitted = (version, submitted_at)
        self.echo(
            f"submitted job array {self.array_id} ({plural(len(self.pending), 'task')}): "
            f"{self.script}"
        )
        self._trackers = {
            p.index: JobTracker(f"{self.array_id}_{p.index}", self.sweep_dir / SUBMITIT_DIR)
            for p in self.pending
        }
        # Each point records its task at once, PENDING, as submit does for one job: a sweep
        # left running (interrupted, or past its wait) still knows its tasks when run again.
        for point in self.pending:
            write_job_record(
                point.run_dir,
                JobState(f"{self.array_id}_{point.index}", "PENDING"),
                submitted_at=submitted_at,
                script=self.script,
                version=version,
            )

    def poll(self) -> bool:
        refresh = True
        for point in self.pending:
            if point.index not in self._states or not self._states[point.index].final:
                tracker = self._trackers[point.index]
                previous = self._states.get(point.index, JobState(tracker.job_id, "UNKNOWN"))
                self._states[point.index] = self._patient.state(tracker, previous, refresh)
                # submitit's watcher asks sacct about every task at once: one refresh a poll.
                refresh = False
        counts: dict[str, int] = {}
        for state in self._states.values():
            counts[state.state] = counts.get(state.state, 0) + 1
        line = f"array {self.array_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if line != self._last:
            self.echo(line)
            self._last = line
        return all(s.final for s in self._states.values())

    def timed_out(self) -> Exception:
        return RunError(
            f"job array {self.array_id} not finished after {self.timeout_s:.0f} s "
            f"({self._last}); it keeps running: once it ended, the same command run again "
            "collects it"
        )

    def outcomes(self) -> list[RunOutcome]:
        assert self.script is not None
        version, submitted_at = self._submitted
        outcomes = []
        for point in self.pending:
            state = self._states.get(point.index)
            if state is None or not state.final:
                task = f"{self.array_id}_{point.index}"
                outcomes.append(RunOutcome(point.run_dir, "pending", task))
                continue
            self._records[point.run_dir] = write_job_record(
                point.run_dir, state, submitted_at=submitted_at, script=self.script, version=version
            )
            outcome = RunOutcome(point.run_dir, "done", state.job_id, state.state)
            if state.state != "COMPLETED":
                array_err = self.sweep_dir / LOGS_DIR / f"slurm-{self.array_id}_{point.index}.err"
                message = explain_failure(
                    state, point.run_dir, self._job(point).plan.world_size, [array_err]
                )
                outcome = outcome.failed(SlurmError(message))
            outcomes.append(outcome)
        return outcomes

    def aggregate(self, outcome: RunOutcome) -> Mapping[str, Any]:
        return add_job_to_summary(outcome.run_dir, self._records[outcome.run_dir])

    def stop(self, reason: BaseException) -> None:
        # As for one job (SlurmJobLaunch.stop): the array is left to Slurm, and said so.
        if self.array_id is not None and not isinstance(reason, HpcbenchError):
            self.echo(
                f"job array {self.array_id} keeps running (not cancelled): "
                f"'scancel {self.array_id}' cancels it; once it ended, the same command run "
                "again (sweep or explore) collects it"
            )


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
