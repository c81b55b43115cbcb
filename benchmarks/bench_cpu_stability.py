"""CPU backend stability: back-to-back runs of one rank on all cores and of one rank per core.

Runs, one after the other, ``hpcbench run --backend cpu --duration-s 2`` RUNS times for
``--ranks 1`` (one rank on every core) and for ``--ranks 2 --cores-per-rank 1`` (one rank per
core), then BUSY times one rank on all cores with a busy loop (``sh -c 'while :; do :; done'``)
running beside it, killed afterwards. Prints a Markdown table of the common-window throughput of
every run, max/min per configuration, each figure's ratio to the best quiet one-rank figure, and
what else the machine ran: the 1-minute load average before each run and the number of
runnable tasks (``/proc/loadavg``) sampled during it, our own ranks included.

    .venv/bin/python benchmarks/bench_cpu_stability.py                 # 5 runs each, 2 busy
    .venv/bin/python benchmarks/bench_cpu_stability.py --runs 3 --repo /path/to/other/checkout

``--repo`` runs another checkout's hpcbench (put first on PYTHONPATH), to compare versions with
the same interpreter and packages. ``--json FILE`` also writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "1 rank, all cores": ["--ranks", "1"],
    "1 rank per core": ["--ranks", "2", "--cores-per-rank", "1"],
}
BUSY = "1 rank, all cores, busy loop beside"


def runnable_tasks() -> int:
    """Runnable scheduling entities now (4th field of /proc/loadavg, 'running/total')."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])


def one_run(repo: Path, args: list[str], duration_s: float, out: Path) -> dict[str, Any]:
    """One ``hpcbench run``; its common-window figure, p50 latency and the load around it."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    command = [sys.executable, "-m", "hpcbench", "run", "--backend", "cpu", "--duration-s",
               str(duration_s), "-q", "--out", str(out), *args]  # fmt: skip
    load_before = os.getloadavg()[0]
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append(runnable_tasks())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    finally:
        stop.set()
        sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "img_s": summary["throughput"]["common_window_img_s"],
        "p50_ms": summary["latency_ms"]["p50"],
        "load_1min": round(load_before, 2),
        "runnable_mean": round(sum(samples) / len(samples), 1) if samples else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per quiet configuration")
    parser.add_argument("--busy", type=int, default=2, help="runs beside a busy loop")
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose hpcbench runs")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()

    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        for name, flags in CONFIGS.items():
            results[name] = []
            for i in range(args.runs):
                out = Path(tmp) / f"{len(results)}-{i}"
                results[name].append(one_run(args.repo, flags, args.duration_s, out))
                print(f"{name} #{i + 1}: {results[name][-1]}", file=sys.stderr, flush=True)
        results[BUSY] = []
        for i in range(args.busy):
            busy = subprocess.Popen(["sh", "-c", "while :; do :; done"])
            try:
                time.sleep(0.5)  # let the scheduler see it as a steady load
                out = Path(tmp) / f"busy-{i}"
                results[BUSY].append(one_run(args.repo, CONFIGS["1 rank, all cores"],
                                             args.duration_s, out))  # fmt: skip
            finally:
                busy.kill()
                busy.wait()
            print(f"{BUSY} #{i + 1}: {results[BUSY][-1]}", file=sys.stderr, flush=True)

    quiet_best = max(r["img_s"] for r in results["1 rank, all cores"])
    print(f"CPUs {os.cpu_count()}, {args.duration_s:g} s runs, repo {args.repo}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")  # fmt: skip
    print()
    print("| configuration | common-window img/s | max/min | × best quiet 1-rank | "
          "p50 batch ms | load avg before | runnable tasks during |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        figures = [r["img_s"] for r in runs]
        spread = max(figures) / min(figures) if min(figures) > 0 else float("inf")
        cells = [
            name,
            ", ".join(f"{f:,.0f}" for f in figures),
            f"{spread:.2f}",
            ", ".join(f"{f / quiet_best:.2f}" for f in figures),
            ", ".join(f"{r['p50_ms']:.1f}" for r in runs),
            ", ".join(f"{r['load_1min']:.1f}" for r in runs),
            ", ".join(str(r["runnable_mean"]) for r in runs),
        ]
        print("| " + " | ".join(cells) + " |")
    per_core_best = max(r["img_s"] for r in results["1 rank per core"])
    print()
    print(f"best quiet: 1 rank on all cores {quiet_best:,.0f} img/s, 1 rank per core "
          f"{per_core_best:,.0f} img/s, ratio {quiet_best / per_core_best:.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
