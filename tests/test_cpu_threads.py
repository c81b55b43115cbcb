"""The threads a CPU-backend rank computes with: one per core, BLAS single-threaded, prefetchers.

Issue 14: one rank on two cores ran a two-thread OpenBLAS pool whose threads busy-wait for each
other inside every matrix product; any other runnable thread on those cores (its own
prefetchers, a neighbour) made it collapse. These tests pin down the thread model that replaced
it; how fast it runs is measured by benchmarks/bench_cpu_stability.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from hpcbench.backends.base import HostBatch
from hpcbench.backends.cpu import MlpEngine, row_ranges
from hpcbench.backends.registry import load_backend
from hpcbench.metrics import read_rank_file
from hpcbench.plan.model import RankPlacement
from hpcbench.spec import RunSpec

SMALL = {"input": 24, "hidden": 16, "layers": 3, "classes": 5}


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _placement(cpus: tuple[int, ...]) -> RankPlacement:
    return RankPlacement(0, 0, 0, 0, 0, cpus, (), (0,))


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (None, [(0,), (1,), (2,), (3,)]),  # default: one device per core
        (0, [(0,), (1,), (2,), (3,)]),
        (2, [(0, 1), (2, 3)]),
        (1, [(0, 1, 2, 3)]),
    ],
)
def test_devices_default_to_one_per_core(devices: int | None, expected: list[tuple[int]]) -> None:
    options = dict(SMALL) if devices is None else {**SMALL, "devices": devices}
    spec = RunSpec(options=options)
    found = load_backend("cpu").devices(_placement((0, 1, 2, 3)), spec)
    assert [d.cpus for d in found] == expected


def _reference(engine: MlpEngine, x: np.ndarray) -> np.ndarray:
    for i, (w, b) in enumerate(zip(engine.weights, engine.biases)):
        x = x @ w + b
        if i < len(engine.weights) - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("images", [7, 3, 1])  # a full batch and short ones
def test_device_of_several_cores_runs_one_pinned_thread_per_core(images: int) -> None:
    cpus = _cpus()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    cores = tuple(cpus[:2])
    spec = RunSpec(batch_size=7, options={**SMALL, "devices": 1})
    backend = load_backend("cpu")
    (device,) = backend.devices(_placement(cores), spec)
    engine: Any = backend.make_engine(device, spec)
    try:
        x = np.random.default_rng(3).standard_normal((images, 24), dtype=np.float32)
        engine.submit(HostBatch(0, images, x, 0)).wait()
        # One worker per core, each allowed on its own core only.
        assert [w.name for w in engine.workers] == [f"cpu-core-{c}" for c in cores]
        assert [os.sched_getaffinity(w.native_id) for w in engine.workers] == [{c} for c in cores]
        # The rows computed by both threads are the whole batch's forward pass.
        want = _reference(engine, x)
        np.testing.assert_allclose(engine.buffers[-1][:images], want, rtol=1e-4, atol=1e-5)
        assert engine.checksum == pytest.approx(float(want[0, 0]), rel=1e-4)
        # BLAS runs single-threaded: the core threads are the only parallelism.
        assert {e["num_threads"] for e in threadpool_info() if e["user_api"] == "blas"} == {1}
    finally:
        engine.close()
    assert not any(w.is_alive() for w in engine.workers)


def test_one_core_device_computes_in_the_device_thread() -> None:
    spec = RunSpec(batch_size=4, options=SMALL)
    backend = load_backend("cpu")
    (device,) = backend.devices(_placement((_cpus()[0],)), spec)
    engine: Any = backend.make_engine(device, spec)
    assert engine.workers == []
    x = np.ones((4, 24), dtype=np.float32)
    engine.submit(HostBatch(0, 4, x, 0)).wait()
    np.testing.assert_allclose(engine.buffers[-1], _reference(engine, x), rtol=1e-4)


def test_synthetic_batches_are_shared_read_only_not_copied() -> None:
    spec = RunSpec(batch_size=4, options=SMALL)
    source = load_backend("cpu").make_source(spec, _placement((0,)), "")
    first, again = source.next_batch(0), source.next_batch(4)  # the pool holds 4 batches
    assert first.data is again.data
    assert not first.data.flags.writeable


def test_row_ranges_cover_every_row_once() -> None:
    for rows in range(1, 20):
        for parts in range(1, 5):
            ranges = row_ranges(rows, parts)
            assert [r for a, b in ranges for r in range(a, b)] == list(range(rows))


def _run(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hpcbench", "run", "--backend", "cpu", "--duration-s",
               "0.5", "--warmup-batches", "1", "--option", "hidden=64", "-q", "--out", str(out),
               *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    ranks = []
    for path in sorted(out.glob("rank-*.h5")):
        data = read_rank_file(path)
        ranks.append(
            {
                "threads": json.loads(data.attrs["threads_json"]),
                "binding": json.loads(data.attrs["binding_json"]),
                "versions": json.loads(data.attrs["versions_json"]),
            }
        )
    return ranks


def _named(threads: dict[str, Any], prefix: str) -> list[str]:
    """The CPU lists of the rank's threads whose name starts with ``prefix``, by name."""
    found = sorted((t["name"], t["cpus"]) for t in threads["python"])
    return [cpus for name, cpus in found if name.startswith(prefix)]


@pytest.mark.slow
def test_rank_on_all_cores_computes_with_one_pinned_thread_per_core(tmp_path: Path) -> None:
    cpus = _cpus()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    (rank,) = _run(tmp_path, "--ranks", "1", "--cores-per-rank", "2", "--prefetchers", "1")
    cores = rank["binding"]["cpus"]
    assert len(cores) == 2
    # Compute: one device thread per core, each allowed on that core only.
    assert _named(rank["threads"], "device-") == [str(c) for c in cores]
    assert _named(rank["threads"], "cpu-core-") == []
    # Data: exactly the prefetchers asked for.
    assert len(_named(rank["threads"], "prefetch-")) == 1
    # BLAS: one thread per caller, so no pool of its own competes for the cores.
    blas = rank["versions"]["backend"]["blas"]
    assert blas and {entry["num_threads"] for entry in blas} == {1}


@pytest.mark.slow
def test_ranks_of_one_core_compute_on_their_core(tmp_path: Path) -> None:
    if len(_cpus()) < 2:
        pytest.skip("needs two CPUs")
    ranks = _run(tmp_path, "--ranks", "2", "--cores-per-rank", "1")
    assert len(ranks) == 2
    for rank in ranks:
        (core,) = rank["binding"]["cpus"]
        assert _named(rank["threads"], "device-") == [str(core)]
        assert len(_named(rank["threads"], "prefetch-")) == RunSpec().prefetchers
        assert {e["num_threads"] for e in rank["versions"]["backend"]["blas"]} == {1}


@pytest.mark.slow
def test_ranks_share_the_launchers_session(tmp_path: Path) -> None:
    """Under sched_autogroup a session is one CPU share: ranks in sessions of their own would
    get one share each, so N ranks would get N times the CPU of one rank on a busy machine."""
    if len(_cpus()) < 2:
        pytest.skip("needs two CPUs")
    ranks = _run(tmp_path, "--ranks", "2", "--cores-per-rank", "1")
    # hpcbench run is started by subprocess.run here, in this process's session.
    assert [r["threads"]["session_id"] for r in ranks] == [os.getsid(0)] * 2
