"""Watching rank processes from outside, as the fault tests do: their environment in /proc and
their published status (reusable by any test that starts real ranks)."""

from __future__ import annotations

import time
from pathlib import Path

from hpcbench.runfiles import RunFiles


def environ(pid: int) -> dict[str, str]:
    """The environment of a process as /proc shows it ({} when it is gone).

    Empty for an instant while the process is in ``execve`` (numactl replacing itself with
    the rank's python): callers that need a variable wait for it instead of reading once.
    """
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def reached_timed(run_dir: Path, rank: int, batches: int) -> bool:
    """Whether ``rank`` has published at least ``batches`` batches of its timed phase."""
    status = RunFiles(run_dir).read_status(rank)
    return status.get("phase") == "timed" and int(status.get("timed_batches", 0)) >= batches


def wait_timed(
    run_dir: Path, rank: int, batches: int, timeout_s: float, poll_s: float = 0.05
) -> None:
    """Wait until ``rank`` is ``batches`` batches into its timed phase; fail naming it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reached_timed(run_dir, rank, batches):
            return
        time.sleep(poll_s)
    raise AssertionError(
        f"rank {rank} of {run_dir} did not reach {batches} timed batches within {timeout_s:g} s"
    )
