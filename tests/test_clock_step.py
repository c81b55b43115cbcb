"""A step of the wall clock during the timed phase: the deadline holds, the run is invalid.

The rank process runs with ``time.time_ns`` (CLOCK_REALTIME, what every hpcbench timestamp
uses) moved by ±3 600 s a moment into its timed phase, as NTP or ``date -s`` would; the system
clock itself is never touched. CLOCK_MONOTONIC is left alone, as the kernel leaves it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from hpcbench.aggregate import aggregate_run
from hpcbench.errors import MetricsError
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.runtime.identity import LAUNCH_ID_VAR, LOCAL_VARS
from hpcbench.runtime.rundir import create_run_dir
from hpcbench.spec import RunSpec
from tests.rankfiles import T0_NS, iteration_batches, write_rank

REPO = Path(__file__).resolve().parent.parent
DURATION_S = 1.5
# Runs the rank with the wall clock stepped by argv[2] ns 0.3 s into its timed phase.
STEPPED_RANK = """
import sys, threading, time
from hpcbench.runtime import pipeline, rank
offset = [0]
real_time_ns = time.time_ns
time.time_ns = lambda: real_time_ns() + offset[0]
original_phase = pipeline.Pipeline._phase
def phase(self, name):
    if name == "timed":
        threading.Timer(0.3, offset.__setitem__, (0, int(sys.argv[2]))).start()
    original_phase(self, name)
pipeline.Pipeline._phase = phase
sys.exit(rank.main([sys.argv[1]]))
"""


def _clock_check(summary: dict[str, object]) -> dict[str, object]:
    checks = summary["validity"]["checks"]  # type: ignore[index]
    (check,) = [c for c in checks if c["name"] == "clock"]  # type: ignore[union-attr]
    return check  # type: ignore[no-any-return]


@pytest.mark.parametrize("step_s", [3600, -3600])
def test_a_clock_step_keeps_the_deadline_and_invalidates_the_run(
    tmp_path: Path, step_s: int
) -> None:
    cpu = min(os.sched_getaffinity(0))
    plan = Plan((RankPlacement(0, 0, 0, 0, 0, (cpu,), (), (0,)),), (), "clock test")
    spec = RunSpec(
        batch_size=2,
        duration_s=DURATION_S,
        warmup_batches=5,
        barrier_timeout_s=5.0,
        options={"input": 64, "hidden": 64, "layers": 2, "classes": 10},
    )
    run_dir, _ = create_run_dir(tmp_path / "run", plan=plan, spec=spec, argv=["t"])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        LOCAL_VARS["rank"]: "0",
        LOCAL_VARS["local_rank"]: "0",
        LOCAL_VARS["world_size"]: "1",
        LOCAL_VARS["node"]: "0",
        LAUNCH_ID_VAR: "clock",
        "OMP_NUM_THREADS": "1",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", STEPPED_RANK, str(run_dir), str(step_s * 1_000_000_000)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took_s = time.monotonic() - started
    # Before the fix, -3600 s kept the devices running past the deadline until the rank
    # timed out ("timed phase did not finish"); +3600 s ended the phase at once.
    assert done.returncode == 0, done.stderr[-2000:]
    assert took_s < 60
    if step_s < 0:
        # The phase ends "before" it began on the wall clock: nothing to judge, refused.
        with pytest.raises(MetricsError, match=r"clock_step_ns: the wall clock stepped -3\d{3}\."):
            aggregate_run(run_dir)
        return
    summary = aggregate_run(run_dir)
    check = _clock_check(summary)
    assert check["passed"] is False and summary["validity"]["valid"] is False  # type: ignore[index]
    assert check["measured"] == pytest.approx(step_s, abs=1.0)
    assert "stepped" in str(check["why"])
    # The phase lasted the duration asked on CLOCK_MONOTONIC, however the wall clock moved.
    row = summary["ranks"][0]  # type: ignore[index]
    wall_s = (row["t_finish_ns"] - row["t_begin_ns"]) / 1e9
    assert wall_s - step_s == pytest.approx(DURATION_S, abs=0.5)


def test_the_clock_check_reads_each_rank_file(tmp_path: Path) -> None:
    batches = iteration_batches(T0_NS, [50.0] * 60, num_devices=1, batch_size=8)
    paths = [write_rank(tmp_path, rank, 2, batches) for rank in (0, 1)]
    with h5py.File(paths[1], "r+") as f:
        f["timed"].attrs["clock_step_ns"] = 20_000_000  # 20 ms: reading noise
    check = _clock_check(aggregate_run(tmp_path))
    assert check["passed"] is True and check["measured"] == pytest.approx(0.02)
    (tmp_path / "summary.json").unlink()
    with h5py.File(paths[1], "r+") as f:
        f["timed"].attrs["clock_step_ns"] = -5_000_000_000
    check = _clock_check(aggregate_run(tmp_path))
    assert check["passed"] is False
    assert "stepped -5.000 s during rank 1's timed phase" in str(check["why"])
