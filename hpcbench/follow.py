"""Following a launch: the one polling loop and the ranks' progress line.

The local launcher (its rank processes), ``submit`` (one Slurm job) and a Slurm sweep (a job
array) all wait the same way: :func:`poll_until` calls a step function until it returns a
result, sleeping between calls, and ends with the caller's error when its deadline passes.
Progress comes from the ranks' status files (:meth:`hpcbench.runfiles.RunFiles.read_status`),
so no launcher imports the rank's code to print it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from hpcbench.runfiles import RunFiles

T = TypeVar("T")


def poll_until(
    step: Callable[[], T | None],
    *,
    poll_s: float,
    timeout_s: float | None,
    timed_out: Callable[[], Exception],
    sleep: Callable[[float], object] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``step`` until it returns something other than None, and return that.

    Between calls it sleeps ``poll_s``. After ``timeout_s`` (None: no deadline, for waits whose
    every part has its own timeout) it raises ``timed_out()``, which names what did not arrive.
    ``step`` may raise to end the wait early (a rank failed).

    >>> answers = iter([None, None, "done"])
    >>> poll_until(lambda: next(answers), poll_s=0, timeout_s=None, timed_out=RuntimeError)
    'done'
    >>> clock = iter(range(100))
    >>> poll_until(lambda: None, poll_s=0, timeout_s=3, timed_out=lambda: TimeoutError("job 7"),
    ...            monotonic=lambda: next(clock))
    Traceback (most recent call last):
    ...
    TimeoutError: job 7
    """
    deadline = None if timeout_s is None else monotonic() + timeout_s
    while True:
        result = step()
        if result is not None:
            return result
        if deadline is not None and monotonic() > deadline:
            raise timed_out()
        sleep(poll_s)


def progress_phases(line: str) -> str:
    """A progress line without its clock and counts: equal for two lines in the same phases.

    >>> progress_phases("[   2.0 s] rank 0: timed 12 batches | rank 1: warmup")
    'rank 0: timed | rank 1: warmup'
    """
    return re.sub(r" \d+ batches|\[.*?\] ", "", line)


def progress_line(files: RunFiles, ranks: Iterable[int], elapsed_s: float) -> str:
    """One line of progress from the ranks' status files."""
    parts = []
    for rank in ranks:
        status = files.read_status(rank)
        phase = status.get("phase", "starting")
        if phase in ("timed", "barrier end", "done"):
            phase = f"{phase} {int(status.get('timed_batches', 0))} batches"
        parts.append(f"rank {rank}: {phase}")
    return f"[{elapsed_s:6.1f} s] " + " | ".join(parts)
