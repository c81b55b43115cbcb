"""The torch backend on the CPU (what CI can run): settings, sources, the CPU engine, the encoder.

Image models need torchvision, which CI does not install beside the CPU build of PyTorch; they
are tested on the GPU machine (tests/test_torch_gpu.py). The source tests use image shapes
without building a model, so they need no torchvision.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpcbench import data  # noqa: E402
from hpcbench.backends import torch_backend as tb  # noqa: E402
from hpcbench.backends.registry import load_backend  # noqa: E402
from hpcbench.backends.transformer import Encoder, EncoderShape  # noqa: E402
from hpcbench.errors import ConfigError, RunError  # noqa: E402
from hpcbench.plan.model import RankPlacement  # noqa: E402
from hpcbench.spec import RunSpec  # noqa: E402

CPU_PLACEMENT = RankPlacement(0, 0, 0, None, None, (0,), (), ())


def spec(**changes: object) -> RunSpec:
    base = RunSpec(backend="torch", model="bert_base", batch_size=2, num_batches=1, duration_s=None)
    return base.replace(**changes)


def test_load_backend_gives_the_torch_backend() -> None:
    assert load_backend("torch").name == "torch"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "resnet5"}, "did you mean 'resnet50'"),
        ({"options": {"imagesize": 64}}, "did you mean 'image_size'"),
        ({"options": {"device": "tpu"}}, "options.device"),
        ({"options": {"seq_len": 0}}, "options.seq_len"),
        ({"options": {"synthetic_pool": 0}}, "options.synthetic_pool"),
    ],
)
def test_settings_reject_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tb.TorchSettings.from_spec(spec(**changes))


def test_cpu_placement_gives_one_cpu_device() -> None:
    placement = RankPlacement(0, 0, 0, None, None, (0, 1, 2), (), ())
    (device,) = tb.TorchBackend().devices(placement, spec())
    assert device.label.startswith("cpu")
    assert device.cpus == (0, 1, 2)
    assert device.physical == "0-2"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpus_in_plan_without_cuda_is_one_clear_error() -> None:
    placement = RankPlacement(3, 0, 0, None, None, (0,), (1, 2), ())
    with pytest.raises(RunError, match=r"rank 3: the plan gives it GPUs \[1, 2\]"):
        tb.TorchBackend().devices(placement, spec())
    # ... unless the spec asks for the CPU.
    (device,) = tb.TorchBackend().devices(placement, spec(options={"device": "cpu"}))
    assert device.label.startswith("cpu")


def test_synthetic_images_are_channels_last_in_the_spec_dtype() -> None:
    s = spec(model="resnet50", precision="bf16", options={"image_size": 16, "synthetic_pool": 3})
    source = tb.TorchBackend().make_source(s, CPU_PLACEMENT, "")
    batches = [source.next_batch(i) for i in range(4)]
    x = batches[0].data
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert batches[3].data is x  # a pool of three, cycled
    assert not torch.equal(batches[1].data, x)
    assert [b.sequence for b in batches] == [0, 1, 2, 3] and batches[0].images == 2


def test_synthetic_nchw_when_channels_last_is_off() -> None:
    s = spec(model="resnet50", channels_last=False, options={"image_size": 8})
    x = tb.TorchBackend().make_source(s, CPU_PLACEMENT, "").next_batch(0).data
    assert x.is_contiguous() and x.dtype == torch.float32


def test_synthetic_tokens() -> None:
    s = spec(options={"seq_len": 16})
    x = tb.TorchBackend().make_source(s, CPU_PLACEMENT, "").next_batch(0).data
    assert x.shape == (2, 16) and x.dtype == torch.int64
    assert int(x.min()) >= 0 and int(x.max()) < EncoderShape().vocab


def test_shard_source_reads_the_rank_shard_in_order(tmp_path: Path) -> None:
    data.make_dataset(tmp_path / "ds", images=5, size=8, shards=2)
    s = spec(model="resnet50", batch_size=2, data=str(tmp_path / "ds"), options={"image_size": 8})
    placement = RankPlacement(1, 0, 1, None, None, (0,), (), ())
    source = tb.TorchBackend().make_source(s, placement, "")
    shard = np.load(tmp_path / "ds" / "shard-00001.npy")  # rank 1 -> shard 1 (2 images)
    for sequence in range(3):
        x = source.next_batch(sequence).data
        assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float16
        assert x.is_contiguous(memory_format=torch.channels_last)
        nhwc = x.permute(0, 2, 3, 1).numpy()
        assert np.array_equal(nhwc, shard[[0, 1]])
    source.close()


def test_shard_source_stages_into_the_rank_folder_and_cleans_up(tmp_path: Path) -> None:
    data.make_dataset(tmp_path / "ds", images=3, size=8)
    stage = tmp_path / "shm" / "rank00000"
    s = spec(
        model="resnet50",
        data=str(tmp_path / "ds"),
        stage_data=True,
        options={"image_size": 8},
    )
    source = tb.TorchBackend().make_source(s, CPU_PLACEMENT, str(stage))
    assert isinstance(source, tb.ShardSource)
    assert source.path == stage / "shard-00000.npy" and source.path.is_file()
    shard = np.load(tmp_path / "ds" / "shard-00000.npy")
    assert np.array_equal(source.next_batch(1).data.permute(0, 2, 3, 1).numpy(), shard[[2, 0]])
    source.close()
    assert not stage.exists()


def test_stage_folder_inside_the_dataset_falls_back_to_memory(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    placement = RankPlacement(4, 0, 0, None, None, (0,), (), ())
    folder = tb._stage_dir(str(ds / "rank00004"), ds, placement)
    assert not folder.is_relative_to(ds)
    assert folder.name.endswith("rank00004")


def test_shard_source_checks_image_size(tmp_path: Path) -> None:
    data.make_dataset(tmp_path, images=1, size=8)
    s = spec(model="resnet50", data=str(tmp_path))
    with pytest.raises(ConfigError, match="8-pixel images but model 'resnet50' runs at 224"):
        tb.TorchBackend().make_source(s, CPU_PLACEMENT, "")


def test_encoder_shape_and_limits() -> None:
    torch.manual_seed(0)
    model = Encoder(EncoderShape(layers=2, hidden=32, heads=4, ffn=64, vocab=50, max_positions=8))
    out = model(torch.randint(0, 50, (3, 8)))
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="exceeds 8 positions"):
        model(torch.randint(0, 50, (1, 9)))


def test_bert_base_has_bert_base_size() -> None:
    params = sum(p.numel() for p in Encoder().parameters())
    assert 108e6 < params < 111e6  # BERT-base without pooler/heads: about 109 M


def test_cpu_engine_runs_bert_and_times_completion() -> None:
    s = spec(options={"seq_len": 8})
    backend = tb.TorchBackend()
    (device,) = backend.devices(CPU_PLACEMENT, s)
    engine = backend.make_engine(device, s)
    batch = backend.make_source(s, CPU_PLACEMENT, "").next_batch(0)
    t0 = time.time_ns()
    t_end_ns = engine.submit(batch).wait()
    assert t0 < t_end_ns <= time.time_ns()
    out = engine.last_output()  # type: ignore[attr-defined]
    assert out.shape == (2, 768) and torch.isfinite(out).all()
    # Same weights (seeded) and same input: the same output.
    engine2 = backend.make_engine(device, s)
    engine2.submit(batch).wait()
    assert torch.equal(engine2.last_output(), out)  # type: ignore[attr-defined]
    engine.close()


def test_describe_states_flops_and_versions() -> None:
    facts = tb.TorchBackend().describe(spec(model="resnet50", options={"image_size": 112}))
    assert facts["model_gflops_per_image"] == pytest.approx(8.18 / 4, rel=1e-3)
    assert facts["flops_per_image"] == int(8.18e9 / 4)
    assert facts["torch_version"] == torch.__version__


def test_cuda_ordinals_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    placement = RankPlacement(0, 0, 0, None, None, (0,), (4, 6), ())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert tb.cuda_ordinals(placement) == [4, 6]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert tb.cuda_ordinals(placement) == [0, 1]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RunError, match="only 1 are visible"):
        tb.cuda_ordinals(placement)


def test_batchnorm_calibration_keeps_random_deep_nets_in_fp16_range() -> None:
    # A deep conv/BN stack with random weights blows up with BatchNorm's default statistics
    # (as ResNet-152 and Inception-v3 overflowed fp16 on the H200); calibrated, it stays small.
    torch.manual_seed(0)
    layers: list[Any] = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)]
    for _ in range(12):
        conv = torch.nn.Conv2d(16, 16, 3, padding=1)
        torch.nn.init.normal_(conv.weight, std=0.4)
        layers += [conv, torch.nn.BatchNorm2d(16), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert model(x).abs().max() > 65504  # beyond fp16's largest value
        tb.calibrate_batchnorm(model, 8, torch.device("cpu"))
        assert not model.training and not model[1].training
        assert model(x).abs().max() < 100


@pytest.mark.slow
def test_hpcbench_run_with_the_torch_backend_on_cpus(tmp_path: Path) -> None:
    """The whole path: plan, launch a rank, torch engine on the CPU, metrics, aggregation."""
    import h5py
    from click.testing import CliRunner

    from hpcbench.cli import cli

    data.make_dataset(tmp_path / "ds", images=3, size=16)
    out = tmp_path / "run"
    args = ["run", "--backend", "torch", "--model", "mobilenet_v2", "--ranks", "1"]
    args += ["--batch-size", "2", "--num-batches", "3", "--warmup-batches", "1"]
    args += ["--data", str(tmp_path / "ds"), "--stage-data", "--option", "image_size=16"]
    args += ["--out", str(out), "--quiet"]
    pytest.importorskip("torchvision")  # image models; CI has only the CPU build of torch
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and summary["run"]["model"] == "mobilenet_v2"
    with h5py.File(out / "rank-00000.h5", "r") as f:
        assert f["telemetry"].attrs["disabled"] == "the rank has no GPUs"
        assert f.attrs["flops_per_image"] == int(0.60e9 * (16 / 224) ** 2)


@pytest.mark.slow
def test_hpcbench_run_bert_on_cpus(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hpcbench.cli import cli

    out = tmp_path / "run"
    args = ["run", "--backend", "torch", "--model", "bert_base", "--ranks", "1"]
    args += ["--batch-size", "2", "--num-batches", "2", "--warmup-batches", "1"]
    args += ["--option", "seq_len=8", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["images"] == 4
    assert summary["throughput"]["common_window_img_s"] > 0
