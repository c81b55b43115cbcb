"""The rank lifecycle with real processes: launcher, rank files, failures, kills, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hpcbench.aggregate import aggregate_run, format_summary
from hpcbench.errors import RunError
from hpcbench.jsonfile import write_json_atomic
from hpcbench.metrics import RankMetricsWriter, read_rank_file
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.runfiles import BARRIER_DIR, LOGS_DIR, RunFiles
from hpcbench.runtime.barrier import SHM_DIR
from hpcbench.runtime.identity import LOCAL_VARS
from hpcbench.runtime.launcher import _failure, _Ranks, launch_local
from hpcbench.runtime.rundir import create_run_dir
from hpcbench.spec import RunSpec
from tests.rankwatch import wait_timed

# A small MLP so that a batch takes a few milliseconds on one core.
SMALL = {"input": 256, "hidden": 128, "layers": 2, "classes": 10}
ROOT_ATTRS = (
    "schema_version", "rank", "world_size", "run_id", "launch_id", "host", "local_rank", "node",
    "backend",
    "model", "batch_size", "num_devices", "precision", "plan_json", "binding_json",
    "config_json", "versions_json", "devices_json", "slurm_json", "complete",
)  # fmt: skip


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def two_rank_plan() -> Plan:
    cpus = _cpus()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    return Plan(
        (
            RankPlacement(0, 0, 0, 0, 0, (cpus[0],), (), (0,)),
            RankPlacement(1, 0, 1, 0, 0, (cpus[1],), (), (0,)),
        ),
        (),
        "test",
    )


def make_run(tmp_path: Path, **spec_changes: object) -> tuple[Path, Plan, object]:
    plan = two_rank_plan()
    values: dict[str, object] = {
        "batch_size": 16, "duration_s": 1.0, "warmup_batches": 2, "options": SMALL,
        "barrier_timeout_s": 20.0,
    }  # fmt: skip
    values.update(spec_changes)
    spec = RunSpec(**values)  # type: ignore[arg-type]
    run_dir, info = create_run_dir(tmp_path / "run", plan=plan, spec=spec, argv=["test"])
    return run_dir, plan, info


def _no_barrier_state(run_dir: Path) -> None:
    assert not (run_dir / BARRIER_DIR).exists()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert not [p for p in SHM_DIR.iterdir() if run_id in p.name]


@pytest.mark.parametrize("barrier", ["shm", "file"])
def test_two_local_ranks_write_complete_overlapping_files(tmp_path: Path, barrier: str) -> None:
    run_dir, plan, info = make_run(tmp_path, barrier=barrier)
    launch_local(run_dir, plan, info)  # type: ignore[arg-type]
    files = [read_rank_file(run_dir / f"rank-{r:05d}.h5") for r in (0, 1)]
    assert not list(run_dir.glob("*.part"))
    for rank, data in enumerate(files):
        assert data.complete
        missing = [key for key in ROOT_ATTRS if key not in data.attrs]
        assert missing == []
        assert (data.rank, data.attrs["world_size"], data.attrs["run_id"]) == (rank, 2, info.run_id)  # type: ignore[attr-defined]
        binding = data.json_attr("binding_json")
        # The launcher pinned each rank to its planned core: no mismatch was recorded.
        assert binding["cpus"] == list(plan.rank(rank).cpus)
        assert binding["mismatches"] == []
        assert data.json_attr("plan_json") == plan.rank(rank).to_json()
        assert data.json_attr("config_json")["barrier"] == barrier
        assert len(data.warmup) == 2
        timed = data.timed
        assert len(timed) > 0
        assert np.all(timed.t_end_ns >= timed.t_start_ns)
        assert np.all(timed.images == 16)
        assert np.all(timed.data_wait_ns >= 0)
        assert data.t_begin_ns is not None and data.t_finish_ns is not None
        assert timed.t_start_ns.min() >= data.t_begin_ns
        assert data.t_finish_ns == timed.t_end_ns.max()
        assert [name for name, _, _ in data.barriers] == ["start", "end"]
        assert all(release >= arrive for _, arrive, release in data.barriers)
    begins = [f.t_begin_ns or 0 for f in files]
    finishes = [f.t_finish_ns or 0 for f in files]
    window_s = (min(finishes) - max(begins)) / 1e9
    # Shared deadline: both timed phases cover nearly the whole second together.
    assert window_s > 0.8
    _no_barrier_state(run_dir)


def test_rank_file_reads_with_plain_h5py(tmp_path: Path) -> None:
    run_dir, plan, info = make_run(tmp_path, num_batches=5, duration_s=None)
    launch_local(run_dir, plan, info)  # type: ignore[arg-type]
    with h5py.File(run_dir / "rank-00001.h5", "r") as f:
        assert f.attrs["schema_version"] == 2
        assert f.attrs["rank"] == 1 and f.attrs["world_size"] == 2
        assert f.attrs["launch_id"].startswith("L")  # the local launcher's HPCBENCH_LAUNCH_ID
        group = f["timed"]
        lengths = {name: group[name].shape[0] for name in group}
        assert set(lengths) >= {"t_start_ns", "t_end_ns", "images", "device", "data_wait_ns"}
        # --num-batches counts batches per device: exactly 5 timed rows on one device.
        assert set(lengths.values()) == {5}
        assert group["t_start_ns"].dtype == np.int64 and group["t_end_ns"].dtype == np.int64
        assert group.attrs["t_begin_ns"] <= group["t_start_ns"][0]
        assert group.attrs["t_finish_ns"] == group["t_end_ns"][-1]
        assert list(f["barriers"]["name"].asstr()[()]) == ["start", "end"]
        assert json.loads(f.attrs["versions_json"])["backend"]["flops_per_image"] > 0
        assert json.loads(f.attrs["slurm_json"]) is None


def test_rank_file_appears_only_with_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .part file always says whose it is: it is built under a hidden name and renamed once
    its header is written; a rank stopped while building it (SIGTERM becomes an exception in
    the rank) leaves nothing. CI once saw a header-less .part from a rank stopped there."""
    real_layout = RankMetricsWriter._create_layout
    during: list[list[str]] = []

    def watched(self: RankMetricsWriter, *args: Any) -> None:
        during.append(sorted(p.name for p in tmp_path.iterdir()))
        real_layout(self, *args)

    monkeypatch.setattr(RankMetricsWriter, "_create_layout", watched)
    writer = RankMetricsWriter(tmp_path, 3, 4, "run-x", "node001")
    assert during == [[f".rank-00003.h5.part.{os.getpid()}.init"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-00003.h5.part"]
    assert read_rank_file(tmp_path / "rank-00003.h5.part").rank == 3
    assert writer.close(complete=True) == tmp_path / "rank-00003.h5"

    def stopped(self: RankMetricsWriter, *args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(RankMetricsWriter, "_create_layout", stopped)
    other = tmp_path / "stopped"
    other.mkdir()
    with pytest.raises(KeyboardInterrupt):
        RankMetricsWriter(other, 0, 1, "run-x", "node001")
    assert list(other.iterdir()) == []


def test_failing_rank_stops_the_others_and_is_named(tmp_path: Path) -> None:
    run_dir, plan, info = make_run(tmp_path, duration_s=30.0, barrier_timeout_s=60.0)
    # Rank 1 cannot create its metrics file: it exits 2 before the start barrier.
    (run_dir / "rank-00001.h5.part").mkdir()
    started = time.monotonic()
    with pytest.raises(RunError) as caught:
        launch_local(run_dir, plan, info)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("rank 1 exited 2; the other ranks were stopped")
    assert "rank-00001.err" in message
    assert "cannot create metrics file" in message
    assert time.monotonic() - started < 25  # stopped, not left waiting for 30 s or 60 s
    _no_barrier_state(run_dir)


def _slow_exit_python(tmp_path: Path, rank: int, delay_s: float) -> str:
    """A python for the launcher whose process for ``rank`` exits ``delay_s`` after the rank
    did: the rank has aborted the barrier by then, as one still closing its files would."""
    wrapper = tmp_path / "slow-exit-python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'"{sys.executable}" "$@"\n'
        "code=$?\n"
        f'[ "${LOCAL_VARS["rank"]}" = {rank} ] && sleep {delay_s}\n'
        "exit $code\n"
    )
    wrapper.chmod(0o700)
    return str(wrapper)


def test_rank_that_aborted_is_named_though_another_exits_first(tmp_path: Path) -> None:
    """Rank 1 fails and aborts the run, but its process exits after rank 0's (which gave up
    because of it): the launcher names rank 1, not the first rank it saw exit."""
    run_dir, plan, info = make_run(tmp_path, duration_s=30.0, barrier_timeout_s=60.0)
    (run_dir / "rank-00001.h5.part").mkdir()
    python = _slow_exit_python(tmp_path, rank=1, delay_s=2.0)
    with pytest.raises(RunError) as caught:
        launch_local(run_dir, plan, info, python=python)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("rank 1 exited 2; the other ranks were stopped"), message
    assert "cannot create metrics file" in message
    _no_barrier_state(run_dir)


@pytest.mark.parametrize(
    ("partner_code", "expected"),
    [
        (2, "rank 1 exited 2; the other ranks were stopped"),
        # The rank it blamed finished cleanly: the failure is the blaming rank's own.
        (0, "rank 0 exited 1; the other ranks were stopped"),
    ],
)
def test_blame_follows_what_the_blamed_rank_did(
    tmp_path: Path, partner_code: int, expected: str
) -> None:
    """Rank 0 exited 1 blaming rank 1 (caused_by in its status); rank 1 exits a moment later."""
    (tmp_path / LOGS_DIR).mkdir()
    write_json_atomic(
        RunFiles(tmp_path).rank_status(0),
        {"rank": 0, "phase": "failed", "error": "x", "caused_by": [1], "cause": "aborted the run"},
    )
    ranks = _Ranks()
    exits = {
        0: "raise SystemExit(1)",
        1: f"import time; time.sleep(1); raise SystemExit({partner_code})",
    }
    for rank, code in exits.items():
        ranks.procs[rank] = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert ranks.procs[0].wait(30) == 1
        error = _failure(tmp_path, ranks, [0], {0: 1, 1: None})
    finally:
        ranks.stop()
    assert str(error).startswith(expected), error


def _spawn_rank(run_dir: Path, rank: int, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {LOCAL_VARS["rank"]: str(rank), LOCAL_VARS["local_rank"]: str(rank),
         LOCAL_VARS["world_size"]: "2", LOCAL_VARS["node"]: "0", **env_extra}
    )  # fmt: skip
    cpu = _cpus()[rank]
    return subprocess.Popen(
        [sys.executable, "-m", "hpcbench.runtime.rank", str(run_dir)],
        env=env,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, [cpu]),
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_rank_leaves_a_readable_part_file(tmp_path: Path, sig: int) -> None:
    run_dir, _, _ = make_run(tmp_path, duration_s=60.0)
    procs = [_spawn_rank(run_dir, r, {"HPCBENCH_LAUNCH_ID": f"k{sig}"}) for r in (0, 1)]
    try:
        wait_timed(run_dir, 0, 20, timeout_s=30)
        time.sleep(1.2)  # more than the 0.5 s flush interval
        procs[0].send_signal(sig)
        code = procs[0].wait(10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    part = run_dir / "rank-00000.h5.part"
    assert part.exists() and not (run_dir / "rank-00000.h5").exists()
    data = read_rank_file(part)
    assert not data.complete
    assert len(data.timed) >= 20
    assert data.attrs["run_id"] and data.json_attr("plan_json")["rank"] == 0
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM
        assert data.attrs["num_devices"] == 1  # written on the way out


def _swapped_ranks(run_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Both ranks started on the other rank's planned core."""
    procs = []
    for rank in (0, 1):
        env = dict(os.environ)
        env.update(
            {LOCAL_VARS["rank"]: str(rank), LOCAL_VARS["local_rank"]: str(rank),
             LOCAL_VARS["world_size"]: "2", LOCAL_VARS["node"]: "0"}
        )  # fmt: skip
        cpu = _cpus()[1 - rank]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hpcbench.runtime.rank", str(run_dir)],
                env=env,
                stderr=subprocess.PIPE,
                preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, [cpu]),
            )
        )
    return procs


def test_binding_mismatch_is_recorded_and_fails_under_strict_binding(tmp_path: Path) -> None:
    run_dir, _, _ = make_run(tmp_path / "loose", duration_s=0.3)
    for proc in _swapped_ranks(run_dir):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    cpus = _cpus()
    data = read_rank_file(run_dir / "rank-00000.h5")
    assert data.json_attr("binding_json")["mismatches"] == [
        f"cpus: planned {cpus[0]}, got {cpus[1]}"
    ]
    # The result printed by run, submit and aggregate names every such rank, one line each.
    printed = format_summary(aggregate_run(run_dir)).splitlines()
    assert [line for line in printed if "binding differs" in line] == [
        f"rank {r}: binding differs from the plan: cpus: planned {cpus[r]}, got {cpus[1 - r]}"
        for r in (0, 1)
    ]
    strict_dir, _, _ = make_run(tmp_path / "strict", strict_binding=True)
    for rank, proc in enumerate(_swapped_ranks(strict_dir)):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert (
            f"rank {rank}: binding differs from the plan (--strict-binding): cpus: planned "
            f"{cpus[rank]}, got {cpus[1 - rank]}"
        ).encode() in err
    assert not list(strict_dir.glob("rank-*.h5*"))


@pytest.mark.slow
def test_hpcbench_run_cli_two_ranks(tmp_path: Path) -> None:
    """The issue's acceptance command."""
    if len(_cpus()) < 2:
        pytest.skip("needs two CPUs")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hpcbench", "run", "--ranks", "2", "--backend", "cpu",
               "--duration-s", "3", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # What a person reads: the run directory once, every figure in one format and unit, counts
    # in words, and progress in a log that ends with the true counts of timed batches.
    assert done.stdout.strip().splitlines()[-1] == f"run directory: {out}"
    assert (done.stdout + done.stderr).count("run directory") == 1
    assert "2 ranks on 1 node," in done.stdout and "(s)" not in done.stdout
    assert "img/s" in done.stdout and "images/s" not in done.stdout
    assert not re.search(r"\d,\d{3}\.\d", done.stdout), done.stdout  # "3,328.6": another format
    assert done.stderr.startswith("hpcbench: 2 ranks, backend cpu, model mlp")
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(progress) >= 3, done.stderr  # not just "starting": the phases as they change
    files = [read_rank_file(out / f"rank-{r:05d}.h5") for r in (0, 1)]
    assert all(f.complete for f in files)
    counts = " | ".join(f"rank {r}: done {len(files[r].timed)} batches" for r in (0, 1))
    assert progress[-1].endswith("] " + counts), progress
    begins = [f.t_begin_ns or 0 for f in files]
    finishes = [f.t_finish_ns or 0 for f in files]
    assert min(finishes) - max(begins) > 2.5e9
    assert (out / "summary.json").exists()


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_and_removes_shared_state(tmp_path: Path) -> None:
    if len(_cpus()) < 2:
        pytest.skip("needs two CPUs")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hpcbench", "run", "--ranks", "2", "--backend", "cpu",
               "--duration-s", "60", "--out", str(out), "--option", "hidden=128"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Each rank writes its own status file: wait for both, not for one and then read the
        # other (on a loaded machine it may not have written "timed" yet).
        for rank in (0, 1):
            wait_timed(out, rank, 5, timeout_s=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert f"stopped every rank; unfinished rank files in {out}".encode() in err
    parts = sorted(p.name for p in out.glob("rank-*.h5.part"))
    assert parts == ["rank-00000.h5.part", "rank-00001.h5.part"]
    assert all(not read_rank_file(out / name).complete for name in parts)
    _no_barrier_state(out)


def test_hpcbench_run_rejects_a_bad_backend_option_before_starting(tmp_path: Path) -> None:
    from hpcbench.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "--backend", "cpu", "--option", "hiden=3", "--out", str(tmp_path / "r")])
    assert exited.value.code == 2
    assert not (tmp_path / "r").exists()


def test_cpu_devices_split_the_rank_cores_and_count_batches_per_device(tmp_path: Path) -> None:
    cpus = tuple(_cpus()[:2])
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    plan = Plan((RankPlacement(0, 0, 0, 0, 0, cpus, (), (0,)),), (), "test")
    spec = RunSpec(
        batch_size=8, num_batches=4, duration_s=None, warmup_batches=1,
        options={**SMALL, "devices": 2},
    )  # fmt: skip
    run_dir, info = create_run_dir(tmp_path / "run", plan=plan, spec=spec, argv=["test"])
    launch_local(run_dir, plan, info)
    data = read_rank_file(run_dir / "rank-00000.h5")
    assert data.attrs["num_devices"] == 2
    devices = data.json_attr("devices_json")
    assert [tuple(d["cpus"]) for d in devices] == [(cpus[0],), (cpus[1],)]
    assert sorted(data.timed.device.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sorted(data.warmup.device.tolist()) == [0, 1]


def test_hpcbench_run_refuses_a_plan_for_another_node(tmp_path: Path) -> None:
    """The Apollo's 72 CPUs and 2 NUMA nodes are not this machine's: one line, nothing made."""
    out = tmp_path / "r"
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", "run", "--site", "hpe-apollo6500-gen10",
         "--backend", "cpu", "--duration-s", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcbench: error: rank 0: the plan"), lines
    assert "hpe-apollo6500-gen10" in lines[0]
    assert not out.exists()


def test_a_timed_phase_shorter_than_a_batch_still_measures_one(tmp_path: Path) -> None:
    # --duration-s 0.0005: the deadline passes before a device thread starts its first batch;
    # before the fix the rank files had no timed batch (t_finish_ns 0) and were refused.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hpcbench", "run", "--ranks", "1", "--backend", "cpu",
               "--duration-s", "0.0005", "--out", str(out), "-q"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rank = read_rank_file(out / "rank-00000.h5")
    assert len(rank.timed) >= 1 and rank.t_finish_ns is not None
    assert rank.t_finish_ns > (rank.t_begin_ns or 0)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--duration-s", "nan"), ("--duration-s", "inf"), ("--duration-s", "1e300"),
     ("--barrier-timeout-s", "nan"), ("--max-duration-s", "inf")],
)  # fmt: skip
def test_non_finite_or_absurd_times_are_refused_before_anything_starts(
    tmp_path: Path, flag: str, value: str
) -> None:
    out = tmp_path / "run"
    extra = ["--until-stable"] if flag == "--max-duration-s" else []
    command = [sys.executable, "-m", "hpcbench", "run", "--ranks", "1", "--backend", "cpu",
               *extra, flag, value, "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "must be a number of seconds" in done.stderr
    assert not out.exists()
