"""The one config-file loader: site configs, sweep specs and reference files read the same way.

Hostile YAML (issue 18 item 14) is one line and exit 2 for each of the three: an alias bomb
inside a known key, 900-deep nesting, a 100 000-digit integer, a 50 MB file. Before the bounds,
these were an exponentially growing message and a hang, a RecursionError traceback, a ValueError
traceback and a minute of parsing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcbench.configfile import MAX_FILE_BYTES, key_path, parse_yaml, read_yaml_file
from hpcbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "site_configs" / "hpe-apollo6500-gen10.yaml"

# Nine levels of nine aliases each: 9**9 (387 million) strings once expanded.
BOMB = "\n".join(
    ["  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def _hostile(case: str) -> str:
    """The text of a hostile value for a known key (the key's line follows ``key:``)."""
    if case == "alias bomb":
        return "\n" + BOMB
    if case == "900-deep nesting":
        return " " + "[" * 900 + "]" * 900
    if case == "100 000-digit integer":
        return " " + "7" * 100_000
    raise AssertionError(case)


# kind -> (a known key, the command that reads such a file)
KINDS = {
    "site config": ("description", ["plan", "--site", "{file}", "--ranks", "1"]),
    "sweep spec": ("name", ["sweep", "{file}"]),
    "reference file": ("defaults", ["check", "{dir}", "-r", "{file}"]),
}
CASES = ["alias bomb", "900-deep nesting", "100 000-digit integer", "50 MB file"]
MESSAGES = {
    "alias bomb": "once its YAML aliases are expanded",
    "900-deep nesting": "nested more than 64 levels deep",
    "100 000-digit integer": "an integer of 100000 digits",
    "50 MB file": "more than 1024 KiB",
}


def _write(kind: str, case: str, tmp_path: Path) -> Path:
    key, _ = KINDS[kind]
    path = tmp_path / "hostile.yaml"
    if case == "50 MB file":
        with open(path, "w") as handle:
            handle.write(f"{key}: x\n")
            line = "# " + "x" * 1021 + "\n"
            for _ in range(50 * 1024):
                handle.write(line)
        return path
    path.write_text(f"{key}:{_hostile(case)}\n")
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_yaml_is_one_line_exit_2(kind: str, case: str, tmp_path: Path) -> None:
    path = _write(kind, case, tmp_path)
    _, command = KINDS[kind]
    args = [a.format(file=path, dir=tmp_path) for a in command]
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=100,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and len(done.stderr) < 300, done.stderr[:2000]
    assert str(path) in done.stderr and MESSAGES[case] in done.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "line 2 column 1: key 'a' appears twice"),
        ("a: [1, 2\n", "malformed YAML at line 2"),
        ("a: &x [1]\nb: *x\n", None),  # a few aliases are fine
        ("a: " + "[" * 64 + "]" * 64 + "\n", "nested more than 64 levels deep"),
        ("a: " + "[" * 63 + "]" * 63 + "\n", None),
        ("a: " + "9" * 31 + "\n", "an integer of 31 digits (at most 30)"),
        ("a: " + "9" * 30 + "\n", None),
        ("a: 0x" + "f" * 40 + "\n", "an integer of"),
    ],
)
def test_parse_yaml_bounds(text: str, message: str | None) -> None:
    if message is None:
        parse_yaml(text, "f.yaml")
        return
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "f.yaml")
    assert str(info.value).startswith("f.yaml: ") and message in str(info.value)


def test_reference_files_reject_duplicate_keys(tmp_path: Path) -> None:
    """The reference reader used yaml.safe_load, which keeps the last of two equal keys."""
    from hpcbench.archive.references import load_references

    path = tmp_path / "r.yaml"
    path.write_text(
        "references:\n  - match: {model: a}\n    figures:\n"
        "      throughput.common_window_img_s: 10\n      throughput.common_window_img_s: 20\n"
    )
    with pytest.raises(ConfigError, match=r"key 'throughput\.common_window_img_s' appears twice"):
        load_references(path)


def test_a_file_just_under_the_size_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" + "#" * (MAX_FILE_BYTES - 10) + "\n")
    assert read_yaml_file(path, "site config") == {"a": 1}
    path.write_text("a: 1\n" + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: more than 1024 KiB"):
        read_yaml_file(path, "site config")


def test_echoed_values_are_excerpts(tmp_path: Path) -> None:
    """A long bad value is cut in the message (the site config's name must be a string)."""
    from hpcbench.site import load_site

    data = yaml.safe_load(SITE.read_text())
    data["name"] = ["x" * 50] * 200
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert len(str(info.value)) < 400 and "name: expected string, got" in str(info.value)


@pytest.mark.parametrize(
    ("parts", "spelled"),
    [
        (["node_types", "gpu", "gpus", 3, "numa_node"], "node_types.gpu.gpus[3].numa_node"),
        (["references", 0, "match", "partiton"], "references[0].match.partiton"),
        (["grid", "a b"], "grid['a b']"),
        (["k" * 100], "k" * 100),
    ],
)
def test_one_key_path_spelling(parts: list[object], spelled: str) -> None:
    assert key_path(parts) == spelled


@pytest.mark.timeout(60)
def test_archive_skips_a_hostile_site_copy(tmp_path: Path) -> None:
    """The archive reads the site config copied into a run directory through the same loader:
    an alias bomb there is skipped (yaml.safe_load returned it for the archive to walk)."""
    from hpcbench.archive.entry import site_document

    (tmp_path / "site.yaml").write_text("node_types:\n" + BOMB + "\n")
    (tmp_path / "z-other.yaml").write_text("name: x\nnode_types: {}\n")
    assert site_document(tmp_path, ["site.yaml", "z-other.yaml"]) == {"name": "x", "node_types": {}}
