"""The launch protocol: prepare → start → wait → outcome → aggregate → archive.

Three launches implement it, and every command that runs a benchmark drives one of them
through :func:`execute`:

=====================  ==========================================  ==============================
launch                 where                                       used by
=====================  ==========================================  ==============================
``LocalLaunch``        :mod:`hpcbench.runtime.launcher`            ``run``, ``sweep --local``,
                                                                   ``explore``
``SlurmJobLaunch``     :mod:`hpcbench.slurm.submit`                ``submit``
``JobArrayLaunch``     :mod:`hpcbench.slurm.sweep`                 ``sweep``, ``explore --slurm``
=====================  ==========================================  ==============================

The steps, and what each launch does in them:

prepare
    Create the run directories and write what will be sent (``job.sbatch``, the array script);
    nothing runs yet. ``prepare(dry_run=True)`` returns the same :class:`Prepared` (the run
    directories and the text of what would be sent) and writes nothing: ``submit --dry-run``
    prints exactly what ``prepare`` would hand to ``sbatch``.
start
    Start the ranks (locally) or hand the script to ``sbatch``.
wait
    :meth:`Launch.wait`, the one polling loop (:func:`hpcbench.follow.poll_until`): it calls the
    launch's ``poll`` until everything it started has ended, with the launch's timeout, whose
    error names what did not arrive. Progress is printed from ``poll``.
outcome
    One :class:`RunOutcome` per run directory: done, failed (with the error that says why) or
    pending (submitted, not waited for). A Slurm launch records the job's final state here
    (``slurm.json``).
aggregate
    A finished run's rank files are read once, into ``summary.json`` and ``result.h5``; a Slurm
    job that aggregated itself as its last step has its summary reused. A run that cannot be
    aggregated becomes a failed outcome carrying the error.
archive
    With ``--archive DIR``, :func:`archive` (:func:`archive_runs` where the caller holds run
    directories, as ``explore`` does) adds every run that has a ``summary.json`` (a run whose
    summary says ``complete: false`` stays marked incomplete there). The command calls it after
    printing the result, so that an archive that refuses a run never hides the result.

A launch that is interrupted (Ctrl-C, SIGTERM) or whose wait raises is stopped and closed
(barrier state removed) before the exception goes on. A local launch ends its ranks; a Slurm
launch leaves its job to Slurm, as ``sbatch`` does, and on an interrupt says how to cancel or
collect it (on a timeout its error says so).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from hpcbench.errors import HpcbenchError
from hpcbench.follow import poll_until
from hpcbench.runfiles import RunFiles

Status = Literal["pending", "done", "failed", "done (earlier)"]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run ended: a local run, a Slurm job, or one task of a job array.

    ``launch_id`` identifies the launch the run's rank files name: the local launcher's ``L…``
    id, the Slurm job id, or ``JOB_TASK`` for an array task. ``state`` is Slurm's final state
    (None for a local run). ``error`` is the error of a failed run, ``message`` its text.
    """

    run_dir: Path
    status: Status
    launch_id: str | None = None
    state: str | None = None
    elapsed_s: float | None = None
    message: str = ""
    error: HpcbenchError | None = None
    summary: Mapping[str, Any] | None = None
    archive_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "done (earlier)")

    def failed(self, error: HpcbenchError) -> RunOutcome:
        """This outcome, failed with ``error``."""
        return replace(self, status="failed", error=error, message=str(error))

    def raise_if_failed(self) -> RunOutcome:
        """This outcome, or its error raised (a single run's caller: ``run``, ``submit``)."""
        if self.status == "failed":
            raise self.error if self.error is not None else HpcbenchError(self.message)
        return self


@dataclass(frozen=True, slots=True)
class Prepared:
    """What ``prepare`` wrote (or, in a dry run, would write): the run directories, and what
    is handed to the scheduler or started, each with its name and text: a script's path and
    its text, or ``rank N`` and its command line (the variables it sets, then the command)."""

    run_dirs: tuple[Path, ...]
    sent: tuple[tuple[str, str], ...] = ()


class Launch(abc.ABC):
    """One launch: a local run, a Slurm job or a job array (see the module's docstring).

    A subclass sets ``poll_s`` and ``timeout_s`` (None: no deadline of its own, for launches
    whose every part has its own timeout, such as the ranks' barriers).
    """

    poll_s: float = 1.0
    timeout_s: float | None = None

    @abc.abstractmethod
    def prepare(self, *, dry_run: bool = False) -> Prepared:
        """Create the run directories and write what will be sent (nothing with ``dry_run``)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start what ``prepare`` made: the ranks, or the job."""

    @abc.abstractmethod
    def poll(self) -> bool:
        """Look once (printing progress); True once everything started has ended."""

    @abc.abstractmethod
    def timed_out(self) -> Exception:
        """The error for a wait past ``timeout_s``: it names what did not arrive."""

    @abc.abstractmethod
    def outcomes(self) -> list[RunOutcome]:
        """How each run ended (pending when it was not waited for), recorded where needed."""

    def wait(self) -> None:
        """The one polling loop: ``poll`` until everything ended, or ``timed_out()``."""
        poll_until(
            lambda: True if self.poll() else None,
            poll_s=self.poll_s,
            timeout_s=self.timeout_s,
            timed_out=self.timed_out,
        )

    def aggregate(self, outcome: RunOutcome) -> Mapping[str, Any]:
        """The summary of a finished run, read from its rank files once."""
        from hpcbench.aggregate import aggregate_run

        return aggregate_run(outcome.run_dir)

    def stop(self, reason: BaseException) -> None:  # noqa: B027 - nothing running, nothing to stop
        """End what runs, or say what is left running; ``reason`` is the interrupt (Ctrl-C,
        SIGTERM) or the error that ended the wait."""

    def close(self) -> None:  # noqa: B027 - most launches hold nothing between the steps
        """Release what ``start`` took (logs, barrier state), whatever happened."""


def execute(
    launch: Launch,
    *,
    wait: bool = True,
    aggregate: bool = True,
) -> list[RunOutcome]:
    """Drive ``launch`` through every step; the outcome of each run, in order.

    ``wait`` False returns once the launch started (pending outcomes: ``submit --no-wait``);
    ``aggregate`` False leaves the finished runs' rank files as they are. Archiving is the
    caller's last step (:func:`archive`), after it printed the result.
    """
    launch.prepare()
    return follow(launch, wait=wait, aggregate=aggregate)


def follow(
    launch: Launch,
    *,
    wait: bool = True,
    aggregate: bool = True,
) -> list[RunOutcome]:
    """Every step after ``prepare`` (for a caller that prepares several launches first, as a
    local sweep makes every point's run directory before the first point runs)."""
    try:
        launch.start()
        if wait:
            launch.wait()
    except BaseException as exc:
        launch.stop(exc)
        raise
    finally:
        launch.close()
    outcomes = launch.outcomes()
    if not (wait and aggregate):
        return outcomes
    return [_aggregated(launch, outcome) for outcome in outcomes]


def _aggregated(launch: Launch, outcome: RunOutcome) -> RunOutcome:
    if outcome.status != "done":
        return outcome
    try:
        return replace(outcome, summary=launch.aggregate(outcome))
    except HpcbenchError as exc:
        return outcome.failed(exc)


def archive(outcomes: Sequence[RunOutcome], archive_dir: Path) -> list[RunOutcome]:
    """Add every run that has a ``summary.json`` to the archive; their outcomes with ids.

    Failed runs that still wrote a summary are archived too: the archive keeps them marked
    incomplete, so they can never pass for a complete result. Every run is tried; then one
    ArchiveError lists those that could not be added.
    """
    ids = archive_runs([o.run_dir for o in outcomes], archive_dir)
    return [replace(o, archive_id=ids.get(o.run_dir)) for o in outcomes]


def archive_runs(run_dirs: Sequence[Path], archive_dir: Path) -> dict[Path, str]:
    """Add every one of ``run_dirs`` that has a ``summary.json``; the archive id of each added."""
    from hpcbench.archive import add_runs

    return add_runs(archive_dir, [d for d in run_dirs if RunFiles(d).summary.is_file()])
