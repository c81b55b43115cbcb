"""The torch backend on NVIDIA GPUs (marked gpu: CI skips them; run on the device machine).

python -m pytest -m gpu tests/test_torch_gpu.py
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from hpcbench import data, telemetry  # noqa: E402
from hpcbench.backends import torch_backend as tb  # noqa: E402
from hpcbench.plan.model import RankPlacement  # noqa: E402
from hpcbench.spec import RunSpec  # noqa: E402

pytestmark = pytest.mark.gpu

ONE_GPU = RankPlacement(0, 0, 0, None, None, (0,), (0,), ())


def spec(**changes: Any) -> RunSpec:
    base = RunSpec(
        backend="torch",
        model="resnet50",
        batch_size=8,
        precision="fp16",
        num_batches=1,
        duration_s=None,
        cuda_graph=True,
    )
    return base.replace(**changes)


def build(s: RunSpec, placement: RankPlacement = ONE_GPU) -> tuple[Any, Any, Any]:
    backend = tb.TorchBackend()
    devices = backend.devices(placement, s)
    engines = [backend.make_engine(d, s) for d in devices]
    return backend.make_source(s, placement, ""), engines, devices


def rel_err(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_graph_replay_computes_the_copied_batch(precision: str) -> None:
    """Each replay reads the batch copied into its slot, not a stale or a neighbour's one."""
    s = spec(precision=precision, options={"synthetic_pool": 3})
    source, (engine,), _ = build(s)
    outs, hosts = [], []
    for sequence in range(3):  # slots 0, 1, 0
        batch = source.next_batch(sequence)
        engine.submit(batch).wait()
        outs.append(engine.last_output().clone())
        hosts.append(batch.data)
    with torch.inference_mode():
        for out, host in zip(outs, hosts):
            x = host.to("cuda:0").contiguous(memory_format=torch.channels_last)
            ref = engine._model(x)
            assert torch.isfinite(out).all()
            assert rel_err(out, ref) < (1e-2 if precision == "fp16" else 1e-4)
    assert rel_err(outs[0], outs[1]) > 1e-3  # different inputs, different outputs


def test_wait_returns_gpu_completion_not_launch() -> None:
    s = spec(batch_size=256)
    source, (engine,), _ = build(s)
    batch = source.next_batch(0)
    engine.submit(batch).wait()
    t_submitted_ns = 0
    gaps = []
    for _ in range(3):
        ticket = engine.submit(batch)
        t_submitted_ns = time.time_ns()
        gaps.append(ticket.wait() - t_submitted_ns)
    # A ResNet-50 batch of 256 takes ~15 ms on an H200; launching its graph takes ~0.1 ms.
    assert min(gaps) > 3_000_000, gaps


@pytest.mark.parametrize("model", list(tb.MODELS))
def test_every_model_runs_with_a_cuda_graph(model: str) -> None:
    s = spec(model=model, batch_size=4)
    source, (engine,), _ = build(s)
    engine.submit(source.next_batch(0)).wait()
    out = engine.last_output()
    assert out.shape == ((4, 768) if model == "bert_base" else (4, 1000))
    assert torch.isfinite(out.float()).all()
    engine.close()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_precisions_set_the_math_mode(precision: str) -> None:
    s = spec(precision=precision, cuda_graph=False)
    source, (engine,), _ = build(s)
    assert torch.backends.cudnn.allow_tf32 is (precision == "tf32")
    assert torch.backends.cuda.matmul.allow_tf32 is (precision == "tf32")
    engine.submit(source.next_batch(0)).wait()
    out = engine.last_output()
    assert out.dtype == tb._DTYPES[precision] and torch.isfinite(out.float()).all()


def test_fp16_shard_feeds_a_bf16_engine(tmp_path: Path) -> None:
    data.make_dataset(tmp_path, images=6, size=64)
    s = spec(precision="bf16", data=str(tmp_path), options={"image_size": 64})
    source, (engine,), _ = build(s)
    batch = source.next_batch(0)
    assert batch.data.is_pinned() and batch.data.dtype == torch.float16
    engine.submit(batch).wait()
    x = batch.data.to("cuda:0", torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert rel_err(engine.last_output(), engine._model(x)) < 2e-2


def test_two_gpus_of_one_rank_run_side_by_side() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    placement = RankPlacement(0, 0, 0, None, None, (0, 1, 2, 3), (0, 1), ())
    source, engines, devices = build(spec(), placement)
    assert [d.label.split()[0] for d in devices] == ["cuda:0", "cuda:1"]
    assert [d.cpus for d in devices] == [(0, 1), (2, 3)]
    tickets = [e.submit(source.next_batch(i)) for i, e in enumerate(engines)]
    assert all(t.wait() > 0 for t in tickets)
    assert engines[1].last_output().device == torch.device("cuda", 1)


@pytest.mark.slow
def test_compiled_model_in_a_cuda_graph() -> None:
    s = spec(model="alexnet", compile=True, batch_size=16)
    source, (engine,), _ = build(s)
    batch = source.next_batch(0)
    engine.submit(batch).wait()
    out = engine.last_output().clone()
    with torch.inference_mode():
        x = batch.data.to("cuda:0").contiguous(memory_format=torch.channels_last)
        assert rel_err(out, engine._model(x)) < 1e-2


def test_telemetry_reads_the_real_gpu() -> None:
    sampler, why = telemetry.start_sampler([0], 20.0)
    assert sampler is not None, why
    time.sleep(0.3)
    sampler.stop()
    cols = sampler.columns()
    assert sampler.samples >= 3
    assert (cols["power_w"] > 10).all() and (cols["sm_clock_mhz"] > 0).all()
    assert cols["throttle_known"].all()
