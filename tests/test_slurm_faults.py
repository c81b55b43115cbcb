"""Faults on the real local Slurm cluster: a rank killed inside a job, a cancelled job, a job
that hits its time limit. In each case ``hpcbench submit`` exits non-zero saying what ended the
job (and which rank), the run directory's ``slurm.json`` records the final state, what was
written stays readable, aggregation refuses the run, the archive never takes it as complete,
and no rank process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbench.metrics import read_rank_file
from tests.rankwatch import environ, wait_timed

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
HPCBENCH = [sys.executable, "-m", "hpcbench"]


def _submit(site: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [*HPCBENCH, "submit", "--site", str(site), "--ranks", "2", "--backend", "cpu",
               "--batch-size", "8", "--barrier-timeout-s", "20", "--poll-s", "0.5",
               "--out", str(out), *extra]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rank_processes(run_dir: Path) -> dict[int, int]:
    """rank -> pid of this run's rank processes (started by slurmd on this host)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hpcbench.runtime.rank" not in cmdline or str(run_dir).encode() not in cmdline:
            continue
        rank = environ(int(entry.name)).get("SLURM_PROCID")
        if rank is not None:
            found[int(rank)] = int(entry.name)
    return found


def _no_rank_left(run_dir: Path, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _rank_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _rank_processes(run_dir) == {}, "rank processes left behind"


def _finish(proc: subprocess.Popen[str], timeout_s: float = 200.0) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("hpcbench: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _refused_everywhere(run_dir: Path, state: str, tmp_path: Path) -> None:
    """Readable files, aggregate refuses, the archive does not take it as complete."""
    assert json.loads((run_dir / "slurm.json").read_text())["state"] == state
    for path in run_dir.glob("rank-*.h5*"):
        read_rank_file(path)
    assert list(run_dir.glob("rank-*.h5.part")), "some rank must be unfinished"
    done = subprocess.run([*HPCBENCH, "aggregate", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 2 and ".h5.part left" in _error_line(done.stderr)
    archive = tmp_path / "archive"
    refused = subprocess.run(
        [*HPCBENCH, "archive", "add", str(run_dir), "--to", str(archive)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "summary.json" in refused.stderr, refused.stderr
    # With --allow-partial the run can be aggregated and archived, but only as incomplete.
    partial = subprocess.run(
        [*HPCBENCH, "aggregate", str(run_dir), "--allow-partial", "--json"],
        capture_output=True,
        text=True,
    )
    if partial.returncode == 0:
        assert json.loads(partial.stdout)["complete"] is False
        added = subprocess.run(
            [*HPCBENCH, "archive", "add", str(run_dir), "--to", str(archive)],
            capture_output=True,
            text=True,
        )
        assert added.returncode == 0, added.stderr
        entries = list((archive / "index").glob("*.json"))
        assert len(entries) == 1
        entry = json.loads(entries[0].read_text())
        assert entry["complete"] is False, entry
    else:
        # No rank finished (all .part): the message must not send the user back to the flag.
        assert "nothing to aggregate, even with --allow-partial" in _error_line(partial.stderr)


def test_rank_killed_inside_a_job(slurm_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _submit(slurm_site, out, "--duration-s", "60")
    wait_timed(out, 1, 3, timeout_s=150, poll_s=0.2)
    pids = _rank_processes(out)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGKILL)
    code, err = _finish(proc)
    assert code == 1, err
    line = _error_line(err)
    assert "ended FAILED" in line and "rank 1 on node" in line, line
    _no_rank_left(out)
    _refused_everywhere(out, "FAILED", tmp_path)


def test_cancelled_job(slurm_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _submit(slurm_site, out, "--duration-s", "60")
    wait_timed(out, 1, 3, timeout_s=150, poll_s=0.2)
    job_id = json.loads((out / "slurm.json").read_text())["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    code, err = _finish(proc)
    assert code == 1, err
    assert f"job {job_id} ended CANCELLED" in _error_line(err)
    _no_rank_left(out)
    _refused_everywhere(out, "CANCELLED", tmp_path)


@pytest.mark.slow
def test_job_hitting_its_time_limit(slurm_site: Path, tmp_path: Path) -> None:
    """A 1-minute limit and a 10-minute timed phase: Slurm ends the job (TIMEOUT)."""
    out = tmp_path / "run"
    proc = _submit(slurm_site, out, "--duration-s", "600", "--time-min", "1")
    code, err = _finish(proc, timeout_s=250)
    assert code == 1, err
    job_id = json.loads((out / "slurm.json").read_text())["job_id"]
    assert f"job {job_id} ended TIMEOUT" in _error_line(err)
    _no_rank_left(out)
    _refused_everywhere(out, "TIMEOUT", tmp_path)
