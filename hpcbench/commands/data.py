"""``hpcbench data``: make and inspect datasets of preprocessed image tensors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpcbench.text import plural

if TYPE_CHECKING:
    from hpcbench.data import Manifest


@click.group("data")
def data() -> None:
    """Datasets of preprocessed tensors that ranks read instead of synthetic input."""


@data.command("make")
@click.option("--images", type=int, required=True, help="Number of images in all.")
@click.option("--size", type=int, default=224, show_default=True, help="Image side in pixels.")
@click.option(
    "--shards",
    type=int,
    default=1,
    show_default=True,
    help="Number of shards; rank r reads shard r mod shards.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Element type stored.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder."
)
def make(images: int, size: int, shards: int, dtype: str, seed: int, out: Path) -> None:
    """Write random, normalised images as .npy shards (NHWC) with a manifest."""
    from hpcbench.data import make_dataset

    manifest = make_dataset(out, images=images, size=size, shards=shards, dtype=dtype, seed=seed)
    click.echo(_describe(out, manifest))


@data.command("show")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def show(folder: Path) -> None:
    """Describe a dataset folder."""
    from hpcbench.data import Manifest

    click.echo(_describe(folder, Manifest.read(folder)))


def _describe(folder: Path, manifest: Manifest) -> str:
    from hpcbench.data import shard_name

    size_bytes = sum((folder / shard_name(i)).stat().st_size for i in range(manifest.shards))
    return (
        f"{folder}: {manifest.images} images of {manifest.size}x{manifest.size}x"
        f"{manifest.channels} {manifest.dtype} ({manifest.layout}) in "
        f"{plural(manifest.shards, 'shard')} of "
        f"{', '.join(map(str, manifest.shard_images))} images, "
        f"{size_bytes / 1e6:.1f} MB"
    )
