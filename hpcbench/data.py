"""Datasets of preprocessed image tensors: writing shards, staging a rank's shard, reading it.

A dataset folder holds ``manifest.json`` and one ``shard-NNNNN.npy`` per shard. Each shard is a
plain ``.npy`` array (never a pickle: read back with ``allow_pickle=False``) of shape
(images, size, size, 3) — channels last, so that a host batch is already in the memory format
the GPU kernels want and the host-to-device copy needs no transpose. Values are normalised the
way torchvision's ImageNet models expect (mean 0, unit variance per channel), stored as float16
by default (half the bytes of float32; the engine converts on the device when the model runs in
another precision).

Rank ``r`` reads shard ``r mod shards``. With ``--stage-data`` the rank first copies its shard
into memory-backed storage (``/dev/shm`` or the placement's ``data_dir``); because the rank runs
under its NUMA memory binding, the copy's pages land on the rank's own NUMA node.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcbench.errors import ConfigError, RunError
from hpcbench.jsonfile import read_json, write_atomic

MANIFEST = "manifest.json"
FORMAT = "hpcbench-tensors"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
# Write shards in chunks of this many images so that a large dataset never sits in memory whole.
_CHUNK_IMAGES = 256
# Bounds of what `data make` accepts: numpy and the manifest hold any of these.
MAX_IMAGES = 1 << 31
MAX_SIZE = 8192


def shard_name(index: int) -> str:
    """File name of shard ``index``.

    >>> shard_name(3)
    'shard-00003.npy'
    """
    return f"shard-{index:05d}.npy"


def split_counts(images: int, shards: int) -> list[int]:
    """Images per shard, as even as possible (earlier shards take the remainder).

    >>> split_counts(10, 3)
    [4, 3, 3]
    >>> split_counts(2, 2)
    [1, 1]
    """
    base, extra = divmod(images, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``manifest.json`` says about a dataset folder."""

    images: int
    size: int
    channels: int
    dtype: str
    layout: str  # always "NHWC"
    shard_images: tuple[int, ...]
    seed: int

    @property
    def shards(self) -> int:
        return len(self.shard_images)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "images": self.images,
            "size": self.size,
            "channels": self.channels,
            "dtype": self.dtype,
            "layout": self.layout,
            "shard_images": list(self.shard_images),
            "seed": self.seed,
        }

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.exists():
            raise ConfigError(
                f"data: {folder} is not a dataset folder (no {MANIFEST}); "
                "make one with `hpcbench data make --images N --out DIR`"
            )
        data = read_json(path, "dataset manifest")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: dataset manifest is not a JSON object")
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{path}: format {data.get('format')!r} version {data.get('format_version')!r} "
                f"is not {FORMAT!r} version {FORMAT_VERSION}"
            )
        try:
            return cls(
                images=int(data["images"]),
                size=int(data["size"]),
                channels=int(data["channels"]),
                dtype=str(data["dtype"]),
                layout=str(data["layout"]),
                shard_images=tuple(int(n) for n in data["shard_images"]),
                seed=int(data["seed"]),
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: missing key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: a value of the wrong type ({exc})") from exc


def make_dataset(
    out: Path,
    *,
    images: int,
    size: int = 224,
    shards: int = 1,
    dtype: str = "float16",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write ``images`` random preprocessed images into ``shards`` shards under ``out``.

    The pixels are random (a benchmark needs realistic bytes and shapes, not content): uniform
    8-bit RGB values normalised with ImageNet's per-channel mean and deviation, as a real
    preprocessing pipeline would produce. Each shard is written to a temporary name and renamed;
    the manifest is written last, so a folder with a manifest is complete.
    """
    if not 1 <= images <= MAX_IMAGES:
        raise ConfigError(f"data make: --images must be 1 to {MAX_IMAGES}, got {images}")
    if not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"data make: --size must be 1 to {MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise ConfigError(f"data make: --seed must be 0 or more, got {seed}")
    if not 1 <= shards <= images:
        raise ConfigError(f"data make: --shards must be between 1 and {images}, got {shards}")
    if dtype not in DTYPES:
        raise ConfigError(f"data make: --dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if (out / MANIFEST).exists():
        raise ConfigError(f"data make: {out} already holds a dataset; choose another --out")
    _check_room(out, images * size * size * 3 * np.dtype(dtype).itemsize)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data make: cannot create {out} ({exc.strerror or exc})") from exc
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
    counts = split_counts(images, shards)
    written = 0
    for index, count in enumerate(counts):
        final = out / shard_name(index)
        tmp = final.with_name(final.name + ".part")
        try:
            array = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.dtype(dtype), shape=(count, size, size, 3)
            )
            for first in range(0, count, _CHUNK_IMAGES):
                n = min(_CHUNK_IMAGES, count - first)
                pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
                array[first : first + n] = ((pixels.astype(np.float32) - mean) / std).astype(dtype)
                written += n
                if progress is not None:
                    progress(written)
            array.flush()
            del array
            tmp.replace(final)
        except (OSError, ValueError, MemoryError) as exc:
            # No half shard is left to be taken for a whole one.
            tmp.unlink(missing_ok=True)
            raise RunError(f"data make: writing {final} failed ({exc})") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    manifest = Manifest(
        images=images,
        size=size,
        channels=3,
        dtype=dtype,
        layout="NHWC",
        shard_images=tuple(counts),
        seed=seed,
    )
    # Other users may read a shared data set: the manifest gets the umask's mode.
    write_atomic(out / MANIFEST, json.dumps(manifest.to_json(), indent=2) + "\n", mode=None)
    return manifest


def _check_room(out: Path, needed_bytes: int) -> None:
    """Refuse a dataset that cannot fit where it would go, before writing any of it."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
    except OSError:
        return  # nothing to measure: the writes themselves will say
    free = stats.f_bavail * stats.f_frsize
    if needed_bytes > free:
        raise ConfigError(
            f"data make: the dataset needs {needed_bytes / 2**30:,.1f} GiB, {probe} has "
            f"{free / 2**30:,.1f} GiB free; fewer --images, a smaller --size or another --out"
        )


def rank_shard(folder: Path, rank: int) -> tuple[Manifest, Path]:
    """The manifest and the shard file that rank ``rank`` reads (``rank mod shards``)."""
    manifest = Manifest.read(folder)
    path = folder / shard_name(rank % manifest.shards)
    if not path.is_file():
        raise ConfigError(f"data: {path} is missing (the manifest lists {manifest.shards} shards)")
    return manifest, path


def stage_shard(shard: Path, dest_dir: Path) -> Path:
    """Copy ``shard`` into ``dest_dir`` (memory-backed storage) and return the copy's path.

    Call this from the rank process itself: its memory binding decides on which NUMA node the
    copy's pages land. The copy is written to a temporary name and renamed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = dest_dir / shard.name
    tmp = final.with_name(final.name + f".part{os.getpid()}")
    try:
        shutil.copyfile(shard, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"stage-data: copying {shard} to {dest_dir} failed: {exc}") from exc
    tmp.replace(final)
    return final


def open_shard(path: Path, manifest: Manifest) -> np.ndarray:
    """Memory-map a shard read-only and check it against the manifest."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data: {path} is not a readable .npy array ({exc})") from exc
    expected = (manifest.size, manifest.size, manifest.channels)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected or str(array.dtype) != manifest.dtype:
        raise ConfigError(
            f"data: {path} holds {array.dtype}{list(array.shape)}, the manifest says "
            f"{manifest.dtype}[n, {', '.join(map(str, expected))}]"
        )
    if array.shape[0] < 1:
        raise ConfigError(f"data: {path} holds no images")
    return array


def batch_rows(sequence: int, batch: int, available: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` of batch ``sequence``, cycling through the shard.

    >>> batch_rows(0, 4, 10)
    [(0, 4)]
    >>> batch_rows(2, 4, 10)
    [(8, 10), (0, 2)]
    >>> batch_rows(1, 8, 3)
    [(2, 3), (0, 3), (0, 3), (0, 1)]
    """
    ranges = []
    start = (sequence * batch) % available
    left = batch
    while left > 0:
        stop = min(available, start + left)
        ranges.append((start, stop))
        left -= stop - start
        start = 0
    return ranges
