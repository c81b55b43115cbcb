"""A bare PyTorch inference loop: the reference that ``hpcbench run`` is compared against.

Same settings as the torch backend can use (torchvision model with random weights, precision,
channels_last, CUDA graph, optional torch.compile), but no queues, threads, barriers or
metrics: one Python loop per GPU, at most two batches queued ahead (the benchmark's depth-2
pipeline). Variants:

- ``nocopy``: replay on device inputs that never change: the ceiling;
- ``copy``: a host-to-device copy per batch from pinned memory on a side stream, two input
  slots, so the copy of batch n+1 overlaps the compute of batch n (what hpcbench does);
- ``serial``: the copy on the compute stream right before each replay (no overlap).

Throughput is images over the wall time between two device synchronisations, after warm-up.
Every replay is bracketed by CUDA timing events, so a variant also reports the median time of
one replay on the GPU (``replay_ms``: longer when a concurrent copy slows the kernels) and the
median idle time between two replays (``gap_ms``: the GPU waiting for the host or a copy).

    python benchmarks/gpu/bare_loop.py --model resnet50 --precision fp16 --batch 256 \
        --cuda-graph --seconds 20 [--variants copy,nocopy,serial] [--compile] [--device 0]

Prints one JSON line per variant. ``--serve`` instead reads variant names from stdin, one a
line, and answers each with its JSON line (benchmarks/gpu/copy_gap.py interleaves these with
``hpcbench run``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
import torchvision.models as tvm

from hpcbench.backends.torch_backend import calibrate_batchnorm

DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
VARIANTS = ("copy", "nocopy", "serial")


class BareLoop:
    """The model, its input slots and graphs, built once; :meth:`measure` runs one variant."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tf32 = args.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        self.dev = torch.device("cuda", args.device)
        torch.cuda.set_device(self.dev)
        dtype = DTYPES[args.precision]
        fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
        torch.manual_seed(0)
        if args.model == "inception_v3":
            model = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
        else:
            model = getattr(tvm, args.model)(weights=None)
        model = model.eval().to(self.dev)
        # The backend's BatchNorm calibration (one float32 batch), so the weights and
        # activations match what hpcbench runs; without it deep random nets overflow fp16.
        calibrate_batchnorm(model, args.size, self.dev)
        model = model.to(dtype=dtype).to(memory_format=fmt)
        if args.compile:
            model = torch.compile(model)
        self.model = model
        shape = (args.batch, 3, args.size, args.size)
        # Host batches laid out like the device inputs, pinned; two of them, used in turn.
        if fmt is torch.channels_last:
            self.hosts = [
                torch.empty((args.batch, args.size, args.size, 3), dtype=dtype, pin_memory=True)
                .permute(0, 3, 1, 2)
                .normal_()
                for _ in range(2)
            ]
        else:
            self.hosts = [
                torch.empty(shape, dtype=dtype, pin_memory=True).normal_() for _ in range(2)
            ]
        self.compute = torch.cuda.Stream()
        self.copy = torch.cuda.Stream()
        self.inputs = [
            torch.randn(shape, device=self.dev, dtype=dtype).to(memory_format=fmt) for _ in range(2)
        ]
        with torch.inference_mode():
            with torch.cuda.stream(self.compute):
                for _ in range(3):
                    model(self.inputs[0])
            self.compute.synchronize()
            self.graphs: list[torch.cuda.CUDAGraph] | None = None
            if args.cuda_graph:
                self.graphs = []
                for x in self.inputs:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, stream=self.compute):
                        model(x)
                    self.graphs.append(g)
                self.compute.synchronize()
        self.free = [torch.cuda.Event() for _ in range(2)]

    def step(self, n: int, variant: str, marks: list[tuple[Any, Any]] | None) -> None:
        slot = n % 2
        if variant == "copy":
            self.copy.wait_event(self.free[slot])
            with torch.cuda.stream(self.copy):
                self.inputs[slot].copy_(self.hosts[n % 2], non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.copy)
            self.compute.wait_event(copied)
        with torch.cuda.stream(self.compute):
            if variant == "serial":
                self.inputs[slot].copy_(self.hosts[n % 2], non_blocking=True)
            begin = torch.cuda.Event(enable_timing=True)
            begin.record(self.compute)
            if self.graphs is not None:
                self.graphs[slot].replay()
            else:
                self.model(self.inputs[slot])
            end = torch.cuda.Event(enable_timing=True)
            end.record(self.compute)
        if marks is not None:
            marks.append((begin, end))
        done = torch.cuda.Event()
        done.record(self.compute)
        self.free[slot] = done

    def measure(self, variant: str, seconds: float) -> dict[str, Any]:
        args = self.args
        with torch.inference_mode():
            for n in range(args.warmup):
                self.step(n, variant, None)
            torch.cuda.synchronize()
            marks: list[tuple[Any, Any]] = []
            t0 = time.perf_counter()
            n = 0
            deadline = t0 + seconds
            while True:
                self.step(n, variant, marks)
                if n >= 1:
                    # At most two batches queued ahead, like the benchmark's depth-2 pipeline.
                    self.free[(n - 1) % 2].synchronize()
                n += 1
                if time.perf_counter() >= deadline:
                    break
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
        replay = [b.elapsed_time(e) for b, e in marks]
        gaps = [marks[i - 1][1].elapsed_time(marks[i][0]) for i in range(1, len(marks))]
        return {
            "model": args.model,
            "precision": args.precision,
            "batch": args.batch,
            "cuda_graph": args.cuda_graph,
            "compile": args.compile,
            "channels_last": not args.no_channels_last,
            "variant": variant,
            "copy": variant != "nocopy",
            "device": torch.cuda.get_device_name(self.dev),
            "batches": n,
            "seconds": round(elapsed, 3),
            "images_per_s": round(n * args.batch / elapsed, 1),
            "replay_ms": round(statistics.median(replay), 4),
            "gap_ms": round(statistics.median(gaps), 4) if gaps else None,
            "gap_mean_ms": round(statistics.fmean(gaps), 4) if gaps else None,
        }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--precision", default="fp16", choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--cuda-graph", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--variants", default="copy", help="comma list of copy, nocopy, serial")
    p.add_argument("--serve", action="store_true", help="read variants from stdin, one a line")
    p.add_argument("--device", type=int, default=0)
    return p


def main() -> None:
    args = parser().parse_args()
    wanted = args.variants.split(",")
    for variant in wanted:
        if variant not in VARIANTS:
            parser().error(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
    loop = BareLoop(args)
    if not args.serve:
        for variant in wanted:
            print(json.dumps(loop.measure(variant, args.seconds)), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        variant = line.strip()
        if variant in VARIANTS:
            print(json.dumps(loop.measure(variant, args.seconds)), flush=True)
        else:
            print(json.dumps({"error": f"unknown variant {variant!r}"}), flush=True)


if __name__ == "__main__":
    main()
