"""The launch protocol (hpcbench/launch.py) and its three implementations' prepare step.

The protocol's driver is tested with a launch that records the steps it was taken through; the
local launcher, a Slurm job and a job array are tested for what a dry run shows: exactly what
the real prepare writes, and nothing written. Their start/wait/outcome steps run for real in
test_runtime_rank.py, test_faults.py, test_slurm_jobs.py and test_slurm_sweep.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hpcbench.errors import MetricsError, RunError, SlurmError
from hpcbench.launch import Launch, Prepared, RunOutcome, execute
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.runfiles import RunFiles
from hpcbench.runtime.launcher import LocalLaunch
from hpcbench.runtime.rundir import create_run_dir
from hpcbench.site import load_site
from hpcbench.slurm.inputs import JobSettings, job_inputs
from hpcbench.slurm.submit import SlurmJobLaunch
from hpcbench.slurm.sweep import JobArrayLaunch, SweepSpec, plan_points
from hpcbench.spec import RunSpec, SpecChoices

SITE = "hpe-apollo6500-gen10"


class Recorder(Launch):
    """A launch of two runs that records the steps it is taken through."""

    poll_s = 0.0

    def __init__(
        self, tmp: Path, *, polls: int = 2, fail_wait: BaseException | None = None
    ) -> None:
        self.tmp = tmp
        self.steps: list[str] = []
        self.polls = polls
        self.fail_wait = fail_wait
        self.bad_aggregate: set[Path] = set()

    def prepare(self, *, dry_run: bool = False) -> Prepared:
        self.steps.append("prepare")
        return Prepared((self.tmp / "a", self.tmp / "b"))

    def start(self) -> None:
        self.steps.append("start")

    def poll(self) -> bool:
        self.steps.append("poll")
        if self.fail_wait is not None:
            raise self.fail_wait
        self.polls -= 1
        return self.polls <= 0

    def timed_out(self) -> Exception:
        return RunError("two runs did not end")

    def outcomes(self) -> list[RunOutcome]:
        self.steps.append("outcomes")
        ended = self.polls <= 0
        return [RunOutcome(self.tmp / n, "done" if ended else "pending") for n in "ab"]

    def aggregate(self, outcome: RunOutcome) -> Mapping[str, Any]:
        self.steps.append(f"aggregate {outcome.run_dir.name}")
        if outcome.run_dir in self.bad_aggregate:
            raise MetricsError(f"{outcome.run_dir}: rank-00001.h5 is missing")
        return {"run": outcome.run_dir.name}

    def stop(self, reason: BaseException) -> None:
        self.steps.append(f"stop ({type(reason).__name__})")

    def close(self) -> None:
        self.steps.append("close")


def test_execute_takes_a_launch_through_every_step_in_order(tmp_path: Path) -> None:
    launch = Recorder(tmp_path)
    outcomes = execute(launch)
    assert launch.steps == [
        "prepare", "start", "poll", "poll", "close", "outcomes", "aggregate a", "aggregate b",
    ]  # fmt: skip
    assert [o.summary for o in outcomes] == [{"run": "a"}, {"run": "b"}]
    assert all(o.ok for o in outcomes)


def test_a_run_that_cannot_be_aggregated_is_a_failed_outcome_not_a_lost_sweep(
    tmp_path: Path,
) -> None:
    launch = Recorder(tmp_path)
    launch.bad_aggregate = {tmp_path / "a"}
    first, second = execute(launch)
    assert first.status == "failed" and isinstance(first.error, MetricsError)
    assert first.message.endswith("rank-00001.h5 is missing")
    assert second.summary == {"run": "b"}
    with pytest.raises(MetricsError, match=r"rank-00001\.h5 is missing"):
        first.raise_if_failed()


def test_no_wait_returns_pending_outcomes_and_aggregates_nothing(tmp_path: Path) -> None:
    launch = Recorder(tmp_path)
    outcomes = execute(launch, wait=False)
    assert launch.steps == ["prepare", "start", "close", "outcomes"]
    assert [o.status for o in outcomes] == ["pending", "pending"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), RunError("barrier timed out")])
def test_an_interrupted_wait_stops_and_closes_the_launch(
    tmp_path: Path, interrupt: BaseException
) -> None:
    launch = Recorder(tmp_path, fail_wait=interrupt)
    with pytest.raises(type(interrupt)):
        execute(launch)
    assert launch.steps == [
        "prepare",
        "start",
        "poll",
        f"stop ({type(interrupt).__name__})",
        "close",
    ]


def test_the_wait_ends_with_the_launch_s_own_timeout_error(tmp_path: Path) -> None:
    launch = Recorder(tmp_path, polls=10**9)
    launch.timeout_s = 0.05
    with pytest.raises(RunError, match="two runs did not end"):
        execute(launch)
    assert launch.steps[-2:] == ["stop (RunError)", "close"]


def _apollo_plan(ranks: int = 2) -> Any:
    topology = load_site(SITE).node_type(None).topology
    return topology, make_plan(topology, PlanRequest(ranks=ranks))


def test_local_dry_run_lists_each_rank_s_command_and_writes_nothing(tmp_path: Path) -> None:
    topology, plan = _apollo_plan()
    out = tmp_path / "run"

    def create() -> Any:
        return create_run_dir(out, plan=plan, spec=RunSpec(), argv=["test"], topology=topology)

    launch = LocalLaunch(plan, out, create=create, use_numactl=False, python="py")
    dry = launch.prepare(dry_run=True)
    assert not out.exists()
    assert dry.run_dirs == (out,)
    assert [name for name, _ in dry.sent] == ["rank 0", "rank 1"]
    for placement, (_, line) in zip(plan.ranks, dry.sent, strict=True):
        assert f"CUDA_VISIBLE_DEVICES={','.join(map(str, placement.gpus))} " in line
        assert f"HPCBENCH_LAUNCH_ID={launch.launch_id} " in line
        assert line.endswith(f"py -m hpcbench.runtime.rank {out}")
    real = launch.prepare()
    assert RunFiles(out).plan.is_file() and launch.info is not None
    assert real.sent == dry.sent  # the same commands, for the directory it made


def test_submit_dry_run_is_what_prepare_writes(tmp_path: Path) -> None:
    inputs = job_inputs(JobSettings(site=SITE), PlanRequest(ranks=2), SpecChoices())
    out = tmp_path / "run"
    launch = SlurmJobLaunch(inputs, out, ["hpcbench", "submit"])
    ((name, dry_text),) = launch.prepare(dry_run=True).sent
    assert not out.exists()
    prepared = launch.prepare()
    ((real_name, real_text),) = prepared.sent
    assert (name, dry_text) == (real_name, real_text)
    assert RunFiles(out).job_script.read_text() == dry_text
    assert prepared.run_dirs == (out.resolve(),)


def test_a_stopped_slurm_launch_leaves_its_job_and_says_so_on_an_interrupt(
    tmp_path: Path,
) -> None:
    """The job is Slurm's: stop() cancels nothing. After an interrupt it says how to cancel or
    collect the job; after an error (a wait past its limit) the error says that already."""
    inputs = job_inputs(JobSettings(site=SITE), PlanRequest(ranks=2), SpecChoices())
    lines: list[str] = []
    launch = SlurmJobLaunch(inputs, tmp_path / "run", ["hpcbench", "submit"], echo=lines.append)
    launch.stop(KeyboardInterrupt())
    assert lines == []  # nothing submitted yet
    launch.prepare()
    launch.job_id = "42"  # as start() records it, without a cluster
    launch.stop(SlurmError("job 42 still PENDING after 5 s of waiting; it keeps running: ..."))
    assert lines == []
    launch.stop(KeyboardInterrupt())
    run_dir = (tmp_path / "run").resolve()
    assert lines == [
        "job 42 keeps running (not cancelled): 'scancel 42' cancels it; once it ended, "
        f"'hpcbench aggregate {run_dir}' collects it"
    ]


def test_job_array_dry_run_is_what_prepare_writes(tmp_path: Path) -> None:
    spec = SweepSpec(
        "s",
        SITE,
        None,
        {"ranks": 2},
        (("batch_size", (32, 64)),),
        tmp_path / "sweep",
    )
    points = plan_points(spec)
    launch = JobArrayLaunch(spec, points, spec.out.resolve(), ["hpcbench", "sweep"])
    dry = launch.prepare(dry_run=True)
    assert not spec.out.exists()
    real = launch.prepare()
    # Point scripts are byte-identical; the array script differs only in its time stamp.
    assert real.sent[:2] == dry.sent[:2]
    assert [name for name, _ in real.sent[:2]] == [
        str(RunFiles(p.run_dir).job_script) for p in points
    ]
    assert real.sent[2][1] == dry.sent[2][1]
    assert Path(real.sent[2][0]).read_text() == real.sent[2][1]
    assert real.run_dirs == tuple(p.run_dir for p in points)


def test_a_stopped_job_array_is_left_to_slurm_and_an_interrupt_says_so(tmp_path: Path) -> None:
    spec = SweepSpec("s", SITE, None, {"ranks": 2}, (("batch_size", (32,)),), tmp_path / "sweep")
    lines: list[str] = []
    points = plan_points(spec)
    launch = JobArrayLaunch(spec, points, spec.out, ["hpcbench", "sweep"], echo=lines.append)
    launch.stop(KeyboardInterrupt())
    assert lines == []  # nothing submitted yet
    launch.array_id = "7"  # as start() records it, without a cluster
    launch.stop(RunError("job array 7 not finished after 5 s (...); it keeps running: ..."))
    assert lines == []
    launch.stop(KeyboardInterrupt())
    assert lines == [
        "job array 7 keeps running (not cancelled): 'scancel 7' cancels it; once it ended, the "
        "same command run again (sweep or explore) collects it"
    ]
