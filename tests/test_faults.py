"""Fault injection with real processes: ranks killed in every phase, late and missing ranks,
stale barrier state, a killed launcher, unusable output folders, corrupt rank files.

Phases are observed from outside, never injected: a rank logs ``devices: ...`` just before it
builds its engines and publishes ``logs/rank-NNNNN.status.json`` at every later phase
(warmup, barrier start, timed, barrier end), and rank processes are found as children of the
``hpcbench run`` process (their environment names their rank). To hold a rank inside a barrier
the test stops its partner with SIGSTOP, the way a straggler would. The figures these tests
check are listed in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from hpcbench.errors import MetricsError, RunError
from hpcbench.metrics import read_rank_file
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.runfiles import BARRIER_DIR, RunFiles
from hpcbench.runtime.barrier import SHM_DIR, barrier_namespace, remove_barrier_state
from hpcbench.runtime.identity import LAUNCH_ID_VAR, LOCAL_VARS
from hpcbench.runtime.rundir import create_run_dir
from hpcbench.spec import RunSpec
from tests.rankwatch import environ, reached_timed

pytestmark = pytest.mark.timeout(120)

# Engines take ~0.4 s to build and a batch ~20 ms on one core: every phase lasts long enough
# to be hit from outside.
FAULT_OPTIONS = {"input": 512, "hidden": 1024, "layers": 10, "classes": 10}
TIMEOUT_S = 3.0
DURATION_S = 1.0
# What a survivor may take beyond the barrier timeout to notice, log and exit (the 5 s).
GRACE_S = 5.0
PHASES = ("build", "warmup", "barrier start", "timed", "barrier end")
VICTIM = 1
SURVIVOR = 0
HPCBENCH = [sys.executable, "-m", "hpcbench"]


def _cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    return cpus


def _plan(cpus: list[int]) -> Plan:
    return Plan(
        tuple(RankPlacement(r, 0, r, 0, 0, (cpus[r],), (), (0,)) for r in (0, 1)), (), "faults"
    )


def _spec(**changes: object) -> RunSpec:
    values: dict[str, object] = {
        "batch_size": 2, "duration_s": DURATION_S, "warmup_batches": 20,
        "options": FAULT_OPTIONS, "barrier_timeout_s": TIMEOUT_S,
    }  # fmt: skip
    values.update(changes)
    return RunSpec(**values)  # type: ignore[arg-type]


def _make_run(tmp_path: Path, name: str = "run", **spec_changes: object) -> tuple[Path, Plan]:
    plan = _plan(_cpus())
    run_dir, _ = create_run_dir(tmp_path / name, plan=plan, spec=_spec(**spec_changes), argv=["t"])
    return run_dir, plan


# ------------------------------------------------------------------------- observing ranks
def _err_text(run_dir: Path, rank: int) -> str:
    try:
        return (run_dir / "logs" / f"rank-{rank:05d}.err").read_text(errors="replace")
    except OSError:
        return ""


def in_phase(run_dir: Path, rank: int, phase: str, launch_id: str = "fault") -> bool:
    """Whether ``rank`` is in ``phase`` now, from its log and status file."""
    if phase == "build":
        err = _err_text(run_dir, rank)
        return "devices:" in err and "phase: warmup" not in err
    if phase == "timed":
        return reached_timed(run_dir, rank, 3)
    status = RunFiles(run_dir).read_status(rank)
    if phase.startswith("barrier "):
        # The status is published just before arriving: wait for the arrival itself.
        generation = 1 if phase == "barrier start" else 2
        return status.get("phase") == phase and arrived(run_dir, rank, generation, launch_id)
    return status.get("phase") == phase


def arrived(run_dir: Path, rank: int, generation: int, launch_id: str) -> bool:
    """Whether ``rank`` has arrived at barrier ``generation`` (read from the barrier's state)."""
    namespace = _namespace(run_dir, launch_id)
    directory = run_dir / BARRIER_DIR / namespace
    if directory.is_dir():
        return (directory / f"g{generation:06d}" / f"a{rank:05d}").exists()
    try:
        data = (SHM_DIR / namespace).read_bytes()
    except OSError:
        return False
    # Slot r of the shm segment starts at 512 + 64 r with the u32 generation it arrived at.
    offset = 512 + 64 * rank
    return (
        len(data) >= offset + 4
        and int.from_bytes(data[offset : offset + 4], "little") >= generation
    )


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not seen within {timeout_s:g} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to reap it.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def rank_children(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the rank processes started by an ``hpcbench run`` process."""
    found: dict[int, int] = {}
    try:
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    except OSError:
        return found
    for pid in map(int, children):
        rank = environ(pid).get(LOCAL_VARS["rank"])
        if rank is not None:
            found[int(rank)] = pid
    return found


def _log_time(line: str) -> float:
    """Epoch seconds of a rank log line (``%(asctime)s``: local time, milliseconds)."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


@contextlib.contextmanager
def _reaped(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def spawn_rank(run_dir: Path, plan: Plan, rank: int, launch_id: str) -> subprocess.Popen[bytes]:
    """Start one rank process the way a launcher would (identity variables, pinned core)."""
    env = dict(os.environ)
    env.update({LOCAL_VARS["rank"]: str(rank), LOCAL_VARS["local_rank"]: str(rank),
                LOCAL_VARS["world_size"]: str(plan.world_size), LOCAL_VARS["node"]: "0",
                LAUNCH_ID_VAR: launch_id, "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1"})  # fmt: skip
    cpus = plan.rank(rank).cpus
    err = (run_dir / "logs" / f"rank-{rank:05d}.err").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "hpcbench.runtime.rank", str(run_dir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    finally:
        err.close()


def _namespace(run_dir: Path, launch_id: str) -> str:
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    return barrier_namespace(run_id, launch_id)


def _no_barrier_state(run_dir: Path) -> None:
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert not (run_dir / BARRIER_DIR).exists()
    assert not [p.name for p in SHM_DIR.iterdir() if run_id in p.name]


def _hold_partner(run_dir: Path, phase: str, partner_pid: int) -> bool:
    """Stop the partner (SIGSTOP) so that the victim waits alone inside ``phase``'s barrier."""
    if phase == "barrier start":
        _wait_for("partner in warm-up", lambda: in_phase(run_dir, SURVIVOR, "warmup"))
    elif phase == "barrier end":
        _wait_for("partner in the timed phase", lambda: in_phase(run_dir, SURVIVOR, "timed"))
    else:
        return False
    os.kill(partner_pid, signal.SIGSTOP)
    return True


# ------------------------------------------------------- a rank killed, no launcher around it
@pytest.mark.parametrize("barrier", ["shm", "file"])
@pytest.mark.parametrize("phase", PHASES)
def test_survivor_names_the_rank_killed_in_each_phase(
    tmp_path: Path, phase: str, barrier: str
) -> None:
    """Ranks alone (as under srun without --kill-on-bad-exit): SIGKILL rank 1 in ``phase``.

    Rank 0 must leave its next barrier within the barrier timeout + 5 s with an error naming
    rank 1, except when rank 1 had already arrived at the end barrier: then the barrier
    releases, rank 0 finishes, and only rank 1's unfinished file tells (aggregation refuses).
    """
    if barrier == "file" and phase not in ("timed", "barrier end"):
        pytest.skip("the file barrier is covered in the timed phase and at the end barrier")
    run_dir, plan = _make_run(tmp_path, barrier=barrier)
    procs = [spawn_rank(run_dir, plan, r, "fault") for r in (SURVIVOR, VICTIM)]
    survivor, victim = procs
    with _reaped(procs):
        held = _hold_partner(run_dir, phase, survivor.pid)
        _wait_for(f"rank 1 in {phase}", lambda: in_phase(run_dir, VICTIM, phase))
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        if held:
            os.kill(survivor.pid, signal.SIGCONT)
        code = survivor.wait(DURATION_S + 3 * TIMEOUT_S + 30)
        exited = time.time()
    err = _err_text(run_dir, SURVIVOR)
    victim_err = _err_text(run_dir, VICTIM)
    if phase == "build":
        assert "phase: warmup" not in victim_err  # it really died while building
    if phase == "barrier end":
        # Rank 1 had arrived, so the end barrier released rank 0, which finished cleanly.
        assert code == 0, err
        assert read_rank_file(run_dir / "rank-00000.h5").complete
    else:
        assert code == 1, err
        failure = [line for line in err.splitlines() if "ERROR" in line][-1]
        assert re.search(r"rank 1 did not arrive within 3 s", failure), failure
        barrier_name = "start" if phase in ("build", "warmup") else "end"
        assert f"barrier {barrier_name!r}" in failure
        # From the survivor's arrival at that barrier to its exit: timeout + grace at most.
        arrived = [line for line in err.splitlines() if f"phase: barrier {barrier_name}" in line]
        waited_s = exited - _log_time(arrived[-1])
        print(f"FIGURE alone {barrier} {phase}: rank 0 exit {code} {waited_s:.2f} s after arriving")
        assert waited_s <= TIMEOUT_S + GRACE_S, waited_s
        assert not read_rank_file(run_dir / "rank-00000.h5.part").complete
    # What rank 1 wrote before it died stays readable.
    part = read_rank_file(run_dir / "rank-00001.h5.part")
    assert not part.complete and part.attrs["run_id"]
    if phase == "timed":
        assert len(part.timed) >= 1
    with pytest.raises(MetricsError, match=r"rank-00001\.h5\.part left: the rank did not finish"):
        _aggregate(run_dir)
    if phase == "barrier end":
        summary = _aggregate(run_dir, allow_partial=True)
        assert summary["complete"] is False
    segment = SHM_DIR / _namespace(run_dir, "fault")
    state = [segment, run_dir / BARRIER_DIR]
    if phase == "barrier end":
        # Nobody aborted and rank 1 never closed, so the last-to-close cleanup never ran:
        # without a launcher (which removes it) the state stays; its name holds the launch id,
        # so no later launch reads it (test_stale_barrier_state_does_not_affect_the_next_run).
        assert any(path.exists() for path in state)
        remove_barrier_state(_namespace(run_dir, "fault"), run_dir)
    assert not any(path.exists() for path in state)


def _aggregate(run_dir: Path, allow_partial: bool = False) -> dict[str, object]:
    from hpcbench.aggregate import aggregate_run

    return aggregate_run(run_dir, allow_partial=allow_partial)


# --------------------------------------------------------- a rank killed under hpcbench run
def _run_command(out: Path, *extra: str) -> list[str]:
    options = [f"--option={k}={v}" for k, v in FAULT_OPTIONS.items()]
    return [*HPCBENCH, "run", "--ranks", "2", "--backend", "cpu", "--batch-size", "2",
            "--duration-s", str(DURATION_S), "--warmup-batches", "20",
            "--barrier-timeout-s", str(TIMEOUT_S), "--out", str(out), "-q",
            *options, *extra]  # fmt: skip


def _rank_processes(cli: subprocess.Popen[bytes]) -> tuple[dict[int, int], str]:
    """rank -> pid of both ranks of an ``hpcbench run`` process, once both are started, and
    their launch id."""
    children: dict[int, int] = {}

    def both_started() -> bool:
        children.update(rank_children(cli.pid))
        return len(children) == 2

    _wait_for("two rank processes under hpcbench run", both_started)
    return children, _launch_id(children[VICTIM])


def _launch_id(pid: int) -> str:
    found: list[str] = []

    def seen() -> bool:
        value = environ(pid).get(LAUNCH_ID_VAR)
        if value:
            found.append(value)
        return bool(found)

    _wait_for(f"{LAUNCH_ID_VAR} in the environment of process {pid}", seen, timeout_s=10.0)
    return found[0]


def test_ranks_suspended_longer_than_the_timed_phase_make_the_run_invalid(
    tmp_path: Path,
) -> None:
    """Both ranks stopped (as ``scontrol suspend`` does) for 2.5 s of a 1 s timed phase: the
    run completes, but its verdict says so instead of a "complete" run 3x slower, no word."""
    _cpus()
    out = tmp_path / "run"
    command = _run_command(out, "--barrier-timeout-s", "10")
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _reaped([cli]):
        children, _ = _rank_processes(cli)
        _wait_for("both ranks timing", lambda: all(reached_timed(out, r, 3) for r in (0, 1)))
        for pid in children.values():
            os.kill(pid, signal.SIGSTOP)
        time.sleep(2.5)
        for pid in children.values():
            os.kill(pid, signal.SIGCONT)
        _, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err.decode()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["validity"]["valid"] is False
    failed = {c["name"] for c in summary["validity"]["checks"] if not c["passed"]}
    assert "duration" in failed, summary["validity"]


@pytest.mark.parametrize("phase", PHASES)
def test_hpcbench_run_names_the_rank_killed_in_each_phase(tmp_path: Path, phase: str) -> None:
    """SIGKILL rank 1 (a child of ``hpcbench run``) in ``phase``: the command stops rank 0,
    exits 1 naming rank 1 within 5 s + poll, leaves readable files and no process; the run is
    refused by ``aggregate`` and marked incomplete with ``--allow-partial``."""
    _cpus()
    out = tmp_path / "run"
    cli = subprocess.Popen(_run_command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _reaped([cli]):
        children, launch_id = _rank_processes(cli)
        held = _hold_partner(out, phase, children[SURVIVOR]) if phase != "build" else False
        _wait_for(f"rank 1 in {phase}", lambda: in_phase(out, VICTIM, phase, launch_id))
        os.kill(children[VICTIM], signal.SIGKILL)
        killed = time.monotonic()
        if held:
            os.kill(children[SURVIVOR], signal.SIGCONT)
        _, err_bytes = cli.communicate(timeout=60)
        stopped_s = time.monotonic() - killed
    err = err_bytes.decode()
    assert cli.returncode == 1, err
    assert "hpcbench: error: rank 1 was killed by signal 9; the other ranks were stopped" in err
    assert "Traceback" not in err
    # The launcher polls every 0.1 s and gives the others 5 s after SIGTERM before SIGKILL
    # (measured: 0.2-0.3 s; the bound leaves room for a loaded machine).
    print(f"FIGURE run {phase}: hpcbench run exit {cli.returncode} {stopped_s:.2f} s after kill")
    assert stopped_s <= 2 * GRACE_S, stopped_s
    assert not any(_alive(pid) for pid in children.values())
    if phase == "build":
        assert "phase: warmup" not in _err_text(out, VICTIM)
    # Whatever a rank had written is readable (rank 0 may have been stopped before its file
    # existed, when rank 1 died early).
    for path in out.glob("rank-*.h5*"):
        assert read_rank_file(path).rank == int(path.name[5:10])
    assert not read_rank_file(out / "rank-00001.h5.part").complete
    _no_barrier_state(out)
    refused = subprocess.run([*HPCBENCH, "aggregate", str(out)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "rank-00001.h5.part left: the rank did not finish" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    partial = subprocess.run(
        [*HPCBENCH, "aggregate", str(out), "--allow-partial", "--json"],
        capture_output=True,
        text=True,
    )
    if (out / "rank-00000.h5").exists():
        assert partial.returncode == 0, partial.stderr
        assert json.loads(partial.stdout)["complete"] is False
    else:
        # Rank 0 was stopped too: nothing finished, nothing to aggregate even partially.
        assert partial.returncode == 2
        assert "there is nothing to aggregate, even with --allow-partial" in partial.stderr


def test_hung_rank_is_named_not_the_rank_that_timed_out(tmp_path: Path) -> None:
    """Rank 1 is stopped (SIGSTOP) in warm-up, so rank 0 times out at the start barrier and
    exits first: the headline names rank 1 as hung and says why; rank 0's reason follows."""
    _cpus()
    out = tmp_path / "run"
    cli = subprocess.Popen(_run_command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _reaped([cli]):
        children, launch_id = _rank_processes(cli)
        _wait_for("rank 1 in warm-up", lambda: in_phase(out, VICTIM, "warmup", launch_id))
        os.kill(children[VICTIM], signal.SIGSTOP)
        _, err_bytes = cli.communicate(timeout=60)
    err = err_bytes.decode()
    assert cli.returncode == 1, err
    headline = _one_error_line(err)
    assert headline.startswith(
        "hpcbench: error: rank 1 did not arrive at a barrier in time and is still running "
        "(process stopped, e.g. by SIGSTOP or a debugger); the other ranks were stopped; "
        "rank 0 exited 1: barrier 'start'"
    ), headline
    assert "rank 1 did not arrive within 3 s" in headline
    # The launcher continued the stopped rank with its SIGTERM: nothing is left running.
    assert not any(_alive(pid) for pid in children.values())
    _no_barrier_state(out)


def test_killed_launcher_takes_its_ranks_along(tmp_path: Path) -> None:
    """SIGKILL ``hpcbench run`` itself: its ranks must not run on as orphans."""
    _cpus()
    out = tmp_path / "run"
    cli = subprocess.Popen(
        _run_command(out, "--duration-s", "60"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with _reaped([cli]):
        children, _ = _rank_processes(cli)
        _wait_for("rank 1 in the timed phase", lambda: in_phase(out, VICTIM, "timed"))
        cli.kill()
        cli.wait()
        _wait_for(
            "the ranks to stop after their launcher died",
            lambda: not any(_alive(pid) for pid in children.values()),
            timeout_s=GRACE_S + 5,
        )
    parts = sorted(p.name for p in out.glob("rank-*.h5.part"))
    assert parts == ["rank-00000.h5.part", "rank-00001.h5.part"]
    assert all(not read_rank_file(out / name).complete for name in parts)


# ------------------------------------------------------------------ unusable output folders
def _in_private_tmpfs(
    mount_options: str, script: str, tmp_path: Path, timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) with a fresh tmpfs mounted at $MNT in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(
        ["unshare", "-m", "-r", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{mnt}"'],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}")
    env = {**os.environ, "MNT": str(mnt), "HPCBENCH": " ".join(HPCBENCH)}
    wrapped = f'mount -t tmpfs -o {mount_options} tmpfs "$MNT" || exit 99\n{script}'
    return subprocess.run(
        ["unshare", "-m", "-r", "sh", "-c", wrapped],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("hpcbench: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("mount_options", "expected"),
    [
        ("size=1m", r"has 1 MiB free, a run needs at least 24 MiB"),
        ("ro", r"is not writable"),
        # Inode quotas are common on HPC scratch: a run creates a few files per rank.
        ("size=40m,nr_inodes=12", r"has \d+ free inodes \(files\), a run needs at least 24"),
    ],
)
def test_unusable_out_dir_fails_before_any_rank_starts(
    tmp_path: Path, mount_options: str, expected: str
) -> None:
    _cpus()
    script = '$HPCBENCH run --ranks 2 --backend cpu --duration-s 1 --out "$MNT/run" -q\n' \
        'echo "rc=$?"; ls -A "$MNT"'  # fmt: skip
    done = _in_private_tmpfs(mount_options, script, tmp_path)
    assert "rc=2" in done.stdout, done.stderr
    assert re.search(expected, _one_error_line(done.stderr)), done.stderr
    assert "ranks, backend" not in done.stderr  # the launch line: no rank was started
    assert done.stdout.strip().endswith("rc=2")  # and nothing was created under $MNT


def test_disk_full_during_the_run_is_one_clear_error(tmp_path: Path) -> None:
    """The output file system fills up while ranks run: the command fails with one line
    naming the file it could not write, never a traceback or a crashed rank."""
    _cpus()
    script = """
$HPCBENCH run --ranks 2 --backend cpu --duration-s 3 --barrier-timeout-s 10 --out "$MNT/run" \
    -q >"$MNT/../out.txt" 2>"$MNT/../err.txt" &
pid=$!
for _ in $(seq 600); do
    grep -q '"timed"' "$MNT/run/logs/rank-00001.status.json" 2>/dev/null && break
    sleep 0.1
done
dd if=/dev/zero of="$MNT/fill" bs=1M 2>/dev/null
wait $pid
echo "rc=$?"
cat "$MNT/../err.txt" >&2
rm -f "$MNT/fill"
for f in "$MNT"/run/rank-*.h5*; do echo "file=$f"; done
"""
    done = _in_private_tmpfs("size=40m", script, tmp_path)
    rc = re.search(r"rc=(\d+)", done.stdout)
    assert rc is not None and rc.group(1) in ("1", "2"), done.stdout + done.stderr
    line = _one_error_line(done.stderr)
    # Either a rank could not write its metrics (the launcher names it) or the ranks finished
    # and result.h5 could not be written: both name the file and say why.
    assert "No space left on device" in done.stderr, done.stderr
    assert re.search(r"rank \d exited \d|result\.h5: cannot write", line), line
    assert "signal 11" not in done.stderr


FULL_SHM_SNIPPET = """
from hpcbench.errors import RunError
from hpcbench.runtime.barrier import ShmBarrier
try:
    barrier = ShmBarrier("hpcbench-full-shm-test", 0, 1, 1.0)
    barrier.wait("start")
    barrier.close()
    print("passed the barrier")
except RunError as exc:
    print("error:", exc)
"""


def test_full_dev_shm_is_one_line_naming_it(tmp_path: Path) -> None:
    """/dev/shm full (a private 64 KiB tmpfs, filled): the barrier says so instead of the
    rank dying by SIGBUS on its first write into a segment that was sized but not backed."""
    snippet = tmp_path / "full_shm.py"
    snippet.write_text(FULL_SHM_SNIPPET)
    script = (
        "mount -t tmpfs -o size=64k tmpfs /dev/shm || exit 98\n"
        "dd if=/dev/zero of=/dev/shm/fill bs=4k 2>/dev/null\n"
        f'{sys.executable} "{snippet}"; echo "rc=$?"'
    )
    done = _in_private_tmpfs("size=1m", script, tmp_path)
    assert "rc=0" in done.stdout, done.stdout + done.stderr
    assert "error: barrier: /dev/shm is full: cannot reserve 576 bytes" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_rank_log_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """Every file the launcher creates is checked: here rank 0's log name is taken by a folder
    (what is left of an inode quota, or a hostile folder): one line, no rank left running."""
    from hpcbench.runtime.launcher import launch_local
    from hpcbench.runtime.rundir import read_run_info

    run_dir, plan = _make_run(tmp_path)
    (run_dir / "logs" / "rank-00001.out").mkdir()
    with pytest.raises(RunError, match=r"logs/rank-00001\.out: cannot create the rank's log"):
        launch_local(run_dir, plan, read_run_info(run_dir))
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert not list(SHM_DIR.glob(f"hpcbench-{run_id}-*"))  # rank 0 stopped, its state gone


# ---------------------------------------------------------------- missing, late, stale state
def test_rank_that_never_starts_is_named(tmp_path: Path) -> None:
    run_dir, plan = _make_run(tmp_path)
    started = time.monotonic()
    proc = spawn_rank(run_dir, plan, SURVIVOR, "fault")
    with _reaped([proc]):
        code = proc.wait(60)
    err = _err_text(run_dir, SURVIVOR)
    assert code == 1, err
    assert "barrier 'start' (shm" in err and "rank 1 did not arrive within 3 s" in err
    assert time.monotonic() - started < 60
    assert not (SHM_DIR / _namespace(run_dir, "fault")).exists()


def test_rank_that_cannot_be_started_stops_the_launch(tmp_path: Path) -> None:
    """The launcher cannot start rank 1 (its planned CPU does not exist): rank 0 is stopped,
    the error names rank 1 and its CPUs, no process and no barrier state is left."""
    cpus = _cpus()
    plan = Plan(
        (RankPlacement(0, 0, 0, 0, 0, (cpus[0],), (), (0,)),
         RankPlacement(1, 0, 1, 0, 0, (4095,), (), (0,))), (), "faults",
    )  # fmt: skip
    run_dir, info = create_run_dir(tmp_path / "run", plan=plan, spec=_spec(), argv=["t"])
    from hpcbench.errors import RunError
    from hpcbench.runtime.launcher import launch_local

    with pytest.raises(RunError, match=r"rank 1: cannot start \(cpus \[4095\]"):
        launch_local(run_dir, plan, info, use_numactl=False)
    _no_barrier_state(run_dir)
    # Rank 0 was started first and then stopped: its file is unfinished, or was never made.
    assert not (run_dir / "rank-00000.h5").exists()


def test_rank_late_by_more_than_the_timeout(tmp_path: Path) -> None:
    """Rank 1 starts after rank 0 gave up: rank 0 names rank 1; rank 1 does not wait forever
    on a barrier its partner left, it names rank 0 after its own timeout."""
    run_dir, plan = _make_run(tmp_path)
    early = spawn_rank(run_dir, plan, SURVIVOR, "fault")
    with _reaped([early]):
        assert early.wait(60) == 1
    late = spawn_rank(run_dir, plan, VICTIM, "fault")
    with _reaped([late]):
        assert late.wait(60) == 1
    assert "rank 1 did not arrive within 3 s" in _err_text(run_dir, SURVIVOR)
    assert "rank 0 did not arrive within 3 s" in _err_text(run_dir, VICTIM)
    assert not (SHM_DIR / _namespace(run_dir, "fault")).exists()


@pytest.mark.parametrize("barrier", ["shm", "file"])
def test_stale_barrier_state_does_not_affect_the_next_run(tmp_path: Path, barrier: str) -> None:
    """Both ranks of a launch are SIGKILLed inside the timed phase, leaving their barrier
    state; the next launch in the same run directory and a new run both complete."""
    run_dir, plan = _make_run(tmp_path, barrier=barrier)
    procs = [spawn_rank(run_dir, plan, r, "fault") for r in (SURVIVOR, VICTIM)]
    with _reaped(procs):
        _wait_for("rank 1 timed", lambda: in_phase(run_dir, VICTIM, "timed"))
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    namespace = _namespace(run_dir, "fault")
    stale = SHM_DIR / namespace if barrier == "shm" else run_dir / BARRIER_DIR / namespace
    assert stale.exists()
    # The same run directory launched again (a rerun) and a fresh run directory.
    for part in run_dir.glob("rank-*.h5.part"):
        part.unlink()
    from hpcbench.runtime.launcher import launch_local
    from hpcbench.runtime.rundir import read_run_info

    launch_local(run_dir, plan, read_run_info(run_dir))
    assert all(read_rank_file(run_dir / f"rank-{r:05d}.h5").complete for r in (0, 1))
    other, _ = _make_run(tmp_path, name="next", barrier=barrier)
    launch_local(other, plan, read_run_info(other))
    assert all(read_rank_file(other / f"rank-{r:05d}.h5").complete for r in (0, 1))
    assert stale.exists()  # untouched: it belongs to the killed launch
    remove_barrier_state(namespace, run_dir)


def test_stale_segment_with_wrong_owner_mode_is_refused(tmp_path: Path) -> None:
    """A segment of this launch's name that is not owner-only is not trusted."""
    run_dir, plan = _make_run(tmp_path)
    segment = SHM_DIR / _namespace(run_dir, "fault")
    fd = os.open(segment, os.O_CREAT | os.O_WRONLY, 0o600)
    os.fchmod(fd, 0o666)
    os.close(fd)
    try:
        proc = spawn_rank(run_dir, plan, SURVIVOR, "fault")
        with _reaped([proc]):
            assert proc.wait(60) == 1
    finally:
        segment.unlink(missing_ok=True)
    assert "exists but is not owner-only or not ours" in _err_text(run_dir, SURVIVOR)


# ------------------------------------------------------------------- corrupt rank files
CORRUPTIONS = {
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
    "empty": lambda p: os.truncate(p, 0),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "no timed group": lambda p: _edit_h5(p, lambda f: f.__delitem__("timed")),
    "unequal columns": lambda p: _edit_h5(p, lambda f: f["timed"]["images"].resize((1,))),
    "wrong rank attribute": lambda p: _edit_h5(p, lambda f: f.attrs.__setitem__("rank", 7)),
    "future schema": lambda p: _edit_h5(p, lambda f: f.attrs.__setitem__("schema_version", 99)),
}


def _edit_h5(path: Path, edit: Callable[..., object]) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, plan = _make_run(tmp_path_factory.mktemp("finished"), num_batches=4, duration_s=None)
    from hpcbench.runtime.launcher import launch_local
    from hpcbench.runtime.rundir import read_run_info

    launch_local(run_dir, plan, read_run_info(run_dir))
    return run_dir


@pytest.mark.parametrize(
    ("command", "corruption"),
    [("aggregate", name) for name in CORRUPTIONS] + [("report", "truncated"), ("report", "empty")],
)
def test_corrupt_rank_file_is_one_line_naming_it(
    finished_run: Path, tmp_path: Path, corruption: str, command: str
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    victim = run_dir / "rank-00001.h5"
    CORRUPTIONS[corruption](victim)
    done = subprocess.run([*HPCBENCH, command, str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    line = _one_error_line(done.stderr)
    assert str(victim) in line, line
    # --allow-partial aggregates what is finished, never what is broken.
    partial = subprocess.run(
        [*HPCBENCH, "aggregate", str(run_dir), "--allow-partial"], capture_output=True, text=True
    )
    assert partial.returncode == 2 and str(victim) in _one_error_line(partial.stderr)
