"""A bare PyTorch inference loop: the reference that ``hpcbench run`` is compared against.

Same settings as the torch backend can use (torchvision model with random weights, precision,
channels_last, CUDA graph, optional torch.compile, a host-to-device copy per batch from pinned
memory on a side stream, two input slots so the copy of batch n+1 overlaps compute of batch n),
but no queues, threads, barriers or metrics: one Python loop per GPU. Throughput is images over
the wall time between two device synchronisations, after warm-up.

    python benchmarks/gpu/bare_loop.py --model resnet50 --precision fp16 --batch 256 \
        --cuda-graph --seconds 20 [--variants copy,nocopy] [--compile] [--device 0]

Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision.models as tvm

from hpcbench.backends.torch_backend import calibrate_batchnorm

DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="fp16", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument(
        "--variants",
        default="copy",
        help="comma list: copy (a host-to-device copy per batch), nocopy; run in this order",
    )
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()

    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda", args.device)
    torch.cuda.set_device(dev)
    dtype = DTYPES[args.precision]
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    torch.manual_seed(0)
    if args.model == "inception_v3":
        model = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
    else:
        model = getattr(tvm, args.model)(weights=None)
    model = model.eval().to(dev)
    # The backend's BatchNorm calibration (one float32 batch), so the weights and activations
    # match what hpcbench runs; without it deep random nets overflow fp16.
    calibrate_batchnorm(model, args.size, dev)
    model = model.to(dtype=dtype).to(memory_format=fmt)
    if args.compile:
        model = torch.compile(model)
    shape = (args.batch, 3, args.size, args.size)
    # Host batches laid out like the device inputs, pinned; two of them, used in turn.
    if fmt is torch.channels_last:
        hosts = [
            torch.empty((args.batch, args.size, args.size, 3), dtype=dtype, pin_memory=True)
            .permute(0, 3, 1, 2)
            .normal_()
            for _ in range(2)
        ]
    else:
        hosts = [torch.empty(shape, dtype=dtype, pin_memory=True).normal_() for _ in range(2)]
    compute = torch.cuda.Stream()
    copy = torch.cuda.Stream()
    inputs = [torch.randn(shape, device=dev, dtype=dtype).to(memory_format=fmt) for _ in range(2)]
    with torch.inference_mode():
        with torch.cuda.stream(compute):
            for _ in range(3):
                model(inputs[0])
        compute.synchronize()
        graphs = None
        if args.cuda_graph:
            graphs = []
            for x in inputs:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=compute):
                    model(x)
                graphs.append(g)
            compute.synchronize()
        free = [torch.cuda.Event() for _ in range(2)]

        def step(n: int, with_copy: bool) -> None:
            slot = n % 2
            if with_copy:
                copy.wait_event(free[slot])
                with torch.cuda.stream(copy):
                    inputs[slot].copy_(hosts[n % 2], non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(copy)
                compute.wait_event(copied)
            with torch.cuda.stream(compute):
                if graphs is not None:
                    graphs[slot].replay()
                else:
                    model(inputs[slot])
            done = torch.cuda.Event()
            done.record(compute)
            free[slot] = done

        def measure(with_copy: bool) -> dict[str, object]:
            for n in range(args.warmup):
                step(n, with_copy)
            torch.cuda.synchronize()
            # At most two batches queued ahead, like the benchmark's depth-2 pipeline, so the
            # host never runs far ahead of the GPU.
            t0 = time.perf_counter()
            n = 0
            deadline = t0 + args.seconds
            while True:
                step(n, with_copy)
                if n >= 1:
                    free[(n - 1) % 2].synchronize()
                n += 1
                if time.perf_counter() >= deadline:
                    break
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            return {
                "model": args.model,
                "precision": args.precision,
                "batch": args.batch,
                "cuda_graph": args.cuda_graph,
                "compile": args.compile,
                "channels_last": not args.no_channels_last,
                "copy": with_copy,
                "device": torch.cuda.get_device_name(dev),
                "batches": n,
                "seconds": round(elapsed, 3),
                "images_per_s": round(n * args.batch / elapsed, 1),
            }

        for variant in args.variants.split(","):
            if variant not in ("copy", "nocopy"):
                parser.error(f"--variants: {variant!r} is not copy or nocopy")
            print(json.dumps(measure(variant == "copy")), flush=True)


if __name__ == "__main__":
    main()
