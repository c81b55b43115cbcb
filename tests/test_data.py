"""Datasets of preprocessed tensors: writing, manifests, staging, the shard source, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcbench import data
from hpcbench.cli import cli
from hpcbench.errors import ConfigError, RunError


def test_make_dataset_writes_shards_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    manifest = data.make_dataset(out, images=7, size=8, shards=3, seed=5)
    assert manifest.shard_images == (3, 2, 2)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-00000.npy",
        "shard-00001.npy",
        "shard-00002.npy",
    ]
    back = data.Manifest.read(out)
    assert back == manifest
    arrays = [np.load(out / data.shard_name(i), allow_pickle=False) for i in range(3)]
    assert [a.shape for a in arrays] == [(3, 8, 8, 3), (2, 8, 8, 3), (2, 8, 8, 3)]
    assert all(a.dtype == np.float16 for a in arrays)
    pixels = np.concatenate(arrays).astype(np.float32)
    # Normalised 8-bit values: within ImageNet's normalised range and not constant.
    assert pixels.min() >= -2.2 and pixels.max() <= 2.7
    assert pixels.std() > 0.5


def test_make_dataset_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    data.make_dataset(tmp_path / "a", images=2, size=4, seed=1)
    data.make_dataset(tmp_path / "b", images=2, size=4, seed=1)
    data.make_dataset(tmp_path / "c", images=2, size=4, seed=2)
    a, b, c = (np.load(tmp_path / d / "shard-00000.npy") for d in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": 0}, "--images"),
        ({"images": 2, "size": 0}, "--size"),
        ({"images": 2, "shards": 3}, "--shards"),
        ({"images": 2, "dtype": "int8"}, "--dtype"),
    ],
)
def test_make_dataset_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        data.make_dataset(tmp_path / "x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", str(10**12)], "--images must be 1 to 2147483648"),
        (["--images", "1000000000"], "the dataset needs 280,380.2 GiB"),
        (["--images", "2", "--size", str(10**9)], "--size must be 1 to 8192 pixels"),
        (["--images", "2", "--seed", "-1"], "--seed must be 0 or more"),
    ],
)
def test_make_with_huge_values_is_one_line_and_leaves_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "hpcbench", "data", "make", *args, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not out.exists()


def test_a_failed_shard_write_leaves_no_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"\x93NUMPY half a header")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full_disk)
    with pytest.raises(RunError, match=r"shard-00000\.npy failed \(\[Errno 28\]"):
        data.make_dataset(tmp_path / "ds", images=2, size=4)
    assert list((tmp_path / "ds").iterdir()) == []


def test_make_dataset_refuses_to_overwrite(tmp_path: Path) -> None:
    data.make_dataset(tmp_path, images=1, size=2)
    with pytest.raises(ConfigError, match="already holds a dataset"):
        data.make_dataset(tmp_path, images=1, size=2)


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a dataset folder"):
        data.Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="format 'other'"):
        data.Manifest.read(tmp_path)
    # Damaged manifests: one ConfigError naming the file, never a TypeError or a decode error.
    good = data.make_dataset(tmp_path / "d", images=1, size=2).to_json()
    manifest = tmp_path / "d" / "manifest.json"
    for text, message in [
        ("[1]", "dataset manifest is not a JSON object"),
        ("{half", "dataset manifest is not valid JSON"),
        (b"\xff\xfe", "cannot read the dataset manifest"),
        (json.dumps({**good, "images": "many"}), "a value of the wrong type"),
        (json.dumps({**good, "shard_images": 3}), "a value of the wrong type"),
    ]:
        if isinstance(text, bytes):
            manifest.write_bytes(text)
        else:
            manifest.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            data.Manifest.read(tmp_path / "d")
        assert str(info.value).startswith(f"{manifest}: ")


def test_rank_shard_cycles_over_shards(tmp_path: Path) -> None:
    data.make_dataset(tmp_path, images=4, size=2, shards=2)
    assert [data.rank_shard(tmp_path, r)[1].name for r in range(4)] == [
        "shard-00000.npy",
        "shard-00001.npy",
        "shard-00000.npy",
        "shard-00001.npy",
    ]


def test_open_shard_checks_shape_against_manifest(tmp_path: Path) -> None:
    manifest = data.make_dataset(tmp_path, images=2, size=4)
    np.save(tmp_path / "shard-00000.npy", np.zeros((2, 5, 5, 3), dtype=np.float16))
    with pytest.raises(ConfigError, match="the manifest says float16"):
        data.open_shard(tmp_path / "shard-00000.npy", manifest)


def test_open_shard_refuses_pickles(tmp_path: Path) -> None:
    manifest = data.make_dataset(tmp_path, images=2, size=4)
    np.save(tmp_path / "shard-00000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="not a readable"):
        data.open_shard(tmp_path / "shard-00000.npy", manifest)


def test_stage_shard_copies_whole_file(tmp_path: Path) -> None:
    data.make_dataset(tmp_path / "ds", images=3, size=4)
    shard = tmp_path / "ds" / "shard-00000.npy"
    staged = data.stage_shard(shard, tmp_path / "shm" / "rank00000")
    assert staged.read_bytes() == shard.read_bytes()
    assert [p.name for p in staged.parent.iterdir()] == ["shard-00000.npy"]


@pytest.mark.parametrize("batch", [1, 3, 4, 10])
def test_batch_rows_cover_the_batch_in_order(batch: int) -> None:
    for sequence in range(6):
        rows = data.batch_rows(sequence, batch, 4)
        flat = [i for start, stop in rows for i in range(start, stop)]
        assert flat == [(sequence * batch + k) % 4 for k in range(batch)]


def test_data_make_command(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        cli, ["data", "make", "--images", "5", "--size", "4", "--shards", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "5 images" in result.output
    assert data.Manifest.read(out).shard_images == (3, 2)


def test_data_show_command(tmp_path: Path) -> None:
    data.make_dataset(tmp_path, images=3, size=4, shards=1)
    result = CliRunner().invoke(cli, ["data", "show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output and "4x4" in result.output
