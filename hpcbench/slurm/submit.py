"""Submit a rendered job script, follow it, and explain how it ended.

What runs on the cluster is exactly the script ``hpcbench render`` prints: it is written once
into the run directory (``job.sbatch``) and that file is handed to ``sbatch``. submitit tracks
the job (its ``SlurmJob`` polls ``sacct`` for the state, array tasks included); no pickles are
written or loaded, because the ranks are started by the script's own ``srun``, not by
submitit's Python entry point. When accounting cannot answer (no slurmdbd), ``scontrol show
job`` is asked instead, so a cancelled job is never waited for forever.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.errors import HpcbenchError, SlurmError, UsageError
from hpcbench.follow import poll_until, progress_line, progress_phases
from hpcbench.jsonfile import read_json, write_atomic, write_json_atomic
from hpcbench.launch import Launch, Prepared, RunOutcome
from hpcbench.plan.model import Plan
from hpcbench.runfiles import JOB_SCRIPT, SLURM_FILE, RunFiles
from hpcbench.runtime.rundir import create_run_dir, site_record
from hpcbench.slurm.inputs import JobInputs
from hpcbench.slurm.nodelist import expand_nodelist
from hpcbench.slurm.render import render_job

# States after which a job never runs again (sacct/scontrol spellings).
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
)
_SRUN_TASK_ERROR = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (.+)")


def run_command(args: Sequence[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command; a missing binary or a hang becomes a SlurmError."""
    try:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise SlurmError(f"{args[0]}: not found; is this a Slurm login node?") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"{' '.join(args)}: no answer after {timeout_s:.0f} s") from exc


def slurm_version() -> str | None:
    """``22.05.8`` from ``sinfo --version``, or None when it cannot be read."""
    try:
        out = run_command(["sinfo", "--version"], timeout_s=20).stdout.split()
    except SlurmError:
        return None
    return out[1] if len(out) >= 2 else None


def sbatch(script: Path, extra_args: Sequence[str] = ()) -> str:
    """Submit ``script``; return the job id. Slurm's own message when sbatch refuses."""
    done = run_command(["sbatch", "--parsable", *extra_args, str(script)])
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise SlurmError(f"sbatch refused {script}: {message}")
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch {script}: unexpected answer {done.stdout.strip()!r}")
    return job_id


@dataclass(frozen=True, slots=True)
class JobState:
    """A job's state as accounting (or the controller) reports it."""

    job_id: str
    state: str
    exit_code: str = ""
    nodelist: str = ""
    reason: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def _scontrol_state(job_id: str) -> JobState | None:
    done = run_command(["scontrol", "show", "job", "-o", job_id], timeout_s=20)
    if done.returncode != 0 or "JobState=" not in done.stdout:
        return None
    fields = dict(
        item.split("=", 1) for item in done.stdout.split() if "=" in item and item[0] != "="
    )
    return JobState(
        job_id,
        fields.get("JobState", "UNKNOWN"),
        fields.get("ExitCode", ""),
        fields.get("NodeList", ""),
        fields.get("Reason", ""),
    )


class JobTracker:
    """Follows one job (or one array task, ``123_4``) through submitit's sacct watcher."""

    def __init__(self, job_id: str, folder: Path) -> None:
        import submitit

        self.job_id = job_id
        self._job: Any = submitit.SlurmJob(folder=folder, job_id=job_id)

    def state(self, refresh: bool = True) -> JobState:
        """The current state; accounting first, then the controller when accounting is off.

        submitit's watcher asks sacct about every registered job at once, so when following
        many array tasks one refresh per poll serves them all (``refresh=False`` for the rest).
        """
        info = self._job.watcher.get_info(self.job_id, mode="force" if refresh else "cache")
        state = (info.get("State") or "").split(" ")[0]
        # sacct can report the job PENDING for a moment after its steps completed (the database
        # is written asynchronously); the controller is asked in that case too.
        if state and state not in ("UNKNOWN", "PENDING"):
            return JobState(self.job_id, state, nodelist=info.get("NodeList", ""))
        fallback = _scontrol_state(self.job_id)
        if fallback is not None:
            return fallback
        return JobState(self.job_id, state or "UNKNOWN", nodelist=info.get("NodeList", ""))


class PatientPoller:
    """Asks trackers for states, riding out a controller that misses polls.

    A busy slurmctld misses polls ("Socket timed out on send/recv") and answers again a moment
    later: the last known state is kept until Slurm has been silent for ``controller_timeout_s``,
    then SlurmError names the job (which may still be running).
    """

    def __init__(self, echo: Callable[[str], None], controller_timeout_s: float = 300.0) -> None:
        self.echo = echo
        self.controller_timeout_s = controller_timeout_s
        self._silent_since: float | None = None

    def state(self, tracker: JobTracker, previous: JobState, refresh: bool = True) -> JobState:
        try:
            state = tracker.state(refresh=refresh)
        except SlurmError as exc:
            now = time.monotonic()
            if self._silent_since is None:
                self._silent_since = now
                self.echo(f"job {tracker.job_id}: Slurm did not answer ({exc}); retrying")
            elif now - self._silent_since > self.controller_timeout_s:
                raise SlurmError(
                    f"job {tracker.job_id}: Slurm has not answered for "
                    f"{now - self._silent_since:.0f} s ({exc}); the job may still run: follow "
                    f"it with squeue -j {tracker.job_id}"
                ) from exc
            return previous
        self._silent_since = None
        return state


def count_rank_files(run_dir: Path) -> int:
    return sum(1 for _ in run_dir.glob("rank-*.h5"))


class _JobWatch:
    """One look at a job per :meth:`step`: its state (printed when it changes) and, while it
    runs, the ranks' phases (printed when a phase changes, at most every ``progress_every_s``
    otherwise). The polling loop around it is :func:`hpcbench.follow.poll_until`."""

    def __init__(
        self,
        tracker: JobTracker,
        run_dir: Path,
        world_size: int,
        *,
        plan: Plan | None,
        timeout_s: float,
        progress_every_s: float,
        controller_timeout_s: float,
        echo: Callable[[str], None],
    ) -> None:
        self.tracker = tracker
        self.run_dir = run_dir
        self.world_size = world_size
        self.plan = plan
        self.timeout_s = timeout_s
        self.progress_every_s = progress_every_s
        self.echo = echo
        self.state = JobState(tracker.job_id, "UNKNOWN")
        self._files = RunFiles(run_dir)
        self._patient = PatientPoller(echo, controller_timeout_s)
        self._start = time.monotonic()
        self._last, self._last_phases, self._last_progress = "", "", 0.0
        self._done = 0

    def step(self) -> JobState | None:
        """The job's state once it is final, else None."""
        state = self.state = self._patient.state(self.tracker, self.state)
        self._done = count_rank_files(self.run_dir)
        job_id = self.tracker.job_id
        line = f"job {job_id}: {state.state}"
        if state.state == "PENDING" and state.reason and state.reason != "None":
            line += f" ({state.reason})"
        if state.state == "RUNNING":
            line += f" on {state.nodelist}" if state.nodelist else ""
            line += f", {self._done}/{self.world_size} rank files complete"
        if line != self._last:
            self.echo(line)
            self._last = line
        if state.state == "RUNNING" and self.plan is not None:
            now = time.monotonic()
            ranks = [p.rank for p in self.plan.ranks]
            progress = progress_line(self._files, ranks, now - self._start)
            phases = progress_phases(progress)
            if phases != self._last_phases or now - self._last_progress >= self.progress_every_s:
                self.echo(f"job {job_id}: {progress}")
                self._last_phases, self._last_progress = phases, now
        return state if state.final else None

    def timed_out(self) -> SlurmError:
        job_id = self.tracker.job_id
        return SlurmError(
            f"job {job_id} still {self.state.state} after {self.timeout_s:.0f} s of waiting "
            f"(rank files complete: {self._done}/{self.world_size}); it keeps running: follow "
            f"it with squeue -j {job_id}, then run 'hpcbench aggregate {self.run_dir}'"
        )


def wait_for_job(
    tracker: JobTracker,
    run_dir: Path,
    world_size: int,
    *,
    plan: Plan | None = None,
    poll_s: float = 1.0,
    timeout_s: float = 86400.0,
    progress_every_s: float = 10.0,
    controller_timeout_s: float = 300.0,
    echo: Callable[[str], None] = print,
) -> JobState:
    """Poll until the job reaches a final state, printing each change of state.

    While the job runs, the ranks' phases (from their status files, with ``plan``) are printed
    when a phase changes, and at most every ``progress_every_s`` otherwise. A poll that Slurm
    does not answer is retried; only a controller silent for ``controller_timeout_s`` ends the
    wait (the job itself may still be running).
    """
    watch = _JobWatch(
        tracker,
        run_dir,
        world_size,
        plan=plan,
        timeout_s=timeout_s,
        progress_every_s=progress_every_s,
        controller_timeout_s=controller_timeout_s,
        echo=echo,
    )
    return poll_until(watch.step, poll_s=poll_s, timeout_s=timeout_s, timed_out=watch.timed_out)


# srun's verbose binding reports, written to each task's stderr before the rank starts.
_BIND_REPORT = re.compile(r"^(cpu-bind=|gpu-bind:|mem-bind=)")


def _tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip() and not _BIND_REPORT.match(line)][
        -lines:
    ]
    return " | ".join(kept)


def explain_failure(
    state: JobState, run_dir: Path, world_size: int, job_err: Sequence[Path] | None = None
) -> str:
    """One line saying what failed: the state, the rank that died first and its stderr tail.

    ``job_err`` are the batch script's stderr files (default: ``logs/slurm-JOBID*.err``; an
    array task's lie in the sweep directory).
    """
    files = RunFiles(run_dir)
    logs = files.logs
    base = state.job_id.split("_")[0]
    if job_err is None:
        job_err = sorted(logs.glob(f"slurm-{base}*.err"))
    job_err = [p for p in job_err if p.is_file()]
    text = f"job {state.job_id} ended {state.state}"
    if state.exit_code and state.exit_code not in ("0:0", ""):
        text += f" (exit code {state.exit_code})"
    srun_lines = []
    first_lines = []
    for path in job_err:
        stopping = False
        for line in path.read_text().splitlines():
            # srun logs the tasks that failed first, then "Terminating StepId" when
            # --kill-on-bad-exit stops the others: what it logs after that are consequences
            # (a rank that handled the SIGTERM "Exited with exit code 143").
            stopping = stopping or "Terminating StepId" in line
            match = _SRUN_TASK_ERROR.search(line)
            if match:
                srun_lines.append(match)
                if not stopping:
                    first_lines.append(match)
    # With --kill-on-bad-exit, the first rank that exited on its own is the cause; the others
    # were killed by Slurm afterwards.
    for candidates in (first_lines, srun_lines):
        culprit = next((m for m in candidates if "Exited with exit code" in m.group(3)), None)
        culprit = culprit or (candidates[0] if candidates else None)
        if culprit is not None:
            break
    if culprit is not None:
        rank = culprit.group(2).split(",")[0].split("-")[0]
        text += f"; rank {rank} on {culprit.group(1)}: {culprit.group(3)}"
        tail = _tail(files.rank_err(int(rank)))
        if tail:
            text += f"; its stderr ends: {tail}"
        return text
    missing = [r for r in range(world_size) if not files.rank_file(r).exists()]
    if missing:
        text += f"; ranks without a result file: {missing}"
    tail = " | ".join(t for t in (_tail(p, 5) for p in job_err) if t)
    if tail:
        text += f"; job stderr ends: {tail}"
    return text


def job_record(
    state: JobState, *, submitted_at: str, script: Path, version: str | None
) -> dict[str, Any]:
    """What ``slurm.json`` and the summary's ``slurm_job`` block hold."""
    base, _, task = state.job_id.partition("_")
    return {
        "job_id": base,
        "array_task_id": int(task) if task else None,
        "state": state.state,
        "exit_code": state.exit_code or None,
        "nodelist": state.nodelist or None,
        "nodes": expand_nodelist(state.nodelist) if state.nodelist else [],
        "slurm_version": version,
        "submitted_at": submitted_at,
        "script": script.name,
    }


def write_job_record(
    run_dir: Path, state: JobState, *, submitted_at: str, script: Path, version: str | None
) -> dict[str, Any]:
    """Write the run's ``slurm.json`` for the job (or array task) in ``state``; the record."""
    record = job_record(state, submitted_at=submitted_at, script=script, version=version)
    write_json_atomic(RunFiles(run_dir).slurm_record, record)
    return record


def add_job_to_summary(run_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Put the job record into the run's summary (``run.slurm_job``), aggregating if needed.

    A job rendered by ``render``/``submit`` aggregates itself as its last step, with the rules
    the run was made with; its ``summary.json`` and ``result.h5`` are then reused rather than
    computed a second time (a large run takes seconds). A job array's task runs its point's
    job script, so a sweep point's summary is reused the same way.
    """
    from hpcbench.aggregate import aggregate_run

    files = RunFiles(run_dir)
    summary: Any = None
    if files.summary.is_file() and files.result.is_file():
        summary = read_json(files.summary, "run summary", UsageError)
    if not isinstance(summary, dict):
        summary = aggregate_run(run_dir)
    return put_job_record(run_dir, summary, record)


def put_job_record(
    run_dir: Path, summary: dict[str, Any], record: Mapping[str, Any]
) -> dict[str, Any]:
    """``summary`` with the job record as ``run.slurm_job``, written to ``summary.json``.

    The job's nodes are the allocation its ranks saw (``SLURM_JOB_NODELIST``, in the rank
    files) where they saw one: the controller's NodeList shrinks while a job completes (each
    node leaves it once its part is done), so a state polled then can name only some nodes.
    """
    from hpcbench.aggregate.result import write_summary

    run = summary.setdefault("run", {})
    record = dict(record)
    seen = run.get("slurm") or {}
    if seen.get("nodelist") and str(seen.get("job_id")) == str(record.get("job_id")):
        record["nodelist"] = seen["nodelist"]
        record["nodes"] = expand_nodelist(seen["nodelist"])
    run["slurm_job"] = record
    write_summary(RunFiles(run_dir).summary, summary)
    return summary


def refresh_job_record(run_dir: Path, echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """``slurm.json`` brought up to date: the job's state as Slurm reports it now.

    ``submit --no-wait`` leaves the record PENDING; ``hpcbench aggregate`` calls this later.
    None when the run has no ``slurm.json``, or when called from inside the job itself (the
    rendered script aggregates before its job has ended, so its final state is not known yet).
    When Slurm cannot answer, the record is kept as it is and ``echo`` says so.
    """
    path = Path(run_dir) / SLURM_FILE
    if not path.is_file():
        return None
    record = read_job_record(run_dir)
    if record.get("state") in FINAL_STATES:
        return record
    job_id, task = str(record.get("job_id")), record.get("array_task_id")
    if task is None and os.environ.get("SLURM_JOB_ID") == job_id:
        return None
    if task is not None and (
        os.environ.get("SLURM_ARRAY_JOB_ID"),
        os.environ.get("SLURM_ARRAY_TASK_ID"),
    ) == (job_id, str(task)):
        return None
    full_id = job_id if task is None else f"{job_id}_{task}"
    kept = f"{path}: job {full_id} stays recorded as {record.get('state')}"
    try:
        state = JobTracker(full_id, RunFiles(run_dir).submitit).state()
    except SlurmError as exc:
        echo(f"hpcbench: note: {kept}: {exc}")
        return record
    if state.state == "UNKNOWN":
        echo(f"hpcbench: note: {kept}: neither sacct nor scontrol knows the job")
        return record
    return write_job_record(
        run_dir,
        state,
        submitted_at=str(record.get("submitted_at") or ""),
        script=Path(str(record.get("script") or JOB_SCRIPT)),
        version=record.get("slurm_version"),
    )


def job_script(inputs: JobInputs, run_dir: Path) -> str:
    """The script that is sent for a job whose run directory is ``run_dir`` (made absolute,
    links resolved, as :func:`prepare` makes it); ``submit --dry-run`` prints this."""
    return render_job(inputs.request(Path(run_dir).resolve()), inputs.site.templates_dir)


def prepare(inputs: JobInputs, out: Path | None, argv: Sequence[str]) -> tuple[Path, Path]:
    """Create the run directory and write ``job.sbatch`` into it; returns (run_dir, script)."""
    run_dir, _ = create_run_dir(
        out,
        plan=inputs.plan,
        spec=inputs.spec,
        argv=argv,
        topology=inputs.node_type.topology,
        extra=site_record(inputs.site.name, inputs.site.path, inputs.node_type.name),
        site_config=inputs.site.path,
    )
    run_dir = run_dir.resolve()
    script = run_dir / JOB_SCRIPT
    write_atomic(script, job_script(inputs, run_dir), mode=0o700)
    return run_dir, script


def wait_limit_s(inputs: JobInputs) -> float:
    """How long to wait for a job: its time limit and 10 minutes for the queue, else a day."""
    minutes = inputs.time_limit_min or inputs.node_type.slurm.time_limit_min
    return minutes * 60.0 + 600.0 if minutes else 86400.0


class SlurmJobLaunch(Launch):
    """One run as one Slurm job: the Slurm implementation of the launch protocol
    (:mod:`hpcbench.launch`) for ``submit``.

    ``prepare`` creates the run directory and writes ``job.sbatch``; ``start`` hands it to
    ``sbatch`` and records the job (``slurm.json``, PENDING); ``wait`` follows it through
    submitit's sacct watcher; the outcome records its final state and, when it did not
    complete, a SlurmError naming the rank that failed first; ``aggregate`` reuses the summary
    the job wrote as its last step. An interrupted wait leaves the job to Slurm (it is not
    cancelled): follow it with ``squeue``, then ``hpcbench aggregate`` the run directory.
    """

    def __init__(
        self,
        inputs: JobInputs,
        out: Path | None,
        argv: Sequence[str],
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.inputs = inputs
        self.out = out
        self.argv = argv
        self.poll_s = poll_s
        self.timeout_s = timeout_s if timeout_s is not None else wait_limit_s(inputs)
        self.echo = echo
        self.run_dir: Path | None = None
        self.script: Path | None = None
        self.job_id: str | None = None
        self.record: dict[str, Any] = {}
        self._submitted: tuple[str | None, str] = (None, "")
        self._watch: _JobWatch | None = None

    def prepare(self, *, dry_run: bool = False) -> Prepared:
        if dry_run:
            # The script prepare() writes: the same function, for the run directory it makes.
            directory = self.out if self.out is not None else Path("hpcbench-runs") / "RUN_ID"
            script = directory.resolve() / JOB_SCRIPT
            return Prepared((directory,), ((str(script), job_script(self.inputs, directory)),))
        self.run_dir, self.script = prepare(self.inputs, self.out, self.argv)
        return Prepared((self.run_dir,), ((str(self.script), self.script.read_text()),))

    def start(self) -> None:
        if self.run_dir is None or self.script is None:
            raise RuntimeError("SlurmJobLaunch.start() before prepare()")
        version = slurm_version()
        submitted_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.job_id = sbatch(self.script)
        self._submitted = (version, submitted_at)
        self.echo(f"submitted job {self.job_id}: {self.script}")
        self._record(JobState(self.job_id, "PENDING"))

    def _record(self, state: JobState) -> None:
        assert self.run_dir is not None and self.script is not None
        version, submitted_at = self._submitted
        self.record = write_job_record(
            self.run_dir, state, submitted_at=submitted_at, script=self.script, version=version
        )

    def poll(self) -> bool:
        if self._watch is None:
            assert self.run_dir is not None and self.job_id is not None
            self._watch = _JobWatch(
                JobTracker(self.job_id, RunFiles(self.run_dir).submitit),
                self.run_dir,
                self.inputs.plan.world_size,
                plan=self.inputs.plan,
                timeout_s=self.timeout_s or 86400.0,
                progress_every_s=10.0,
                controller_timeout_s=300.0,
                echo=self.echo,
            )
        return self._watch.step() is not None

    def timed_out(self) -> Exception:
        assert self._watch is not None
        return self._watch.timed_out()

    def outcomes(self) -> list[RunOutcome]:
        assert self.run_dir is not None
        state = self._watch.state if self._watch is not None else None
        if state is None or not state.final:
            return [RunOutcome(self.run_dir, "pending", self.job_id, "PENDING")]
        self._record(state)
        outcome = RunOutcome(self.run_dir, "done", self.job_id, state.state)
        if state.state == "COMPLETED":
            return [outcome]
        error = SlurmError(explain_failure(state, self.run_dir, self.inputs.plan.world_size))
        return [outcome.failed(error)]

    def aggregate(self, outcome: RunOutcome) -> Mapping[str, Any]:
        return add_job_to_summary(outcome.run_dir, self.record)

    def stop(self, reason: BaseException) -> None:
        # The job is Slurm's, not ours: interrupting the wait must not cancel a job that may
        # have queued for hours. A timeout's error already says this; an interrupt's does not.
        if self.job_id is not None and not isinstance(reason, HpcbenchError):
            self.echo(
                f"job {self.job_id} keeps running (not cancelled): 'scancel {self.job_id}' "
                f"cancels it; once it ended, 'hpcbench aggregate {self.run_dir}' collects it"
            )


def read_job_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SLURM_FILE
    data: dict[str, Any] = read_json(path, "Slurm job record", UsageError)
    return data
