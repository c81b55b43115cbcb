"""Running an exploration: every candidate R times, interleaved, locally or as one job array.

Point ``i`` of an exploration is run ``i // C + 1`` of candidate ``i % C`` (C candidates), so
the order is A B C A B C ...: drift in clocks, temperature or neighbours hits every candidate
alike. Each point is a normal run directory ``DIR/pNNN``. Locally the points run one after
another through ``hpcbench run``'s own code (:func:`~hpcbench.runtime.local_run.run_local`);
with Slurm they are one job array (the sweep machinery) throttled to one task at a time on one
node. Points whose ``summary.json`` exists are kept, so a second call resumes; raising the
repeat count adds runs after the existing ones.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbench.errors import RunError, UsageError
from hpcbench.explore.verdict import RunRecord
from hpcbench.jsonfile import read_json, write_json_atomic
from hpcbench.plan.candidates import CandidateSet, placement_key, request_options
from hpcbench.plan.model import Plan
from hpcbench.runfiles import RunFiles
from hpcbench.spec import SpecChoices

if TYPE_CHECKING:
    from hpcbench.explore import LocalTarget

REQUEST_FILE = "explore-request.json"
RESULT_FILE = "explore.json"


@dataclass(frozen=True, slots=True)
class Point:
    """One run of one candidate."""

    index: int
    label: str
    repeat: int
    run_dir: Path


def points(candidates: CandidateSet, repeats: int, out: Path) -> list[Point]:
    """Every run, interleaved: run 1 of every candidate, then run 2 of every candidate ...

    >>> from types import SimpleNamespace as NS
    >>> cs = NS(candidates=[NS(label="1x2"), NS(label="2x1")])
    >>> [(p.label, p.repeat) for p in points(cs, 2, Path("d"))]  # type: ignore[arg-type]
    [('1x2', 1), ('2x1', 1), ('1x2', 2), ('2x1', 2)]
    """
    labels = [c.label for c in candidates.candidates]
    return [
        Point(r * len(labels) + i, label, r + 1, out / f"p{r * len(labels) + i:03d}")
        for r in range(repeats)
        for i, label in enumerate(labels)
    ]


def check_same_exploration(
    out: Path, record: Mapping[str, Any], node: str | None = None
) -> str | None:
    """Refuse to resume into a folder that holds another exploration (repeats may differ).

    Returns the Slurm node the earlier runs used (None when none was chosen), so that a resumed
    exploration measures on the same hardware; ``node`` records the node now chosen.
    """
    path = out / REQUEST_FILE
    old: Any = None
    if path.is_file():
        old = read_json(path, "exploration record", UsageError)
        same = isinstance(old, dict) and {k: v for k, v in old.items() if k != "node"} == (
            json.loads(json.dumps(record))
        )
        # A folder whose runs all failed holds nothing to keep: the fixed command may reuse it
        # (its failed run directories are set aside, not deleted).
        if not same and not any(out.glob("p*/summary.json")):
            write_json_atomic(path, {**record, "node": node})
            return node
        if not same:
            raise UsageError(
                f"{out} holds another exploration (its {REQUEST_FILE} differs: other "
                f"candidates, settings or node type); choose another --out"
            )
        if node is None or old.get("node") == node:
            return old.get("node")
        if old.get("node") is not None:
            raise UsageError(
                f"{out}: the earlier runs used node {old['node']}, not {node}: all runs of an "
                f"exploration must see the same hardware; drop --nodelist or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**record, "node": node})
    return node


def read_headline(run_dir: Path) -> tuple[float | None, str, tuple[str, ...]]:
    """A finished run's common-window throughput (or None and why it does not count), and the
    validity checks its summary says it failed."""
    from hpcbench.aggregate import read_summary

    summary = read_summary(run_dir)
    validity = summary.get("validity")
    checks = validity.get("checks", []) if isinstance(validity, dict) else []
    failed = tuple(
        str(c.get("name")) for c in checks if isinstance(c, dict) and not c.get("passed")
    )
    if not summary.get("complete", True):
        return None, "incomplete run (a rank did not finish its timed phase)", failed
    value = summary.get("throughput", {}).get("common_window_img_s")
    if not isinstance(value, int | float) or value <= 0:
        return None, f"no common-window throughput in its summary.json ({value!r})", failed
    return float(value), "", failed


def run_local_points(
    candidates: CandidateSet,
    todo: Sequence[Point],
    *,
    spec: SpecChoices,
    local: LocalTarget,
    argv: Sequence[str],
    use_numactl: bool | None,
    echo: Callable[[str], None],
) -> dict[int, str]:
    """Run the points here, one after another; return the failure message of each failed one."""
    from hpcbench.runtime.local_run import run_local
    from hpcbench.slurm.sweep import set_aside

    failures: dict[int, str] = {}
    for n, point in enumerate(todo, 1):
        candidate = candidates.by_label(point.label)
        echo(f"explore: run {n}/{len(todo)}: {point.label} (run {point.repeat}) in {point.run_dir}")
        set_aside(point.run_dir)
        try:
            outcome = run_local(
                topology=local.topology,
                request=candidate.request,
                spec=spec,
                site=local.site,
                node_type=local.node_type,
                out=point.run_dir,
                argv=[*argv, f"(explore point {point.index}: {point.label} run {point.repeat})"],
                use_numactl=use_numactl,
                quiet=True,
            )
        except RunError as exc:
            failures[point.index] = str(exc)
            echo(f"explore: {point.label} run {point.repeat} failed: {exc}")
            if len(failures) == n == len(candidates.candidates):
                # Every candidate failed once and none ran: the cause is common (a model the
                # backend lacks, a missing package); more runs would only repeat it.
                echo("explore: every candidate failed its first run; stopping here")
                break
            continue
        ran = Plan.from_json(read_json(RunFiles(outcome.run_dir).plan, "plan file"))
        if placement_key(ran) != placement_key(candidate.plan):
            raise RunError(
                f"{point.run_dir}: the run's plan differs from candidate {point.label}'s "
                f"(an hpcbench bug: please report it with both plan.json files)"
            )
    return failures


def pick_node(partition: str | None, timeout_s: float = 30.0) -> str:
    """A node of the partition for every run: an idle one if any, else any usable one."""
    command = ["sinfo", "-h", "-N", "-o", "%N %t"]
    if partition:
        command += ["-p", partition]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(
            f"cannot list the partition's nodes with sinfo ({exc}); give --nodelist"
        ) from None
    if done.returncode != 0:
        raise RunError(f"sinfo failed: {done.stderr.strip() or done.returncode}; give --nodelist")
    states = [line.split() for line in done.stdout.splitlines() if len(line.split()) == 2]
    usable = ("idle", "mix", "alloc", "comp")
    for wanted in (("idle",), usable):
        for node, state in states:
            if state.rstrip("*~#!%$@^-").startswith(wanted):
                return node
    where = f"partition {partition}" if partition else "the cluster"
    raise RunError(f"no usable node in {where} (sinfo: {done.stdout.strip()!r}); give --nodelist")


def run_slurm_points(
    candidates: CandidateSet,
    all_points: Sequence[Point],
    *,
    out: Path,
    site: str,
    partition: str | None,
    spec: SpecChoices,
    nodelist: str,
    python: str | None,
    time_limit_min: int | None,
    argv: Sequence[str],
    poll_s: float,
    timeout_s: float | None,
    echo: Callable[[str], None],
) -> dict[int, str]:
    """Run the points as one job array on one node, one task at a time (the sweep machinery)."""
    from hpcbench.slurm.sweep import SweepSpec, run_sweep

    listed = tuple(
        {
            "candidate": p.label,
            "repeat": p.repeat,
            **request_options(candidates.by_label(p.label).request),
        }
        for p in all_points
    )
    sweep = SweepSpec(
        name=f"explore-{out.name}" if out.name[:1].isalnum() else "explore",
        site=site,
        partition=partition,
        base=dict(spec.changes),
        base_spec=spec.base,
        grid=(("candidate", tuple(c.label for c in candidates.candidates)),),
        out=out,
        # One task at a time: two runs on one node at once would disturb each other.
        max_parallel=1,
        time_limit_min=time_limit_min,
        python=python,
        listed_points=listed,
        label_keys=("candidate", "repeat"),
        nodelist=nodelist,
    )
    done = run_sweep(sweep, local=False, argv=argv, poll_s=poll_s, timeout_s=timeout_s, echo=echo)
    return {p.index: p.message or p.status for p in done if p.status == "failed"}


def collect(todo_failures: Mapping[int, str], all_points: Sequence[Point]) -> list[RunRecord]:
    """A record of every point: its throughput from its own summary.json, or why it has none."""
    records = []
    for point in all_points:
        value: float | None = None
        failed: tuple[str, ...] = ()
        message = todo_failures.get(point.index, "")
        if not message:
            if RunFiles(point.run_dir).summary.is_file():
                value, message, failed = read_headline(point.run_dir)
            else:
                message = "no summary.json"
        records.append(
            RunRecord(point.label, point.repeat, str(point.run_dir), value, message.strip(), failed)
        )
    return records
