"""Drive the torch backend's engines directly through the backend contract (no rank pipeline).

One thread per GPU of the placement, each: ``source.next_batch`` -> ``engine.submit`` -> wait
for the previous ticket (depth 2), as the pipeline does, minus queues, barriers and metrics.
Separates the backend's own cost from the pipeline's when compared with bare_loop.py.

    python benchmarks/gpu/engine_loop.py --model resnet50 --precision fp16 --batch 256 \
        --cuda-graph --gpus 0,1 --seconds 20

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from hpcbench.backends.registry import load_backend
from hpcbench.plan.model import RankPlacement
from hpcbench.spec import RunSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gpus", default="0")
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--stage-data", action="store_true")
    args = parser.parse_args()

    gpus = tuple(int(g) for g in args.gpus.split(",")) if args.gpus else ()
    spec = RunSpec(
        backend="torch",
        model=args.model,
        batch_size=args.batch,
        precision=args.precision,
        duration_s=args.seconds,
        cuda_graph=args.cuda_graph,
        compile=args.compile,
        data=args.data,
        stage_data=args.stage_data,
    )
    placement = RankPlacement(0, 0, 0, None, None, (), gpus, ())
    backend = load_backend("torch")
    devices = backend.devices(placement, spec)
    source = backend.make_source(spec, placement, "")
    engines = [backend.make_engine(d, spec) for d in devices]
    counts = [0] * len(engines)
    lock = threading.Lock()
    sequence = [0]
    start = threading.Barrier(len(engines) + 1)
    stop_at = [0.0]

    def drive(i: int) -> None:
        engine = engines[i]

        def next_batch():
            with lock:
                n = sequence[0]
                sequence[0] += 1
            return source.next_batch(n)

        for _ in range(10):
            engine.submit(next_batch()).wait()
        start.wait()
        pending = None
        while time.time() < stop_at[0]:
            ticket = engine.submit(next_batch())
            if pending is not None:
                pending.wait()
                counts[i] += args.batch
            pending = ticket
        if pending is not None:
            pending.wait()
            counts[i] += args.batch

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    stop_at[0] = time.time() + 1e9
    start.wait()
    t0 = time.time()
    stop_at[0] = t0 + args.seconds
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    for e in engines:
        e.close()
    source.close()
    print(
        json.dumps(
            {
                "model": args.model,
                "precision": args.precision,
                "batch": args.batch,
                "gpus": list(gpus),
                "cuda_graph": args.cuda_graph,
                "compile": args.compile,
                "data": args.data,
                "images_per_s": round(sum(counts) / elapsed, 1),
                "per_gpu": [round(c / elapsed, 1) for c in counts],
                "describe": backend.describe(spec),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
