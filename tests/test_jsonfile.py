"""The one atomic writer: modes, the check before the rename, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hpcbench.errors import ConfigError
from hpcbench.jsonfile import read_json, write_atomic, write_json_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("mode", "umask", "expected"),
    [(0o600, 0o000, 0o600), (0o700, 0o077, 0o700), (None, 0o022, 0o644), (None, 0o077, 0o600)],
)
def test_mode_whatever_the_umask_or_the_umask_s(
    tmp_path: Path, mode: int | None, umask: int, expected: int
) -> None:
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "f", b"x", mode=mode)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == expected
    assert (tmp_path / "f").read_bytes() == b"x"


def test_a_failed_check_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("old\n")

    def refuse(tmp: Path) -> None:
        assert tmp.read_text() == "new\n" and tmp != path
        raise ConfigError("does not validate")

    with pytest.raises(ConfigError, match="does not validate"):
        write_atomic(path, "new\n", check=refuse)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml"]


def test_json_round_trip_durable_and_replacing(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": 1})
    write_atomic(path, '{"a": 2}\n', durable=True)
    assert read_json(path, "run file") == {"a": 2}
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
