"""hpcbench against its ceiling, a bare loop with no copy, measured in turns on one GPU.

A GPU capped by power runs slower as it warms, so a bare loop measured first and ``hpcbench
run`` measured minutes later differ by the clock, not only by the harness. This script keeps
one bare-loop process (benchmarks/gpu/bare_loop.py ``--serve``: model and graphs built once)
and alternates its variants with ``hpcbench run`` processes, every step SECONDS long, while a
thread samples the GPU's SM clock, power and temperature (NVML, 10 Hz). Each ``hpcbench run`` is
compared with the mean of the no-copy bare figures measured just before and just after it.

Steps (``--steps``, comma list, run in that order): ``bare:VARIANT`` (nocopy, copy, serial) or
``hb:NAME`` with NAME one of HB_RUNS below.

    python benchmarks/gpu/copy_gap.py --seconds 10 --out /tmp/gap
    python benchmarks/gpu/copy_gap.py --steps bare:nocopy,hb:r50,bare:nocopy --seconds 10

Prints a Markdown table (img/s, ratio to the bracketing no-copy figures, GPU time per batch and
gap for the bare loop or the median interval between two completions for hpcbench, SM MHz, W,
°C) and writes ``copy_gap.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# hpcbench runs compared with the bare loop (ResNet-50 at 224 px unless they say otherwise).
HB_RUNS: dict[str, list[str]] = {
    # What the bare loop runs: fp16, batch 256, channels_last, CUDA graph.
    "r50": ["--backend", "torch", "--model", "resnet50", "--precision", "fp16",
            "--batch-size", "256", "--cuda-graph", "--gpus", "0"],
    # No workload flag at all: the GPU defaults.
    "default": [],
    # The best configuration without torch.compile measured before (docs/performance.md).
    "r50_b512": ["--backend", "torch", "--model", "resnet50", "--precision", "fp16",
                 "--batch-size", "512", "--cuda-graph", "--gpus", "0"],
    "r50_bf16": ["--backend", "torch", "--model", "resnet50", "--precision", "bf16",
                 "--batch-size", "256", "--cuda-graph", "--gpus", "0"],
    # Host-side suspects: no telemetry thread; one prefetcher.
    "r50_tele0": ["--backend", "torch", "--model", "resnet50", "--precision", "fp16",
                  "--batch-size", "256", "--cuda-graph", "--gpus", "0", "--telemetry-hz", "0"],
    "r50_pf1": ["--backend", "torch", "--model", "resnet50", "--precision", "fp16",
                "--batch-size", "256", "--cuda-graph", "--gpus", "0", "--prefetchers", "1"],
}  # fmt: skip
SPEC_KEYS = ("model", "precision", "batch_size", "cuda_graph", "channels_last", "telemetry_hz")
DEFAULT_STEPS = (
    "bare:nocopy,bare:copy,bare:serial,hb:r50,bare:nocopy,hb:default,bare:nocopy,bare:copy,"
    "hb:r50_b512,bare:nocopy,hb:r50_tele0,bare:nocopy,hb:r50,bare:nocopy,bare:copy"
)


class GpuSampler:
    """SM clock, power and temperature of GPU 0 at 10 Hz, in a thread, with time stamps."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nv, h = self._nvml, self._handle
        while not self._stop.wait(0.1):
            self.samples.append(
                (
                    time.time(),
                    nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                    nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                    nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                )
            )

    def window(self, start: float, end: float) -> dict[str, float | None]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {"sm_mhz": None, "power_w": None, "temp_c": None}
        return {
            "sm_mhz": round(statistics.fmean(s[1] for s in inside)),
            "power_w": round(statistics.fmean(s[2] for s in inside)),
            "temp_c": round(statistics.fmean(s[3] for s in inside)),
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_hb(name: str, seconds: float, out: Path) -> dict[str, Any]:
    """One ``hpcbench run``; its figure and the median interval between batch completions."""
    run_dir = out / f"hb-{name}-{int(time.time())}"
    command = [sys.executable, "-m", "hpcbench", "run", "--duration-s", str(seconds),
               "--warmup-batches", "10", "-q", "--out", str(run_dir), *HB_RUNS[name]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    (out / f"{run_dir.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    summary = json.loads((run_dir / "summary.json").read_text())
    spec = json.loads((run_dir / "spec.json").read_text())
    import h5py

    intervals: list[float] = []
    for path in sorted(run_dir.glob("rank-*.h5")):
        with h5py.File(path, "r") as f:
            ends = np.sort(np.asarray(f["timed"]["t_end_ns"]))
        intervals.extend((np.diff(ends) / 1e6).tolist())
    header = [line for line in done.stderr.splitlines() if line.startswith("hpcbench:")]
    return {
        "window_s": (summary["window"]["start_ns"] / 1e9, summary["window"]["end_ns"] / 1e9),
        "images_per_s": summary["throughput"]["common_window_img_s"],
        "interval_ms": round(statistics.median(intervals), 4) if intervals else None,
        "spec": {k: spec[k] for k in SPEC_KEYS},
        "header": header,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", default=DEFAULT_STEPS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hpcbench-copy-gap"))
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no step after this")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_begin = time.monotonic()
    sampler = GpuSampler()
    bare = subprocess.Popen(
        [sys.executable, str(HERE / "bare_loop.py"), "--cuda-graph", "--serve",
         "--seconds", str(args.seconds), "--variants", "nocopy,copy,serial"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert bare.stdin is not None and bare.stdout is not None
    if json.loads(bare.stdout.readline()).get("ready") is not True:
        raise SystemExit("bare_loop.py --serve did not start")
    rows: list[dict[str, Any]] = []
    try:
        for step in args.steps.split(","):
            if time.monotonic() - t_begin > args.budget_s:
                print(f"skip {step}: past the budget", file=sys.stderr, flush=True)
                continue
            kind, _, name = step.partition(":")
            start = time.time()
            if kind == "bare":
                bare.stdin.write(name + "\n")
                bare.stdin.flush()
                row = json.loads(bare.stdout.readline())
            else:
                row = run_hb(name, args.seconds, args.out)
            # For hpcbench, the clocks of its common window only (not its start-up).
            window = row.pop("window_s", None) or (start, time.time())
            row.update(step=step, **sampler.window(*window))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        bare.stdin.close()
        bare.wait(timeout=60)
        sampler.stop()
    (args.out / "copy_gap.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: every step, hpcbench runs against the no-copy figures around them."""
    nocopy = [(i, r["images_per_s"]) for i, r in enumerate(rows) if r["step"] == "bare:nocopy"]
    lines = [
        "| # | step | img/s | × no-copy around | GPU ms/batch | gap ms | SM MHz | W | °C |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        if "error" in r:
            lines.append(f"| {i} | {r['step']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        before = [v for j, v in nocopy if j < i][-1:]
        after = [v for j, v in nocopy if j > i][:1]
        around = before + after
        ratio = (
            f"{r['images_per_s'] / statistics.fmean(around):.4f}"
            if around and r["step"] != "bare:nocopy"
            else ""
        )
        per_batch = r.get("replay_ms") if "replay_ms" in r else r.get("interval_ms")
        lines.append(
            f"| {i} | {r['step']} | {r['images_per_s']:,.0f} | {ratio} | {per_batch} | "
            f"{r.get('gap_ms', '')} | {r['sm_mhz']} | {r['power_w']} | {r['temp_c']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
