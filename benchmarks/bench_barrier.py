"""Release skew of the shm and file barriers with real processes on this machine.

For every barrier, skew = latest minus earliest release time (CLOCK_REALTIME, ns) over the
ranks; the table gives p50 / p99 / max over all barriers, in microseconds, plus the mean time
per barrier and the CPU time the ranks used per barrier. ``--jitter-us`` makes every rank
arrive after a random pause of up to that long, so early ranks go past the spin phase and
sleep in the kernel, as at a real start barrier; 0 runs barriers back to back.

    .venv/bin/python benchmarks/bench_barrier.py                    # the docs table
    .venv/bin/python benchmarks/bench_barrier.py --kinds shm --ranks 2,4 --barriers 3000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcbench.runtime.barrier import (
    ShmBarrier,
    barrier_namespace,
    open_barrier,
    remove_barrier_state,
)


def _rank(
    kind: str, namespace: str, run_dir: str, rank: int, world: int, barriers: int,
    jitter_us: float, spin_us: float | None, last_spin_us: float | None, results: Any,
) -> None:  # fmt: skip
    barrier = open_barrier(
        kind,
        namespace=namespace,
        rank=rank,
        world_size=world,
        timeout_s=60.0,
        run_dir=Path(run_dir),
        spin_s=None if spin_us is None else spin_us * 1e-6,
        last_spin_s=None if last_spin_us is None else last_spin_us * 1e-6,
    )
    rng = random.Random(rank)
    releases = np.empty(barriers, dtype=np.int64)
    cpu0 = time.process_time()
    try:
        barrier.wait("warm")  # every rank has started
        for i in range(barriers):
            if jitter_us > 0:
                time.sleep(rng.uniform(0, jitter_us) * 1e-6)
            releases[i] = barrier.wait("b").release_ns
    finally:
        barrier.close()
    results.put((rank, releases, time.process_time() - cpu0))


def measure(
    kind: str,
    world: int,
    barriers: int,
    jitter_us: float,
    spin_us: float | None,
    last_spin_us: float | None = None,
) -> dict[str, float]:
    """Run ``barriers`` barriers among ``world`` processes; skew percentiles in µs."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    namespace = barrier_namespace(f"bench-{secrets.token_hex(4)}", "b")
    with tempfile.TemporaryDirectory(prefix="hpcbench-bench-") as run_dir:
        procs = [
            ctx.Process(
                target=_rank,
                args=(
                    kind,
                    namespace,
                    run_dir,
                    r,
                    world,
                    barriers,
                    jitter_us,
                    spin_us,
                    last_spin_us,
                    results,
                ),
            )
            for r in range(world)
        ]
        start = time.perf_counter()
        for proc in procs:
            proc.start()
        got = [results.get(timeout=600) for _ in procs]
        elapsed = time.perf_counter() - start
        for proc in procs:
            proc.join()
        remove_barrier_state(namespace, Path(run_dir))
    releases = np.stack([r[1] for r in sorted(got, key=lambda x: x[0])])
    skew_us = (releases.max(axis=0) - releases.min(axis=0)) / 1e3
    cpu_s = sum(r[2] for r in got)
    return {
        "p50": float(np.percentile(skew_us, 50)),
        "p99": float(np.percentile(skew_us, 99)),
        "max": float(skew_us.max()),
        "per_barrier_us": elapsed / barriers * 1e6,
        "cpu_us": cpu_s / barriers * 1e6,
    }


def _variant(text: str) -> tuple[float | None, float | None]:
    """``SPIN:LAST`` in µs, ``d`` for the built-in value: ``d:0`` = built-in spin, no last spin."""
    spin, _, last = text.partition(":")
    return (None if spin in ("d", "") else float(spin), None if last in ("d", "") else float(last))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default="shm,file")
    parser.add_argument("--ranks", default="2,4,8")
    parser.add_argument("--barriers", type=int, default=1000)
    parser.add_argument("--jitter-us", default="0,2000", help="comma-separated arrival jitters")
    parser.add_argument(
        "--shm-variants",
        default="d:d,d:0",
        help="comma-separated SPIN:LAST shm spin times in µs ('d': built-in; d:0 = no last spin)",
    )
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    print(f"# {cpus} CPUs, {args.barriers} barriers per row, python {sys.version.split()[0]}")
    print(
        "| kind | spin / last-spin µs | ranks | jitter µs | skew p50 µs | p99 µs | max µs "
        "| wall µs/barrier | CPU µs/barrier |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    variants = [_variant(v) for v in args.shm_variants.split(",")]
    for jitter in (float(j) for j in args.jitter_us.split(",")):
        for kind in args.kinds.split(","):
            for spin, last in variants if kind == "shm" else [(None, None)]:
                label = "-"
                if kind == "shm":
                    spin_us = ShmBarrier.DEFAULT_SPIN_S * 1e6 if spin is None else spin
                    last_us = "auto" if last is None else f"{last:.0f}"
                    label = f"{spin_us:.0f} / {last_us}"
                for world in (int(n) for n in args.ranks.split(",")):
                    row = measure(kind, world, args.barriers, jitter, spin, last)
                    print(
                        f"| {kind} | {label} | {world} | {jitter:.0f} | {row['p50']:.1f} | "
                        f"{row['p99']:.1f} | {row['max']:.1f} | {row['per_barrier_us']:.1f} | "
                        f"{row['cpu_us']:.1f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
