"""Tables from the run directories and bare-loop lines that run_all.sh leaves.

    python benchmarks/gpu/collect.py RUNS_DIR [--out results.json]

Reads every ``RUNS_DIR/<name>/summary.json`` (and the rank files' telemetry groups), every
``RUNS_DIR/bare*.jsonl`` line, and prints Markdown tables: the figures per run, hpcbench against
the bare loop, layout efficiency against one rank on one GPU, and the GPU power and clocks.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcbench.telemetry import read_telemetry, throttle_names

# ResNet-50 forward at 224 px: 8.18 GFLOP per image; the H200's measured dense bf16 matrix rate
# on this workplace's machines is ~790 TFLOP/s (device docs), so ~96 600 img/s is the
# arithmetic limit if every FLOP ran at the matrix rate.
RESNET50_GFLOP = 8.18
H200_MATRIX_TFLOPS = 790.0


def telemetry_means(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Mean power, SM clock, temperature and utilisation over the common window, all GPUs."""
    start, end = summary["window"]["start_ns"], summary["window"]["end_ns"]
    power, clock, temp, util, reasons = [], [], [], [], 0
    for path in sorted(run_dir.glob("rank-*.h5")):
        with h5py.File(path, "r") as f:
            cols = read_telemetry(f)
        if cols is None:
            continue
        inside = (cols["t_ns"] >= start) & (cols["t_ns"] <= end)
        power.extend(cols["power_w"][inside])
        clock.extend(cols["sm_clock_mhz"][inside])
        temp.extend(cols["temperature_c"][inside])
        util.extend(cols["util_gpu_pct"][inside])
        for mask in cols["throttle_reasons"][inside]:
            reasons |= int(mask)

    def mean(values: list[float]) -> float | None:
        return round(float(np.nanmean(values)), 1) if values else None

    return {
        "power_w": mean(power),
        "sm_clock_mhz": mean(clock),
        "temperature_c": mean(temp),
        "util_gpu_pct": mean(util),
        "throttle": throttle_names(reasons),
        "samples": len(power),
    }


def load(runs: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    results: dict[str, dict[str, Any]] = {}
    for summary_path in sorted(runs.glob("*/summary.json")):
        run_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        spec = json.loads((run_dir / "spec.json").read_text())
        t = summary["throughput"]
        results[run_dir.name] = {
            "name": run_dir.name,
            "model": summary["run"]["model"],
            "batch": summary["run"]["batch_size"],
            "precision": summary["run"]["precision"],
            "layout": summary["run"]["gpu_layout"],
            "ranks": summary["run"]["world_size"],
            "devices": summary["devices"],
            "cuda_graph": spec["cuda_graph"],
            "compile": spec["compile"],
            "data": "synthetic" if spec["data"] == "synthetic" else "dataset",
            "stage_data": spec["stage_data"],
            "telemetry_hz": spec["telemetry_hz"],
            "common_window_img_s": t["common_window_img_s"],
            "per_device_img_s": t["per_device_img_s"],
            "dlbs_adjusted_img_s": t["dlbs_adjusted_img_s"],
            "dlbs_reported_img_s": t["dlbs_reported_img_s"],
            "start_skew_ms": summary["skew"]["start_s"] * 1e3,
            "latency_p50_ms": summary["latency_ms"]["p50"],
            "window_s": summary["window"]["length_s"],
            "telemetry": telemetry_means(run_dir, summary),
        }
    bare: list[dict[str, Any]] = []
    for path in sorted(runs.glob("bare*.jsonl")):
        bare.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return results, bare


def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}".replace(",", " ")
    return str(value)


def tables(results: dict[str, dict[str, Any]], bare: list[dict[str, Any]]) -> str:
    lines = []
    lines.append(
        "| run | model | batch | prec. | layout | graph | compile | data | common window img/s "
        "| per GPU | DLBS adjusted | start skew ms | p50 ms | W/GPU | SM MHz |"
    )
    lines.append("|" + "---|" * 15)
    for r in results.values():
        data = r["data"] + (" staged" if r["stage_data"] else "")
        tel = r["telemetry"]
        lines.append(
            f"| {r['name']} | {r['model']} | {r['batch']} | {r['precision']} | {r['layout']} | "
            f"{'y' if r['cuda_graph'] else 'n'} | {'y' if r['compile'] else 'n'} | {data} | "
            f"{fmt(r['common_window_img_s'])} | {fmt(r['per_device_img_s'])} | "
            f"{fmt(r['dlbs_adjusted_img_s'])} | {fmt(r['start_skew_ms'], 2)} | "
            f"{fmt(r['latency_p50_ms'], 2)} | {fmt(tel['power_w'])} | {fmt(tel['sm_clock_mhz'])} |"
        )
    lines.append("")
    if bare:
        lines.append("| bare loop | copy | img/s |")
        lines.append("|---|---|---|")
        for b in bare:
            lines.append(
                f"| {b['model']} {b['precision']} b{b['batch']} graph={b['cuda_graph']} | "
                f"{b['copy']} | {fmt(b['images_per_s'])} |"
            )
        lines.append("")

    def ratio(a: str, b: str | float, label: str) -> None:
        if a not in results:
            return
        num = results[a]["common_window_img_s"]
        den = b if isinstance(b, float) else results.get(b, {}).get("common_window_img_s")
        if num and den:
            lines.append(f"- {label}: {num:,.0f} / {den:,.0f} = {num / den:.4f}")

    copy_bare = [
        b["images_per_s"]
        for b in bare
        if b["copy"] and b["model"] == "resnet50" and b["batch"] == 256 and b["cuda_graph"]
    ]
    if copy_bare:
        ratio("r50_fp16_1x1", float(copy_bare[0]), "hpcbench 1x1 / bare loop (copy, graph)")
    base = results.get("r50_fp16_1x1", {}).get("common_window_img_s")
    for name, r in results.items():
        if r["model"] == "resnet50" and r["devices"] > 1 and base and r["batch"] == 256:
            eff = r["common_window_img_s"] / (r["devices"] * base)
            lines.append(
                f"- {name} ({r['layout']}): {r['common_window_img_s']:,.0f} img/s = "
                f"{eff:.4f} x {r['devices']} x one GPU"
            )
    abase = results.get("alexnet_1x1", {}).get("common_window_img_s")
    for name, r in results.items():
        if r["model"] == "alexnet" and r["devices"] > 1 and abase:
            eff = r["common_window_img_s"] / (r["devices"] * abase)
            lines.append(
                f"- {name} ({r['layout']}): {r['common_window_img_s']:,.0f} img/s = "
                f"{eff:.4f} x {r['devices']} x one GPU"
            )
    ratio("r50_fp16_data", "r50_fp16_1x1", "dataset (not staged) / synthetic")
    ratio("r50_fp16_staged", "r50_fp16_1x1", "staged dataset / synthetic")
    ratio("r50_fp16_tele0", "r50_fp16_1x1", "telemetry off / 10 Hz")
    ratio("r50_fp16_tele100", "r50_fp16_1x1", "telemetry 100 Hz / 10 Hz")
    ratio("r50_fp16_eager", "r50_fp16_1x1", "eager / CUDA graph")
    ratio("r50_fp16_compile", "r50_fp16_1x1", "torch.compile (no graph) / CUDA graph")
    ratio("r50_fp16_compile_graph", "r50_fp16_1x1", "torch.compile + graph / CUDA graph")
    ratio("r50_bf16_1x1", "r50_fp16_1x1", "bf16 / fp16")
    ratio("r50_tf32_1x1", "r50_fp16_1x1", "tf32 / fp16")
    ratio("r50_fp32_1x1", "r50_fp16_1x1", "fp32 / fp16")
    best = max(
        (r for r in results.values() if r["model"] == "resnet50"),
        key=lambda r: r["per_device_img_s"] or 0,
        default=None,
    )
    if best is not None:
        limit = H200_MATRIX_TFLOPS * 1e3 / RESNET50_GFLOP
        per = best["per_device_img_s"]
        lines.append(
            f"- best ResNet-50 per H200: {per:,.0f} img/s ({best['name']}) = "
            f"{per / limit:.3f} of the {limit:,.0f} img/s arithmetic limit "
            f"({per * RESNET50_GFLOP / 1e3:,.0f} TFLOP/s)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results, bare = load(args.runs)
    if args.out:
        args.out.write_text(json.dumps({"runs": results, "bare": bare}, indent=1) + "\n")
    print(tables(results, bare))


if __name__ == "__main__":
    main()
