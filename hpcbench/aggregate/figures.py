"""The numbers of DESIGN.md ("The numbers"), as pure vectorised numpy functions.

Every function takes plain arrays (integer nanoseconds since the epoch, images per batch,
device indices) and returns plain numbers, so each figure can be checked against a hand
computation without files. Nothing here loops over batches in Python: a run of 64 ranks with
100 000 batches each is aggregated in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
LATENCY_PERCENTILES = (50, 90, 99)


def common_window(t_begin_ns: Sequence[int], t_finish_ns: Sequence[int]) -> tuple[int, int]:
    """The window in which every rank was in its timed phase: [latest begin, earliest finish].

    The window is empty (end <= start) when some rank finished before another began.

    >>> common_window([100, 130], [900, 850])
    (130, 850)
    """
    return int(np.max(np.asarray(t_begin_ns, dtype=np.int64))), int(
        np.min(np.asarray(t_finish_ns, dtype=np.int64))
    )


def images_in_window(
    t_start_ns: np.ndarray,
    t_end_ns: np.ndarray,
    images: np.ndarray,
    window_start_ns: int,
    window_end_ns: int,
) -> float:
    """Images completed inside the window, a batch straddling an edge pro-rated by time.

    A batch entirely inside counts fully, one entirely outside not at all, and one that
    straddles an edge in proportion to the part of its [start, end] interval inside the
    window (its images are taken to progress uniformly while it runs). A batch of zero
    duration counts when it ended inside the window. An empty window holds nothing.

    >>> images_in_window(np.array([0, 20, 40]), np.array([20, 30, 60]), np.array([8, 8, 8]),
    ...                  15, 50)
    14.0
    """
    if window_end_ns <= window_start_ns:
        return 0.0
    t_start = np.asarray(t_start_ns, dtype=np.int64)
    t_end = np.asarray(t_end_ns, dtype=np.int64)
    count = np.asarray(images)
    inside = (t_start >= window_start_ns) & (t_end <= window_end_ns)
    total = float(count.sum(where=inside, dtype=np.int64))
    # Straddlers are few (about one per device and edge): pro-rate only those.
    straddle = np.flatnonzero(~inside & (t_end > window_start_ns) & (t_start < window_end_ns))
    if straddle.shape[0]:
        start, end = t_start[straddle], t_end[straddle]
        overlap = np.minimum(end, window_end_ns) - np.maximum(start, window_start_ns)
        total += float(np.sum(overlap / (end - start) * count[straddle]))
    return total


def rate_img_s(images: float, duration_ns: int | float) -> float | None:
    """Images per second over ``duration_ns``; None when the duration is not positive.

    >>> rate_img_s(1000, 2 * NS_PER_S)
    500.0
    >>> rate_img_s(10, 0) is None
    True
    """
    if duration_ns <= 0:
        return None
    return float(images) * NS_PER_S / float(duration_ns)


def dlbs_iteration_times_ms(t_end_ns: np.ndarray, t_begin_ns: int, num_devices: int) -> np.ndarray:
    """A rank's DLBS iteration times in milliseconds.

    DLBS ran one synchronous iteration over all G of a rank's GPUs at a time; here an iteration
    is G consecutive batch completions in end-time order, and its time is the gap from the end
    of the previous iteration (the first one's from ``t_begin_ns``). A trailing group of fewer
    than G completions is not an iteration.

    >>> dlbs_iteration_times_ms(np.array([3, 1, 2, 4, 5]) * NS_PER_MS, 0, 2).tolist()
    [2.0, 2.0]
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be at least 1, got {num_devices}")
    ends = np.asarray(t_end_ns, dtype=np.int64)
    # Rank files are written in completion order, so the sort is usually unnecessary.
    if ends.shape[0] > 1 and bool(np.any(ends[1:] < ends[:-1])):
        ends = np.sort(ends)
    count = ends.shape[0] // num_devices
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    iteration_ends = ends[num_devices - 1 : count * num_devices : num_devices]
    gaps_ns = np.diff(iteration_ends, prepend=np.int64(t_begin_ns))
    return gaps_ns.astype(np.float64) / NS_PER_MS


@dataclass(frozen=True, slots=True)
class DlbsAdjusted:
    """DLBS's "adjusted" throughput, or why it is undefined for this run."""

    img_s: float | None
    reason: str | None
    mean_iteration_ms: float | None


def dlbs_adjusted(
    iteration_times_ms: Sequence[np.ndarray],
    num_devices: Sequence[int],
    batch_sizes: Sequence[int | None],
    trim: int,
    rank_ids: Sequence[int] | None = None,
) -> DlbsAdjusted:
    """(Σ G_i)·B·1000 / mean_i(mean(t_i[N:K−N])), defined as DLBS defined it.

    Undefined (``img_s`` None and a ``reason``) when the ranks have unequal GPU counts or batch
    sizes, or when some rank has K ≤ 2N iterations, so that nothing is left after trimming.
    ``rank_ids`` name the ranks in that reason (default: their positions).

    >>> t = [np.array([47.0] * 50 + [49.0] * 100 + [54.0] * 50),
    ...      np.array([52.0] * 50 + [54.0] * 100 + [65.0] * 50)]
    >>> round(dlbs_adjusted(t, [4, 4], [128, 128], 50).img_s, 1)
    19883.5
    >>> dlbs_adjusted(t, [4, 2], [128, 128], 50).reason
    'ranks use unequal GPU counts (4, 2); DLBS adjusted assumes equal ranks'
    """
    if trim < 0:
        raise ValueError(f"trim must be non-negative, got {trim}")
    if not iteration_times_ms:
        return DlbsAdjusted(None, "no ranks", None)
    devices = tuple(int(g) for g in num_devices)
    if len(set(devices)) > 1:
        shown = ", ".join(str(g) for g in devices)
        return DlbsAdjusted(
            None, f"ranks use unequal GPU counts ({shown}); DLBS adjusted assumes equal ranks", None
        )
    if any(b is None for b in batch_sizes):
        return DlbsAdjusted(None, "the per-device batch size is not recorded", None)
    sizes = tuple(int(b) for b in batch_sizes if b is not None)
    if len(set(sizes)) > 1:
        shown = ", ".join(str(b) for b in sizes)
        return DlbsAdjusted(
            None,
            f"ranks use unequal batch sizes ({shown}); DLBS adjusted assumes equal ranks",
            None,
        )
    ids = list(rank_ids) if rank_ids is not None else list(range(len(iteration_times_ms)))
    means = []
    for rank, times in zip(ids, iteration_times_ms):
        k = int(times.shape[0])
        if k <= 2 * trim:
            return DlbsAdjusted(
                None,
                f"rank {rank} has K={k} iterations, not more than 2N={2 * trim} (trim N={trim})",
                None,
            )
        means.append(float(np.mean(times[trim : k - trim])))
    mean_ms = float(np.mean(means))
    if mean_ms <= 0:
        return DlbsAdjusted(None, "mean iteration time is zero", mean_ms)
    total_devices = sum(devices)
    return DlbsAdjusted(total_devices * sizes[0] * 1000.0 / mean_ms, None, mean_ms)


def latency_ms(latency_ns: np.ndarray, *, in_place: bool = False) -> dict[str, float | None]:
    """Batch latency percentiles p50/p90/p99 and the maximum, in milliseconds.

    Percentiles interpolate linearly between order statistics (numpy's default method).
    ``in_place`` sorts the caller's array instead of a copy (then reusable by
    :func:`pooled_latency_ms`).

    >>> latency_ms(np.arange(1, 101) * NS_PER_MS)
    {'p50': 50.5, 'p90': 90.1, 'p99': 99.01, 'max': 100.0}
    >>> latency_ms(np.array([], dtype=np.int64))["p50"] is None
    True
    """
    values = np.asarray(latency_ns)
    if in_place:
        # A full sort beats np.percentile's partition for integers (numpy's SIMD sort).
        values.sort()
        ordered = values
    else:
        ordered = np.sort(values)
    return pooled_latency_ms([ordered])


def pooled_latency_ms(sorted_runs: Sequence[np.ndarray]) -> dict[str, float | None]:
    """:func:`latency_ms` of the concatenation of already-sorted integer arrays.

    Order statistics are found by bisection over values, counting with ``searchsorted`` in
    each run: for 64 ranks × 100 000 batches that is ~20 ms where concatenating and sorting
    takes ~150 ms and 51 MB.

    >>> pooled_latency_ms([np.arange(1, 101, 2) * NS_PER_MS, np.arange(2, 101, 2) * NS_PER_MS])
    {'p50': 50.5, 'p90': 90.1, 'p99': 99.01, 'max': 100.0}
    """
    runs = [r for r in sorted_runs if r.shape[0]]
    total = sum(int(r.shape[0]) for r in runs)
    if total == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    result: dict[str, float | None] = {}
    for q in LATENCY_PERCENTILES:
        position = (total - 1) * q / 100.0
        below = int(np.floor(position))
        low = _order_statistic(runs, below)
        high = _order_statistic(runs, min(below + 1, total - 1))
        result[f"p{q}"] = round((low + (high - low) * (position - below)) / NS_PER_MS, 6)
    result["max"] = round(max(float(r[-1]) for r in runs) / NS_PER_MS, 6)
    return result


def _order_statistic(sorted_runs: Sequence[np.ndarray], k: int) -> float:
    """The k-th smallest (0-based) value of the union of sorted runs."""
    if len(sorted_runs) == 1:
        return float(sorted_runs[0][k])
    if not all(np.issubdtype(r.dtype, np.integer) for r in sorted_runs):
        return float(np.sort(np.concatenate(sorted_runs))[k])
    # Smallest integer v with more than k values <= v: that is the k-th smallest value.
    lo = min(int(r[0]) for r in sorted_runs)
    hi = max(int(r[-1]) for r in sorted_runs)
    while lo < hi:
        mid = (lo + hi) // 2
        count = sum(int(np.searchsorted(r, mid, side="right")) for r in sorted_runs)
        if count > k:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def spread_s(times_ns: Sequence[int | None]) -> float | None:
    """max − min of the given times in seconds; None when any time is missing or none given.

    >>> spread_s([1_000_000_000, 1_002_000_000, 1_001_000_000])
    0.002
    >>> spread_s([1, None]) is None
    True
    """
    if not times_ns or any(t is None for t in times_ns):
        return None
    values = np.asarray(times_ns, dtype=np.int64)
    return float(values.max() - values.min()) / NS_PER_S


def throughput_over_time(
    t_start_ns: np.ndarray,
    t_end_ns: np.ndarray,
    images: np.ndarray,
    start_ns: int,
    end_ns: int,
    bins: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Images per second in ``bins`` equal time bins of [start, end].

    Each batch's images are spread evenly over its own [start, end] interval, the way the
    common window pro-rates a batch that straddles its edges. Counting a batch only in the bin
    of its completion would read 0 in a bin shorter than a batch and a burst in the next: a
    saw-tooth around the true rate. Returns (bin centres in seconds after ``start_ns``, img/s).

    >>> starts = np.array([0, 2, 4, 6]) * NS_PER_S // 8
    >>> ends = np.array([2, 4, 6, 8]) * NS_PER_S // 8
    >>> centres, rate = throughput_over_time(starts, ends, np.full(4, 10), 0, NS_PER_S, 8)
    >>> centres.tolist()[:3], rate.tolist()
    ([0.0625, 0.1875, 0.3125], [40.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0])
    """
    # Relative times: epoch nanoseconds exceed a float64's exact integers.
    begin = (np.asarray(t_start_ns, dtype=np.int64) - start_ns).astype(np.float64)
    finish = (np.asarray(t_end_ns, dtype=np.int64) - start_ns).astype(np.float64)
    order = np.argsort(finish, kind="stable")
    begin, finish = begin[order], finish[order]
    count = np.asarray(images, dtype=np.float64)[order]
    finished = np.concatenate(([0.0], np.cumsum(count)))
    longest = float(np.max(finish - begin)) if finish.shape[0] else 0.0
    edges = np.linspace(0.0, float(end_ns - start_ns), bins + 1)
    # Images done by each edge: the batches finished by then, plus the elapsed part of those
    # in flight (they finish within one longest batch after the edge).
    first = np.searchsorted(finish, edges, side="right")
    last = np.searchsorted(finish, edges + longest, side="right")
    done = finished[first]
    for i, edge in enumerate(edges):
        if last[i] > first[i]:
            b, f = begin[first[i] : last[i]], finish[first[i] : last[i]]
            elapsed = np.clip((edge - b) / np.maximum(f - b, 1.0), 0.0, 1.0)
            done[i] += float(np.dot(elapsed, count[first[i] : last[i]]))
    width_s = (end_ns - start_ns) / bins / NS_PER_S
    centres = (edges[:-1] + edges[1:]) / 2.0 / NS_PER_S
    return centres, np.diff(done) / width_s
