"""``--until-stable``: the timed phase goes on, window by window, until the throughput is steady."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcbench.errors import ConfigError, RunError
from hpcbench.metrics import read_rank_file
from hpcbench.runtime import stable
from hpcbench.runtime.barrier import BarrierEvent
from hpcbench.spec import RunSpec
from tests.rankfiles import T0_NS

NS_PER_S = 1_000_000_000


class FakeBarrier:
    """Releases checkpoint k at T0 + k s + 5 ms, as if the last rank arrived then."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def wait(self, name: str) -> BarrierEvent:
        self.names.append(name)
        k = int(name.split("-")[1])
        common = T0_NS + k * NS_PER_S + 5_000_000
        return BarrierEvent(name, k + 1, common - 1000, common, common)


class FakeWriter:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def barrier(self, name: str, arrive_ns: int, release_ns: int) -> None:
        self.events.append((name, arrive_ns, release_ns))


def _steady_batches() -> list[tuple[int, int, int]]:
    """Rank 0: a batch of 10 images every 100 ms for 10 s (100 img/s)."""
    ends = T0_NS + np.arange(1, 101) * 100_000_000
    return [(int(e) - 100_000_000, int(e), 10) for e in ends]


def _search(run_dir: Path, barrier: FakeBarrier, world_size: int = 2) -> int:
    return stable.search(
        run_dir=run_dir, rank=0, world_size=world_size, barrier=barrier,  # type: ignore[arg-type]
        writer=FakeWriter(), start_ns=T0_NS, window_s=1.0, limit_s=10.0,  # type: ignore[arg-type]
        max_ratio=1.1, wait_past=lambda t_ns: None, batches=_steady_batches,
    )  # fmt: skip


def _vote(run_dir: Path, rank: int, checkpoints: dict[str, list[float]]) -> None:
    (run_dir / "logs").mkdir(exist_ok=True)
    stable.vote_path(run_dir, rank).write_text(json.dumps({"checkpoints": checkpoints}))


def test_every_rank_decides_on_the_sum_of_all_ranks(tmp_path: Path) -> None:
    # Rank 1 was still warming up in the first window, steady from the second.
    _vote(tmp_path, 1, {"1": [100, 100, 30], "2": [200, 200, 200]})
    barrier = FakeBarrier()
    deadline = _search(tmp_path, barrier)
    assert barrier.names == ["stable-1", "stable-2"]
    assert deadline == T0_NS + 2 * NS_PER_S + 5_000_000  # checkpoint 2's common release
    mine = json.loads(stable.vote_path(tmp_path, 0).read_text())["checkpoints"]
    assert mine["1"] == pytest.approx([100 / 3, 100 / 3, 100 / 3])
    assert mine["2"] == pytest.approx([200 / 3, 200 / 3, 200 / 3])


def test_never_steady_stops_at_the_maximum(tmp_path: Path) -> None:
    _vote(tmp_path, 1, {str(k): [100, 100, 10] for k in range(1, 10)})
    barrier = FakeBarrier()
    assert _search(tmp_path, barrier) == T0_NS + 10 * NS_PER_S
    assert barrier.names == [f"stable-{k}" for k in range(1, 10)]


def test_a_missing_count_names_the_rank(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    with pytest.raises(RunError, match="rank 1's image counts for stability check 1"):
        _search(tmp_path, FakeBarrier())


def test_until_stable_needs_a_duration() -> None:
    with pytest.raises(ConfigError, match="until_stable: needs duration_s"):
        RunSpec(until_stable=True, duration_s=None, num_batches=10)
    with pytest.raises(ConfigError, match="max_duration_s: must be at least duration_s"):
        RunSpec(until_stable=True, duration_s=5.0, max_duration_s=4.0)
    assert RunSpec(until_stable=True, duration_s=2.0).stable_limit_s == 20.0


@pytest.mark.slow
def test_two_ranks_stop_together_once_steady(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hpcbench", "run", "--ranks", "2", "--backend", "cpu",
               "--duration-s", "1", "--until-stable", "--max-duration-s", "8",
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = [read_rank_file(out / f"rank-{r:05d}.h5") for r in (0, 1)]
    deadlines = {int(f.attrs["deadline_ns"]) for f in files}
    assert len(deadlines) == 1  # one shared deadline
    deadline = deadlines.pop()
    begin = min(int(f.t_begin_ns or 0) for f in files)
    assert NS_PER_S <= deadline - begin <= 8 * NS_PER_S + 10_000_000
    names = [{n for n, _, _ in f.barriers} for f in files]
    assert names[0] == names[1] and "stable-1" in names[0]
    # No rank started a timed batch after the shared deadline (the search moved it for all).
    assert all(int(f.timed.t_start_ns.max()) < deadline + 5_000_000 for f in files)
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert summary["validity"]["rules"] == "default"
