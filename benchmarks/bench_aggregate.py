"""Aggregation speed: time and peak memory of ``aggregate_run`` on a large synthetic run.

Generates RANKS rank files of BATCHES timed batches each (4 devices per rank, jittered batch
times, ranks starting a few ms apart) with the test helper ``tests/rankfiles.py``, then runs
``aggregate_run`` REPEAT times, each in a fresh Python process so that its peak RSS
(``ru_maxrss``) is its own. Prints one line per repeat and a summary; ``--json`` for machines.

    .venv/bin/python benchmarks/bench_aggregate.py                 # 64 ranks × 100 000 batches
    .venv/bin/python benchmarks/bench_aggregate.py --ranks 8 --batches 10000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.rankfiles import NS_PER_MS, T0_NS, Batches, write_rank  # noqa: E402

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from hpcbench.aggregate import aggregate_run
rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
summary = aggregate_run(Path(sys.argv[1]))
elapsed_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({
    "aggregate_s": elapsed_s,
    "cpu_s": cpu_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_imports_mb": rss_before_kb / 1024,
    "common_window_img_s": summary["throughput"]["common_window_img_s"],
}))
"""


def generate(run_dir: Path, ranks: int, batches: int, devices: int, seed: int) -> None:
    """Write ``ranks`` rank files of ``batches`` timed batches each."""
    rng = np.random.default_rng(seed)
    per_device = batches // devices
    for rank in range(ranks):
        begin_ns = T0_NS + int(rng.integers(0, 5 * NS_PER_MS))
        # Each device runs back to back: batch times jittered around 10 ms.
        durations = rng.normal(10.0, 0.5, size=(devices, per_device)).clip(5.0) * NS_PER_MS
        ends = begin_ns + np.cumsum(durations.astype(np.int64), axis=1)
        starts = np.concatenate(
            (np.full((devices, 1), begin_ns, dtype=np.int64), ends[:, :-1]), axis=1
        )
        device = np.repeat(np.arange(devices, dtype=np.int16)[:, None], per_device, axis=1)
        order = np.argsort(ends, axis=None, kind="stable")
        timed = Batches.of(starts.ravel()[order], ends.ravel()[order], 256, device.ravel()[order])
        write_rank(run_dir, rank, ranks, timed, num_devices=devices, batch_size=256)


def measure(run_dir: Path) -> dict[str, float]:
    """Run ``aggregate_run`` in a fresh interpreter and return its time and peak RSS.

    The previous result is removed first: a run is normally aggregated once, and replacing
    a 190 MB ``result.h5`` adds the kernel's time to free the old file's pages.
    """
    for name in ("result.h5", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(run_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100_000, help="timed batches per rank")
    parser.add_argument("--devices", type=int, default=4, help="devices per rank")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="keep the generated run here (default: temp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-aggregate-") as tmp:
        run_dir = args.dir or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        generate(run_dir, args.ranks, args.batches, args.devices, seed=1)
        generate_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in run_dir.glob("rank-*.h5")) / 2**20
        runs = [measure(run_dir) for _ in range(args.repeat)]
        result_mb = (run_dir / "result.h5").stat().st_size / 2**20
    report = {
        "ranks": args.ranks,
        "batches_per_rank": args.batches,
        "rank_files_mb": round(size_mb, 1),
        "result_h5_mb": round(result_mb, 1),
        "generate_s": round(generate_s, 2),
        "aggregate_s": [round(r["aggregate_s"], 3) for r in runs],
        "cpu_s": [round(r["cpu_s"], 3) for r in runs],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in runs],
        "rss_after_imports_mb": round(runs[0]["rss_after_imports_mb"], 1),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{args.ranks} ranks × {args.batches} batches: rank files {report['rank_files_mb']} MB, "
        f"result.h5 {report['result_h5_mb']} MB (generated in {report['generate_s']} s)"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"  run {i}: aggregate_run {r['aggregate_s']:.3f} s wall, {r['cpu_s']:.3f} s CPU, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['rss_after_imports_mb']:.0f} MB)"
        )
    print(
        f"best {min(report['aggregate_s']):.3f} s, worst {max(report['aggregate_s']):.3f} s, "
        f"max peak RSS {max(report['peak_rss_mb']):.0f} MB; load average "
        f"{report['load_average_1min']} on {os.cpu_count()} CPUs (wall time grows with load)"
    )


if __name__ == "__main__":
    main()
