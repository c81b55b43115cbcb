"""``--until-stable``: keep the timed phase going until the aggregate throughput is steady.

Like perf_analyzer's stability search. The timed phase is cut into windows of ``duration_s``
from the start barrier's common release. At the end of window k every rank counts the images
it completed in each third of [common release, end of window k], writes the counts to
``RUN_DIR/logs/stable-NNNNN.json`` (every checkpoint so far, so no rank overwrites what another
has not read yet) and passes the barrier ``stable-k``. Every rank then reads every rank's file,
sums the thirds and applies the ``steady_state`` rule (max/min ≤ the rules' ratio): all ranks
read the same numbers, so all take the same decision. When steady, the new deadline is the
barrier's ``common_release_ns`` (the same on every rank, already past), so the ranks stop
together; else the next window follows, until ``max_duration_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hpcbench.aggregate.validity import STEADY_WINDOWS, slice_images, steady_ratio
from hpcbench.errors import HpcbenchError, RunError
from hpcbench.jsonfile import read_json, write_json_atomic
from hpcbench.metrics import RankMetricsWriter
from hpcbench.runfiles import RunFiles
from hpcbench.runtime.barrier import Barrier

log = logging.getLogger("hpcbench.rank")

# (t_start_ns, t_end_ns, images) of one timed batch.
Batch = tuple[int, int, int]


def thirds_images(batches: Sequence[Batch], start_ns: int, end_ns: int) -> list[float]:
    """Images completed in each third of [start_ns, end_ns] (straddlers pro-rated).

    >>> thirds_images([(0, 10, 4), (10, 20, 4), (20, 30, 4)], 0, 30)
    [4.0, 4.0, 4.0]
    """
    rows = np.asarray(batches, dtype=np.int64).reshape(-1, 3)
    return slice_images(rows[:, 0], rows[:, 1], rows[:, 2], start_ns, end_ns)


def vote_path(run_dir: Path, rank: int) -> Path:
    return RunFiles(run_dir).rank_stable(rank)


def read_votes(run_dir: Path, world_size: int, checkpoint: int) -> list[list[float]]:
    """Every rank's thirds at ``checkpoint``; RunError naming a rank whose count is missing."""
    votes = []
    for rank in range(world_size):
        path = vote_path(run_dir, rank)
        try:
            data = read_json(path, "stability counts")
            votes.append([float(x) for x in data["checkpoints"][str(checkpoint)]])
        except (HpcbenchError, KeyError, TypeError, ValueError) as exc:
            raise RunError(
                f"{path}: rank {rank}'s image counts for stability check {checkpoint} are "
                f"missing or unreadable ({exc})"
            ) from None
    return votes


def is_steady(votes: Sequence[Sequence[float]], max_ratio: float) -> tuple[bool, float | None]:
    """Whether the summed thirds agree within ``max_ratio`` (the steady_state rule).

    >>> is_steady([[100, 100, 104], [100, 100, 105]], 1.1)
    (True, 1.045)
    >>> is_steady([[100, 50, 100]], 1.1)
    (False, 2.0)
    """
    totals = [float(sum(v[i] for v in votes)) for i in range(STEADY_WINDOWS)]
    ratio = steady_ratio(totals)
    return ratio is not None and ratio <= max_ratio, ratio


def search(
    *,
    run_dir: Path,
    rank: int,
    world_size: int,
    barrier: Barrier,
    writer: RankMetricsWriter,
    start_ns: int,
    window_s: float,
    limit_s: float,
    max_ratio: float,
    wait_past: Callable[[int], None],
    batches: Callable[[], list[Batch]],
) -> int:
    """Run the stability search; return the timed phase's final deadline (wall-clock ns).

    ``wait_past(t_ns)`` returns once every device completed a batch ending after ``t_ns``;
    ``batches()`` is this rank's timed batches so far.
    """
    limit_ns = start_ns + int(limit_s * 1e9)
    counts: dict[str, list[float]] = {}
    checkpoint = 0
    while True:
        checkpoint += 1
        end_ns = start_ns + int(checkpoint * window_s * 1e9)
        if end_ns >= limit_ns:
            log.info("until-stable: not steady within %g s; stopping there", limit_s)
            return limit_ns
        wait_past(end_ns)
        counts[str(checkpoint)] = thirds_images(batches(), start_ns, end_ns)
        write_json_atomic(vote_path(run_dir, rank), {"rank": rank, "checkpoints": counts})
        event = barrier.wait(f"stable-{checkpoint}")
        writer.barrier(event.name, event.arrive_ns, event.release_ns)
        steady, ratio = is_steady(read_votes(run_dir, world_size, checkpoint), max_ratio)
        shown = "undefined" if ratio is None else f"{ratio:.3f}"
        log.info(
            "until-stable: %.1f s timed, thirds max/min %s: %s",
            (end_ns - start_ns) / 1e9,
            shown,
            "steady" if steady else "going on",
        )
        if steady:
            return event.common_release_ns
