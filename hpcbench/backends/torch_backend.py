"""The PyTorch backend (``--backend torch``): torchvision image models and a BERT-base encoder.

Weights are random (nothing is downloaded). One :class:`CudaEngine` per GPU of the rank, each
with its own compute stream and copy stream and two input slots: the host-to-device copy of
batch n+1 (from pinned host memory, on the copy stream) overlaps the compute of batch n, which
is what the pipeline's depth-2 ``submit``/``wait`` pattern allows. With ``cuda_graph`` the model
is captured once per slot and replayed, so a batch costs one launch. A ticket's ``wait`` blocks
on a CUDA event recorded after the batch's last kernel and then reads the clock, so the time
is when the results were complete on the GPU, not when the kernels were queued.

On a rank without GPUs (or with ``options.device: cpu``) the same models run on the CPU with
one engine over the rank's cores; this is what CI tests.

Backend options (``RunSpec.options``): ``device`` (``auto`` | ``cuda`` | ``cpu``),
``image_size`` (default: the model's), ``seq_len`` (transformer, default 128),
``compile_mode`` (passed to ``torch.compile``, default PyTorch's), ``synthetic_pool``
(distinct random host batches cycled by the synthetic source, default 4).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpcbench import data as datasets
from hpcbench.backends.base import (
    Backend,
    BatchSource,
    DeviceInfo,
    DoneTicket,
    Engine,
    HostBatch,
    Ticket,
)
from hpcbench.backends.torch_models import MODELS as MODELS  # re-exported: the model list
from hpcbench.backends.torch_models import ModelEntry, TorchSettings, model_entry
from hpcbench.cpulist import split_cpus
from hpcbench.errors import ConfigError, RunError
from hpcbench.plan.model import RankPlacement
from hpcbench.spec import RunSpec

_DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# Forward passes run before a CUDA graph is captured: cuDNN picks its algorithms (benchmark
# mode) and torch.compile compiles during these, and neither may happen inside a capture.
_WARMUP_BEFORE_CAPTURE = 3
_SLOTS = 2


def uses_cuda(placement: RankPlacement, spec: RunSpec) -> bool:
    """Whether this rank runs on GPUs: ``auto`` means yes when the plan gave it any."""
    settings = TorchSettings.from_spec(spec)
    if settings.device == "cpu":
        return False
    if settings.device == "auto" and not placement.gpus:
        return False
    if not torch.cuda.is_available():
        raise RunError(
            f"rank {placement.rank}: the plan gives it GPUs {list(placement.gpus)} but PyTorch "
            f"{torch.__version__} sees no CUDA device (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use options.device=cpu to run on CPUs"
        )
    if not placement.gpus:
        raise RunError(f"rank {placement.rank}: options.device=cuda but the plan gives it no GPUs")
    return True


def cuda_ordinals(placement: RankPlacement) -> list[int]:
    """CUDA device ordinals of the rank's GPUs, in plan order.

    When the launcher set ``CUDA_VISIBLE_DEVICES`` (to the rank's GPUs, in plan order) the
    rank sees them renumbered from 0; otherwise CUDA numbers every GPU of the node and the
    plan's physical indices are the ordinals.
    """
    count = torch.cuda.device_count()
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        ordinals = list(range(len(placement.gpus)))
    else:
        ordinals = list(placement.gpus)
    if ordinals and max(ordinals) >= count:
        raise RunError(
            f"rank {placement.rank}: needs CUDA devices {ordinals} for GPUs "
            f"{list(placement.gpus)} but only {count} are visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return ordinals


def input_shape(entry: ModelEntry, batch: int, size: int) -> tuple[int, ...]:
    """Logical (PyTorch) shape of one input batch."""
    if entry.kind == "tokens":
        return (batch, size)
    return (batch, 3, size, size)


def set_precision_flags(precision: str) -> None:
    """TF32 on for ``tf32`` and off for ``fp32`` (cuDNN enables it for convolutions by default)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def _empty_host(shape: tuple[int, ...], dtype: torch.dtype, *, nhwc: bool, pin: bool) -> Any:
    """A host tensor of logical ``shape``; image tensors may be laid out channels last."""
    if nhwc and len(shape) == 4:
        n, c, h, w = shape
        return torch.empty((n, h, w, c), dtype=dtype, pin_memory=pin).permute(0, 3, 1, 2)
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


class SyntheticSource(BatchSource):
    """Random host batches (pinned when feeding GPUs), as DLBS's synthetic input.

    A pool of distinct random batches is made once and handed out in turn: every batch is
    still copied to the device, but producing one costs the host nothing, so the measurement
    is of the copy and the model. The tensors are only ever read, so a batch may be handed
    out again while an earlier copy of it is in flight.
    """

    def __init__(self, spec: RunSpec, settings: TorchSettings, pin: bool) -> None:
        entry = model_entry(spec.model)
        shape = input_shape(entry, spec.batch_size, settings.input_size)
        generator = torch.Generator().manual_seed(1234)
        self._pool: list[Any] = []
        for _ in range(settings.synthetic_pool):
            if entry.kind == "tokens":
                ids = torch.randint(0, 30522, shape, dtype=torch.int64, generator=generator)
                self._pool.append(ids.pin_memory() if pin else ids)
            else:
                dtype = _DTYPES[spec.precision]
                host = _empty_host(shape, dtype, nhwc=spec.channels_last, pin=pin)
                host.normal_(generator=generator)
                self._pool.append(host)
        self._batch = spec.batch_size

    def next_batch(self, sequence: int) -> HostBatch:
        data = self._pool[sequence % len(self._pool)]
        return HostBatch(sequence=sequence, images=self._batch, data=data, ready_ns=time.time_ns())


class ShardSource(BatchSource):
    """Batches read from the rank's shard of a dataset into fresh (pinned) host tensors.

    Pinned tensors come from PyTorch's caching host allocator, which reuses a buffer only once
    the copies recorded on it have completed, so a prefetcher never overwrites a batch that is
    still being copied to a GPU.
    """

    def __init__(
        self,
        spec: RunSpec,
        settings: TorchSettings,
        placement: RankPlacement,
        data_dir: str,
        pin: bool,
    ) -> None:
        entry = model_entry(spec.model)
        if entry.kind != "image":
            raise ConfigError(f"data: model {spec.model!r} takes tokens; use data: synthetic")
        manifest, shard = datasets.rank_shard(Path(spec.data), placement.rank)
        if manifest.size != settings.input_size:
            raise ConfigError(
                f"data: {spec.data} holds {manifest.size}-pixel images but model "
                f"{spec.model!r} runs at {settings.input_size} (set options.image_size or make "
                f"the data with --size {settings.input_size})"
            )
        self._staged: Path | None = None
        if spec.stage_data:
            dest = _stage_dir(data_dir, Path(spec.data), placement)
            self._staged = datasets.stage_shard(shard, dest)
            shard = self._staged
        self._array = datasets.open_shard(shard, manifest)
        self._dtype = torch.float16 if manifest.dtype == "float16" else torch.float32
        self._batch = spec.batch_size
        self._size = manifest.size
        self._pin = pin
        self.path = shard

    def next_batch(self, sequence: int) -> HostBatch:
        shape = (self._batch, 3, self._size, self._size)
        host = _empty_host(shape, self._dtype, nhwc=True, pin=self._pin)
        rows = host.permute(0, 2, 3, 1).numpy()  # the NHWC storage, as numpy, no copy
        at = 0
        for start, stop in datasets.batch_rows(sequence, self._batch, len(self._array)):
            np.copyto(rows[at : at + stop - start], self._array[start:stop])
            at += stop - start
        return HostBatch(sequence=sequence, images=self._batch, data=host, ready_ns=time.time_ns())

    def close(self) -> None:
        if self._staged is not None:
            del self._array
            self._staged.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folder may hold other ranks' shards
                self._staged.parent.rmdir()
            self._staged = None


def _stage_dir(data_dir: str, dataset: Path, placement: RankPlacement) -> Path:
    """Where a rank stages its shard: the placement's data folder, else under /dev/shm.

    A placement folder inside the dataset itself (the plan's ``{data_root}`` resolved to the
    dataset) would stage onto the same storage, which is not what staging is for, so that
    case falls back to /dev/shm too.
    """
    if data_dir and "{" not in data_dir:
        folder = Path(data_dir).resolve()
        if not folder.is_relative_to(dataset.resolve()):
            return folder
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"hpcbench-{os.getuid()}-{os.getpid()}-rank{placement.rank:05d}"


class _EventTicket(Ticket):
    def __init__(self, event: Any) -> None:
        self._event = event

    def wait(self) -> int:
        # Event.synchronize releases the GIL, so several device threads of a rank wait at once.
        self._event.synchronize()
        return time.time_ns()


def _prepare_model(
    entry: ModelEntry, spec: RunSpec, settings: TorchSettings, device: torch.device
) -> nn.Module:
    torch.manual_seed(0)
    model = entry.build().to(device).eval()
    if entry.kind == "image":
        calibrate_batchnorm(model, settings.input_size, device)
    model = model.to(dtype=_DTYPES[spec.precision])
    if entry.kind == "image" and spec.channels_last:
        # Module.to accepts memory_format at run time; its type stubs do not say so.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def calibrate_batchnorm(model: nn.Module, size: int, device: torch.device) -> None:
    """Give BatchNorm layers the statistics of one random batch, in float32.

    With random weights and BatchNorm's default statistics (mean 0, variance 1) activations
    grow layer after layer: in fp16, ResNet-152 and Inception-v3 overflow to inf/NaN (seen on
    H200). One forward pass in training mode with cumulative averaging sets every layer's
    statistics from its actual input, so each normalises to unit variance, as in a trained
    network. The kernels that run afterwards are the same; only the numbers stay finite.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly its statistics
        norm.train()
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(4, 3, size, size, device=device, generator=generator)
    with torch.no_grad():
        model(x)
    model.eval()


class CpuEngine(Engine):
    """The model on the rank's CPU cores; ``submit`` runs the batch to completion."""

    def __init__(self, device: DeviceInfo, spec: RunSpec, settings: TorchSettings) -> None:
        self.device = device
        self._entry = model_entry(spec.model)
        self._dtype = _DTYPES[spec.precision]
        self._channels_last = spec.channels_last and self._entry.kind == "image"
        if device.cpus:
            torch.set_num_threads(len(device.cpus))
        model = _prepare_model(self._entry, spec, settings, torch.device("cpu"))
        if spec.compile:
            model = torch.compile(model, mode=settings.compile_mode)  # type: ignore[assignment]
        self._model = model
        self._output = torch.empty(0)

    def submit(self, batch: HostBatch) -> Ticket:
        with torch.inference_mode():
            x = batch.data
            if self._entry.kind == "image":
                x = x.to(self._dtype)
                if self._channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            self._output = self._model(x)
        return DoneTicket(time.time_ns())

    def last_output(self) -> torch.Tensor:
        """The model's output for the last submitted batch."""
        return self._output


class CudaEngine(Engine):
    """The model on one GPU: own streams, two input slots, optional CUDA-graph replay."""

    def __init__(
        self, device: DeviceInfo, ordinal: int, spec: RunSpec, settings: TorchSettings
    ) -> None:
        self.device = device
        self._dev = torch.device("cuda", ordinal)
        self._entry = model_entry(spec.model)
        self._dtype = torch.int64 if self._entry.kind == "tokens" else _DTYPES[spec.precision]
        self._channels_last = spec.channels_last and self._entry.kind == "image"
        shape = input_shape(self._entry, spec.batch_size, settings.input_size)
        self._lock = threading.Lock()  # submit/wait come from one device thread; be safe anyway
        with torch.cuda.device(self._dev), torch.inference_mode():
            model = _prepare_model(self._entry, spec, settings, self._dev)
            if spec.compile:
                model = torch.compile(model, mode=settings.compile_mode)  # type: ignore[assignment]
            self._model = model
            self._compute = torch.cuda.Stream(self._dev)
            self._copy = torch.cuda.Stream(self._dev)
            self._inputs = [self._new_input(shape) for _ in range(_SLOTS)]
            # A slot's input may be overwritten only after the compute that read it finished.
            self._slot_free = [torch.cuda.Event() for _ in range(_SLOTS)]
            self._staging: dict[torch.dtype, list[torch.Tensor]] = {}
            with torch.cuda.stream(self._compute):
                for x in self._inputs:
                    if self._entry.kind == "image":
                        x.normal_()
                    else:
                        x.random_(0, 30522)
                for _ in range(_WARMUP_BEFORE_CAPTURE):
                    self._model(self._inputs[0])
            self._compute.synchronize()
            self._graphs: list[torch.cuda.CUDAGraph] | None = None
            self._outputs: list[torch.Tensor | None] = [None] * _SLOTS
            if spec.cuda_graph:
                self._graphs = []
                for slot, x in enumerate(self._inputs):
                    graph = torch.cuda.CUDAGraph()
                    # Capture on our compute stream; each slot's graph has its own memory pool
                    # so the two replays never share intermediate buffers.
                    with torch.cuda.graph(graph, stream=self._compute):
                        self._outputs[slot] = self._model(x)
                    self._graphs.append(graph)
                self._compute.synchronize()
        self._submitted = 0

    def _new_input(self, shape: tuple[int, ...]) -> torch.Tensor:
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        return torch.empty(shape, dtype=self._dtype, device=self._dev, memory_format=fmt)

    def submit(self, batch: HostBatch) -> Ticket:
        host = batch.data
        with self._lock, torch.cuda.device(self._dev), torch.inference_mode():
            slot = self._submitted % _SLOTS
            self._submitted += 1
            target = self._inputs[slot]
            if tuple(host.shape) != tuple(target.shape):
                raise RunError(
                    f"{self.device.label}: batch {batch.sequence} has shape {list(host.shape)}, "
                    f"the engine was built for {list(target.shape)}"
                )
            self._copy.wait_event(self._slot_free[slot])
            with torch.cuda.stream(self._copy):
                if host.dtype == target.dtype:
                    target.copy_(host, non_blocking=True)
                    convert_from = None
                else:
                    convert_from = self._staging_for(host)[slot]
                    convert_from.copy_(host, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy)
            self._compute.wait_event(copied)
            with torch.cuda.stream(self._compute):
                if convert_from is not None:
                    target.copy_(convert_from)  # dtype conversion on the GPU
                if self._graphs is not None:
                    self._graphs[slot].replay()
                else:
                    self._outputs[slot] = self._model(target)
            done = torch.cuda.Event()
            done.record(self._compute)
            self._slot_free[slot] = done
        return _EventTicket(done)

    def last_output(self) -> torch.Tensor:
        """The model's output for the last submitted batch (read it after that ticket's wait)."""
        out = self._outputs[(self._submitted - 1) % _SLOTS]
        if out is None:
            raise RunError(f"{self.device.label}: no batch submitted yet")
        return out

    def _staging_for(self, host: torch.Tensor) -> list[torch.Tensor]:
        buffers = self._staging.get(host.dtype)
        if buffers is None:
            fmt = torch.channels_last if self._channels_last else torch.contiguous_format
            buffers = [
                torch.empty(
                    tuple(host.shape), dtype=host.dtype, device=self._dev, memory_format=fmt
                )
                for _ in range(_SLOTS)
            ]
            self._staging[host.dtype] = buffers
        return buffers

    def close(self) -> None:
        with torch.cuda.device(self._dev):
            self._compute.synchronize()
            self._copy.synchronize()
        self._graphs = None
        self._staging.clear()
        self._inputs = []


class TorchBackend(Backend):
    """``--backend torch``."""

    name = "torch"

    def devices(self, placement: RankPlacement, spec: RunSpec) -> Sequence[DeviceInfo]:
        TorchSettings.from_spec(spec)
        if not uses_cuda(placement, spec):
            cpus = placement.cpus or tuple(sorted(os.sched_getaffinity(0)))
            return [DeviceInfo(0, f"cpu ({len(cpus)} cores)", _cpu_label(cpus), cpus)]
        ordinals = cuda_ordinals(placement)
        slices = split_cpus(placement.cpus, len(ordinals))
        out = []
        for local, (ordinal, physical) in enumerate(zip(ordinals, placement.gpus)):
            name = torch.cuda.get_device_name(ordinal)
            out.append(
                DeviceInfo(
                    local_index=local,
                    label=f"cuda:{ordinal} (GPU {physical}, {name})",
                    physical=str(physical),
                    cpus=slices[local],
                )
            )
        return out

    def make_source(self, spec: RunSpec, placement: RankPlacement, data_dir: str) -> BatchSource:
        settings = TorchSettings.from_spec(spec)
        pin = uses_cuda(placement, spec)
        if spec.data == "synthetic":
            return SyntheticSource(spec, settings, pin)
        return ShardSource(spec, settings, placement, data_dir, pin)

    def make_engine(self, device: DeviceInfo, spec: RunSpec) -> Engine:
        settings = TorchSettings.from_spec(spec)
        if device.label.startswith("cpu"):
            return CpuEngine(device, spec, settings)
        set_precision_flags(spec.precision)
        # devices() labels a GPU "cuda:<ordinal> (GPU <physical>, <name>)"; the ordinal is the
        # CUDA device number in this process (after any CUDA_VISIBLE_DEVICES renumbering).
        ordinal = int(device.label.split()[0].removeprefix("cuda:"))
        return CudaEngine(device, ordinal, spec, settings)

    def describe(self, spec: RunSpec) -> dict[str, Any]:
        entry = model_entry(spec.model)
        settings = TorchSettings.from_spec(spec)
        gflops = entry.gflops
        if entry.kind == "image":
            gflops *= (settings.input_size / entry.default_size) ** 2
        facts: dict[str, Any] = {
            # The rank stores an integer flops_per_image as a root attribute of its file.
            "flops_per_image": int(gflops * 1e9),
            "model_gflops_per_image": round(gflops, 3),
            "input_size": settings.input_size,
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        }
        try:
            import torchvision

            facts["torchvision_version"] = torchvision.__version__
        except ImportError:
            facts["torchvision_version"] = None
        return facts


def _cpu_label(cpus: tuple[int, ...]) -> str:
    from hpcbench.cpulist import format_cpulist

    return format_cpulist(cpus)
