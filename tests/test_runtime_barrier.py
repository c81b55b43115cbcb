"""Barriers with real processes: release, timeouts naming the missing rank, aborts, stale state."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import secrets
import signal
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hpcbench.errors import BarrierTimeout, RunError
from hpcbench.runfiles import BARRIER_DIR
from hpcbench.runtime.barrier import (
    SHM_DIR,
    barrier_namespace,
    open_barrier,
    remove_barrier_state,
    sweep_stale_segments,
)

KINDS = ["shm", "file"]
_ctx = mp.get_context("fork")


def _worker(
    kind: str,
    namespace: str,
    run_dir: str,
    rank: int,
    world_size: int,
    timeout_s: float,
    rounds: int,
    results: Any,
    abort_instead: bool = False,
    last_spin_s: float | None = None,
) -> None:
    barrier = open_barrier(
        kind,
        namespace=namespace,
        rank=rank,
        world_size=world_size,
        timeout_s=timeout_s,
        run_dir=Path(run_dir),
        last_spin_s=last_spin_s,
    )
    try:
        if abort_instead:
            time.sleep(0.2)
            barrier.abort("boom in warm-up")
            results.put((rank, "aborted", None))
            return
        events = [barrier.wait(f"b{i}") for i in range(rounds)]
        times = [(e.arrive_ns, e.release_ns, e.common_release_ns) for e in events]
        results.put((rank, "ok", times))
    except BarrierTimeout as exc:
        results.put((rank, "timeout", str(exc)))
    except RunError as exc:
        results.put((rank, "error", str(exc)))
    finally:
        barrier.close()


def _run(
    kind: str,
    namespace: str,
    run_dir: Path,
    world_size: int,
    ranks: list[int],
    *,
    timeout_s: float = 20.0,
    rounds: int = 3,
    abort_rank: int | None = None,
    last_spin_s: float | None = None,
) -> dict[int, tuple[str, Any]]:
    results = _ctx.Queue()
    procs = [
        _ctx.Process(
            target=_worker,
            args=(kind, namespace, str(run_dir), r, world_size, timeout_s, rounds, results),
            kwargs={"abort_instead": r == abort_rank, "last_spin_s": last_spin_s},
        )
        for r in ranks
    ]
    for proc in procs:
        proc.start()
    out = {}
    for _ in procs:
        rank, status, payload = results.get(timeout=timeout_s + 30)
        out[rank] = (status, payload)
    for proc in procs:
        proc.join(10)
    return out


def _namespace() -> str:
    return barrier_namespace(f"test-{secrets.token_hex(4)}", "L1")


def _leftovers(namespace: str, run_dir: Path) -> list[str]:
    found = []
    if (SHM_DIR / namespace).exists():
        found.append(str(SHM_DIR / namespace))
    if (run_dir / BARRIER_DIR).exists():
        found.append(str(run_dir / BARRIER_DIR))
    return found


@pytest.mark.parametrize(("kind", "last_spin_s"), [("shm", 0.0), ("shm", 0.002), ("file", None)])
def test_barrier_releases_every_rank_after_the_last_arrival(
    kind: str, last_spin_s: float | None, tmp_path: Path
) -> None:
    namespace = _namespace()
    # 3 ranks: with a last spin, the second arrival wakes the first to spin (n > 2 path).
    results = _run(kind, namespace, tmp_path, 3, [0, 1, 2], rounds=4, last_spin_s=last_spin_s)
    assert {r: s for r, (s, _) in results.items()} == {0: "ok", 1: "ok", 2: "ok"}
    for round_index in range(4):
        times = [results[r][1][round_index] for r in range(3)]
        last_arrival = max(arrive for arrive, _, _ in times)
        # Nobody leaves before everybody arrived; every rank agrees on the common release time.
        assert all(release >= last_arrival for _, release, _ in times)
        assert {common for _, _, common in times} == {last_arrival}
    assert _leftovers(namespace, tmp_path) == []


@pytest.mark.parametrize("kind", KINDS)
def test_rank_that_never_arrives_is_named_by_every_waiting_rank(kind: str, tmp_path: Path) -> None:
    namespace = _namespace()
    started = time.monotonic()
    results = _run(kind, namespace, tmp_path, 3, [0, 1], timeout_s=1.0, rounds=1)
    assert time.monotonic() - started < 15
    for rank in (0, 1):
        status, message = results[rank]
        assert status == "timeout"
        assert "rank 2 did not arrive within 1 s" in message
        assert "'b0'" in message
    assert _leftovers(namespace, tmp_path) == []


@pytest.mark.parametrize("kind", KINDS)
def test_abort_fails_the_others_at_once(kind: str, tmp_path: Path) -> None:
    namespace = _namespace()
    started = time.monotonic()
    results = _run(kind, namespace, tmp_path, 2, [0, 1], timeout_s=30.0, rounds=1, abort_rank=1)
    assert time.monotonic() - started < 10  # far below the 30 s timeout
    status, message = results[0]
    assert status == "error"
    assert "rank 1 aborted the run: boom in warm-up" in message


@pytest.mark.parametrize("kind", KINDS)
def test_state_of_a_killed_launch_does_not_affect_the_next(kind: str, tmp_path: Path) -> None:
    run_id = f"test-{secrets.token_hex(4)}"
    killed = barrier_namespace(run_id, "first")
    results = _ctx.Queue()
    victim = _ctx.Process(
        target=_worker, args=(kind, killed, str(tmp_path), 0, 2, 60.0, 1, results)
    )
    victim.start()
    # Wait until the victim has arrived, then kill it: its state stays behind.
    deadline = time.monotonic() + 10
    stale = SHM_DIR / killed if kind == "shm" else tmp_path / BARRIER_DIR / killed / "g000001"
    while not (stale.exists() and (kind == "shm" or any(stale.iterdir()))):
        assert time.monotonic() < deadline, "the first launch never arrived"
        time.sleep(0.01)
    os.kill(victim.pid or 0, signal.SIGKILL)
    victim.join(5)
    assert stale.exists()
    # A new launch of the same run directory: different launch id, clean barrier.
    fresh = barrier_namespace(run_id, "second")
    outcome = _run(kind, fresh, tmp_path, 2, [0, 1], rounds=2)
    assert {r: s for r, (s, _) in outcome.items()} == {0: "ok", 1: "ok"}
    # Both ranks released only after both arrived, not on the killed launch's arrival.
    for round_index in range(2):
        arrivals = [outcome[r][1][round_index][0] for r in (0, 1)]
        assert all(outcome[r][1][round_index][1] >= max(arrivals) for r in (0, 1))
    assert remove_barrier_state(killed, tmp_path)
    assert _leftovers(killed, tmp_path) == []


def test_shm_segment_is_owner_only(tmp_path: Path) -> None:
    namespace = _namespace()
    barrier = open_barrier("shm", namespace=namespace, rank=0, world_size=2, timeout_s=1)
    try:
        mode = stat.S_IMODE((SHM_DIR / namespace).stat().st_mode)
        assert mode == 0o600
    finally:
        barrier.abort("test over")
        barrier.close()
    assert not (SHM_DIR / namespace).exists()


def test_file_barrier_state_is_owner_only(tmp_path: Path) -> None:
    namespace = _namespace()
    barrier = open_barrier(
        "file", namespace=namespace, rank=0, world_size=2, timeout_s=1.0, run_dir=tmp_path
    )
    modes: dict[str, int] = {}

    def inspect() -> None:
        root = tmp_path / BARRIER_DIR / namespace
        arrival = root / "g000001" / "a00000"
        deadline = time.monotonic() + 0.9  # inside the barrier's 1 s timeout
        while not arrival.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        modes["root"] = stat.S_IMODE(root.stat().st_mode)
        modes["gen"] = stat.S_IMODE((root / "g000001").stat().st_mode)
        modes["arrival"] = stat.S_IMODE((root / "g000001" / "a00000").stat().st_mode)

    thread = threading.Thread(target=inspect)
    thread.start()
    with pytest.raises(BarrierTimeout, match="rank 1 did not arrive"):
        barrier.wait("start")
    thread.join()
    barrier.close()
    assert modes == {"root": 0o700, "gen": 0o700, "arrival": 0o600}
    assert not (tmp_path / BARRIER_DIR).exists()


@pytest.mark.parametrize("kind", KINDS)
def test_close_inside_the_timeout_handler_removes_the_state(kind: str, tmp_path: Path) -> None:
    namespace = _namespace()
    barrier = open_barrier(
        kind, namespace=namespace, rank=0, world_size=2, timeout_s=0.2, run_dir=tmp_path
    )
    try:
        barrier.wait("start")
    except BarrierTimeout:
        # The traceback still references the waiting frame here, as in a rank's error path.
        barrier.close()
    assert _leftovers(namespace, tmp_path) == []


def test_sweep_removes_only_old_segments_of_dead_ranks(tmp_path: Path) -> None:
    dead = _ctx.Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()

    def segment(name: str, pids: list[int], age_s: float, content: bytes | None = None) -> Path:
        # Header as a rank writes it: magic "HPCB", layout version 1, world size @32.
        header = bytearray(512)
        struct.pack_into("=III", header, 32, 0x48504342, 1, len(pids))
        slots = b"".join(bytes(4) + pid.to_bytes(4, sys.byteorder) + bytes(56) for pid in pids)
        path = tmp_path / f"hpcbench-{name}"
        path.write_bytes(bytes(header) + slots if content is None else content)
        path.chmod(0o600)
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    stale = segment("stale", [dead.pid or 0, 0], 3600)
    live = segment("live", [dead.pid or 0, os.getpid()], 3600)
    young = segment("young", [dead.pid or 0], 5)
    other = tmp_path / "unrelated"
    other.write_bytes(bytes(512))
    # Files of the user's that only share the prefix: never deleted, never a crash (random
    # bytes once gave OverflowError from os.kill in every later run).
    foreign = [
        segment("notes.txt", [], 3600, b"my notes\n" * 100),
        segment("random", [], 3600, random.Random(18).randbytes(4096)),
        segment("zeros", [], 3600, bytes(576)),
        segment("pid-overflow", [0xFFFFFFFF], 3600),
        segment("wrong-size", [dead.pid or 0], 3600),
    ]
    foreign[-1].write_bytes(foreign[-1].read_bytes() + bytes(64))
    os.utime(foreign[-1], (time.time() - 3600, time.time() - 3600))
    assert sweep_stale_segments(600, shm_dir=tmp_path) == [stale]
    assert live.exists() and young.exists() and other.exists()
    assert all(path.exists() for path in foreign)
