"""The local launcher: start a plan's ranks on this machine and watch them.

:class:`LocalLaunch` is the local implementation of the launch protocol
(:mod:`hpcbench.launch`). Every rank is a child of the ``hpcbench run`` process, leading its own
process group (so a Ctrl-C reaches only the launcher, which then stops the ranks in order),
pinned with ``numactl`` when it is installed, else with ``sched_setaffinity`` and
``set_mempolicy`` in the child before exec (both survive exec), and given
``CUDA_VISIBLE_DEVICES`` from the plan. Its stdout and stderr go to
``RUN_DIR/logs/rank-NNNNN.{out,err}``. When a rank fails the others are stopped and the
outcome's :class:`RunError` names the rank to blame and the tail of its stderr; Ctrl-C stops
every rank and removes the barrier state.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

from hpcbench.errors import RunError, UsageError
from hpcbench.follow import progress_line
from hpcbench.launch import Launch, Prepared, RunOutcome, Status, execute
from hpcbench.plan.launch import cuda_visible_devices, numactl_args
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.runfiles import RunFiles
from hpcbench.runtime.barrier import (
    barrier_namespace,
    remove_barrier_state,
    sweep_stale_segments,
)
from hpcbench.runtime.binding import apply_binding
from hpcbench.runtime.identity import RankIdentity, local_env
from hpcbench.runtime.rundir import RunInfo

_POLL_S = 0.1
_TERM_GRACE_S = 5.0
# How long a rank named by a failed rank (it aborted the run) gets to exit with its own status.
_BLAME_WAIT_S = 5.0
_TAIL_LINES = 6
# Threads a BLAS/OpenMP runtime starts by default when the variables are not set by the user.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def log_paths(run_dir: Path, rank: int) -> tuple[Path, Path]:
    """``logs/rank-NNNNN.out`` and ``.err`` of a rank."""
    files = RunFiles(run_dir)
    return files.rank_out(rank), files.rank_err(rank)


def rank_command(
    run_dir: Path, placement: RankPlacement, numactl: str | None, python: str
) -> list[str]:
    """The command line of one rank (numactl prefix when numactl is used).

    >>> r = RankPlacement(1, 0, 1, 0, 0, (2, 3), (), (0,))
    >>> rank_command(Path("/r"), r, "/usr/bin/numactl", "py")[:4]
    ['/usr/bin/numactl', '--physcpubind=2-3', '--membind=0', 'py']
    >>> rank_command(Path("/r"), r, None, "py")
    ['py', '-m', 'hpcbench.runtime.rank', '/r']
    """
    command = [python, "-m", "hpcbench.runtime.rank", str(run_dir)]
    if numactl is None:
        return command
    return [numactl, *numactl_args(placement)[1:], *command]


def rank_environment(
    base: Mapping[str, str], placement: RankPlacement, world_size: int, launch_id: str
) -> dict[str, str]:
    """The environment of one rank: identity variables, GPUs, thread counts."""
    env = dict(base)
    identity = RankIdentity(
        placement.rank, placement.local_rank, world_size, placement.node, "local"
    )
    env.update(local_env(identity, launch_id))
    if placement.gpus:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(placement)
    for var in _THREAD_VARS:
        # Runtimes size their pools from the whole machine; the rank owns only its cores.
        env.setdefault(var, str(max(len(placement.cpus), 1)))
    return env


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 16384, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no stderr)"
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(stderr is empty)"


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP to the launcher into KeyboardInterrupt, so ranks are stopped too."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Ranks:
    """The running children, by rank."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.files: list[IO[bytes]] = []

    def stop(self) -> None:
        """SIGTERM every live rank's process group, then SIGKILL after a grace period."""
        live = [p for p in self.procs.values() if p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
                # A stopped (SIGSTOP) rank acts on SIGTERM only once continued.
                os.killpg(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + _TERM_GRACE_S
        for proc in live:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close_files(self) -> None:
        for handle in self.files:
            handle.close()


class LocalLaunch(Launch):
    """The ranks of one plan, started on this machine: the local implementation of the launch
    protocol (:mod:`hpcbench.launch`).

    ``run_dir`` is where the run goes; ``create`` makes it (the run directory's files) when the
    launch is prepared, and returns it with its run info; without ``create`` the run directory
    exists already and ``info`` is its run info. ``progress(line, final)`` gets a progress line
    every ``progress_interval_s``, and one with ``final`` true, the ranks' true counts, once
    all of them finished.

    A failed rank ends the wait: the others are stopped and the outcome is failed with a
    RunError naming the rank to blame and the tail of its stderr. An interrupt (Ctrl-C, SIGTERM
    or SIGHUP to the launcher) stops every rank. Barrier state is removed in every case.
    """

    poll_s = _POLL_S
    # No deadline of its own: every rank's waits (barriers, data) have theirs, and a rank that
    # ends by them exits, which ends the wait.
    timeout_s = None

    def __init__(
        self,
        plan: Plan,
        run_dir: Path | None,
        *,
        create: Callable[[], tuple[Path, RunInfo]] | None = None,
        info: RunInfo | None = None,
        progress: Callable[[str, bool], None] | None = None,
        progress_interval_s: float = 1.0,
        use_numactl: bool | None = None,
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        if plan.nodes != 1 or any(r.node != 0 for r in plan.ranks):
            raise UsageError(
                f"the local launcher runs one node, the plan has {plan.nodes}; "
                f"use 'hpcbench submit'"
            )
        if (create is None) == (info is None):
            raise TypeError("LocalLaunch needs either create (a new run) or info (its run.json)")
        self.numactl = shutil.which("numactl") if use_numactl is not False else None
        if use_numactl and self.numactl is None:
            raise UsageError("numactl was requested but is not installed")
        self.plan = plan
        self.run_dir = run_dir
        self.info = info
        self.launch_id = "L" + secrets.token_hex(4)
        self._create = create
        self._progress = progress
        self._progress_interval_s = progress_interval_s
        self._python = python
        self._env_base = dict(os.environ if base_env is None else base_env)
        self._ranks = _Ranks()
        self._exit = contextlib.ExitStack()
        self._started = 0.0
        self._last_progress = 0.0
        self._elapsed_s: float | None = None
        self._error: RunError | None = None

    def _rank_commands(
        self, run_dir: Path
    ) -> list[tuple[RankPlacement, list[str], dict[str, str]]]:
        return [
            (
                placement,
                rank_command(run_dir, placement, self.numactl, self._python),
                rank_environment(self._env_base, placement, self.plan.world_size, self.launch_id),
            )
            for placement in self.plan.ranks
        ]

    def prepare(self, *, dry_run: bool = False) -> Prepared:
        """Create the run directory (unless it exists); what is sent is each rank's command
        line with the variables it adds to the environment."""
        if dry_run:
            where = self.run_dir if self.run_dir is not None else Path("hpcbench-runs/RUN_ID")
        else:
            if self._create is not None and self.info is None:
                self.run_dir, self.info = self._create()
            assert self.run_dir is not None
            where = self.run_dir
        sent = []
        for placement, command, env in self._rank_commands(where):
            added = {k: v for k, v in env.items() if self._env_base.get(k) != v}
            words = [f"{k}={shlex.quote(v)}" for k, v in sorted(added.items())]
            words += [shlex.quote(word) for word in command]
            sent.append((f"rank {placement.rank}", " ".join(words)))
        return Prepared((where,), tuple(sent))

    def start(self) -> None:
        if self.run_dir is None or self.info is None:
            raise RuntimeError("LocalLaunch.start() before prepare()")
        # Segments of launches killed without cleanup (SIGKILL of hpcbench itself) would pile up.
        sweep_stale_segments()
        self._exit.enter_context(_signals_interrupt())
        self._started = time.monotonic()
        for placement, command, env in self._rank_commands(self.run_dir):
            out_path, err_path = log_paths(self.run_dir, placement.rank)
            out = _open_log(out_path)
            self._ranks.files.append(out)
            err = _open_log(err_path)
            self._ranks.files.append(err)
            preexec = _child_setup(None if self.numactl else placement, os.getpid())
            try:
                self._ranks.procs[placement.rank] = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    preexec_fn=preexec,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise RunError(
                    f"rank {placement.rank}: cannot start (cpus {list(placement.cpus)}, "
                    f"memory nodes {list(placement.mem_nodes)}): {exc}"
                ) from exc

    def poll(self) -> bool:
        assert self.run_dir is not None
        ranks = self._ranks
        codes = {rank: proc.poll() for rank, proc in ranks.procs.items()}
        failed = [rank for rank, code in codes.items() if code not in (None, 0)]
        if failed:
            self._error = _failure(self.run_dir, ranks, failed, codes)
            ranks.stop()
            self._elapsed_s = time.monotonic() - self._started
            return True
        now = time.monotonic()
        if all(code == 0 for code in codes.values()):
            self._elapsed_s = now - self._started
            self._show_progress(now, final=True)
            return True
        if now - self._last_progress >= self._progress_interval_s:
            self._show_progress(now, final=False)
            self._last_progress = now
        return False

    def _show_progress(self, now: float, final: bool) -> None:
        if self._progress is not None and self.run_dir is not None:
            ranks = [p.rank for p in self.plan.ranks]
            self._progress(progress_line(RunFiles(self.run_dir), ranks, now - self._started), final)

    def timed_out(self) -> Exception:
        return RunError("ranks did not end")  # unreachable: timeout_s is None

    def stop(self, reason: BaseException) -> None:
        self._ranks.stop()

    def close(self) -> None:
        self._exit.close()
        self._ranks.close_files()
        if self.run_dir is not None and self.info is not None:
            remove_barrier_state(barrier_namespace(self.info.run_id, self.launch_id), self.run_dir)

    def outcomes(self) -> list[RunOutcome]:
        assert self.run_dir is not None
        status: Status = "failed" if self._error is not None else "done"
        outcome = RunOutcome(self.run_dir, status, self.launch_id, elapsed_s=self._elapsed_s)
        return [outcome if self._error is None else outcome.failed(self._error)]


def launch_local(run_dir: Path, plan: Plan, info: RunInfo, **options: Any) -> RunOutcome:
    """Run every rank of ``plan`` in the existing ``run_dir``; return when all exited 0.

    The keyword options are :class:`LocalLaunch`'s. Raises RunError naming the rank to blame
    when one failed (the others stopped), and re-raises KeyboardInterrupt after stopping every
    rank. Nothing is aggregated.
    """
    launch = LocalLaunch(plan, run_dir, info=info, **options)
    (outcome,) = execute(launch, aggregate=False)
    return outcome.raise_if_failed()


def _open_log(path: Path) -> IO[bytes]:
    """Create a rank's log (0600); RunError naming it when that fails (no inode left, say)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise RunError(f"{path}: cannot create the rank's log ({exc.strerror or exc})") from exc
    return os.fdopen(fd, "wb")


_PR_SET_PDEATHSIG = 1


def _child_setup(placement: RankPlacement | None, launcher_pid: int) -> Callable[[], None]:
    """Run in the child before exec: die with the launcher, then bind (unless numactl does)."""

    def setup() -> None:
        # Each rank leads its own process group (stopped with killpg; the terminal's Ctrl-C
        # reaches only the launcher) but stays in the launcher's session: with the kernel's
        # sched_autogroup, CPU time is shared between sessions first, so ranks in sessions of
        # their own would get one share each and N ranks N times the CPU of one rank on a
        # machine that runs anything else (docs/performance.md, "CPU backend").
        os.setpgid(0, 0)
        # A launcher killed with SIGKILL (or by the OOM killer) would leave the ranks running
        # as orphans: the kernel sends them SIGTERM instead (kept across exec), on which a rank
        # closes its file as unfinished and exits.
        prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        if placement is not None:
            apply_binding(placement)

    return setup


def _caused_by(status: Mapping[str, object], world_size: int) -> list[int]:
    """The ranks a failed rank blamed for its failure (it timed out waiting for them, or they
    aborted the run), from the status it published before exiting; [] for a failure of its own."""
    blamed = status.get("caused_by")
    if status.get("phase") != "failed" or not isinstance(blamed, list):
        return []
    return [r for r in blamed if isinstance(r, int) and 0 <= r < world_size]


def _failure(
    run_dir: Path, ranks: _Ranks, failed: list[int], codes: Mapping[int, int | None]
) -> RunError:
    """The error that names the rank to blame, before the others are stopped.

    A rank that exits because another one aborted the barrier can exit before the aborting rank
    does (the latter is still closing its files), and a rank that times out at a barrier exits
    while the rank it waited for is hung: the first rank seen to fail is then not the culprit.
    Ranks that failed of their own accord come first; otherwise the launcher waits briefly for
    a rank named by the failed ones to exit, or blames it as hung.
    """
    statuses = {r: RunFiles(run_dir).read_status(r) for r in failed}
    blamed = {r: _caused_by(statuses[r], len(ranks.procs)) for r in failed}
    own = [r for r in failed if not blamed[r]]
    if own:
        return _exit_error(run_dir, own[0], codes[own[0]])
    suspects = sorted({c for r in failed for c in blamed[r]})
    witness = failed[0]
    deadline = time.monotonic() + _BLAME_WAIT_S
    while True:
        codes_now = {rank: ranks.procs[rank].poll() for rank in suspects}
        for rank, code in codes_now.items():
            if code not in (None, 0):
                return _exit_error(run_dir, rank, code)
        running = [rank for rank, code in codes_now.items() if code is None]
        if not running:
            # The ranks it blamed finished cleanly: the failure is the witness's own.
            return _exit_error(run_dir, witness, codes[witness])
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    culprit = next((r for r in running if r in blamed[witness]), running[0])
    cause = statuses[witness].get("cause", "held up the others")
    state = _process_state(ranks.procs[culprit].pid)
    err_path = log_paths(run_dir, culprit)[1]
    tail = _tail(err_path).replace("\n", "\n    ")
    return RunError(
        f"rank {culprit} {cause} and is still running ({state}); the other ranks were "
        f"stopped; rank {witness} exited {codes[witness]}: {statuses[witness].get('error', '')}; "
        f"end of {err_path}:\n    {tail}"
    )


def _exit_error(run_dir: Path, rank: int, code: int | None) -> RunError:
    err_path = log_paths(run_dir, rank)[1]
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
    tail = _tail(err_path).replace("\n", "\n    ")
    return RunError(
        f"rank {rank} {how}; the other ranks were stopped; end of {err_path}:\n    {tail}"
    )


def _process_state(pid: int) -> str:
    """How a live rank's process is doing, from /proc (a stopped process cannot make progress).

    >>> _process_state(os.getpid())
    'process running'
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "process state unknown"
    # The command name (field 2) may contain spaces and parentheses: the state follows the last ')'.
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("T", "t"):
        return "process stopped, e.g. by SIGSTOP or a debugger"
    return "process sleeping" if state in ("S", "D") else "process running"
