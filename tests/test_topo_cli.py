"""``hpcbench topo`` end to end: output forms, --write, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcbench.cli import main
from hpcbench.site import load_site


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_json_contract_from_a_site_config(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["topo", "--site", "nvidia-dgx-a100", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert {"source", "packages", "numa_nodes", "gpus", "nics"} <= set(data)
    assert data["packages"][1] == {
        "id": 1,
        "numa_nodes": [4, 5, 6, 7],
        "cpus": [*range(64, 128), *range(192, 256)],
    }
    gpu = data["gpus"][0]
    assert {"index", "pci_bus_id", "model", "numa_node", "cpus", "pcie_switch"} <= set(gpu)
    assert gpu["numa_node"] == 3


def test_tree_from_hwloc(capsys: pytest.CaptureFixture, hwloc_fixtures: Path) -> None:
    code, out, _ = run(
        ["topo", "--from-hwloc", str(hwloc_fixtures / "32em64t-2n8c2t-pci-normalio.xml")], capsys
    )
    assert code == 0
    assert "GPU 0: Tesla K40m, 0000:84:00.0" in out
    assert "NUMA node 1: 8 cores (CPUs 8-15,24-31" in out


@pytest.mark.parametrize(
    "source",
    [
        ["--site", "hpe-apollo6500-gen10"],
        ["--site", "cloud-vm-4xh200"],
        ["--from-hwloc", "FIXTURE"],
        [],
    ],
)
def test_write_loads_back_and_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture, hwloc_fixtures: Path, source: list[str]
) -> None:
    source = [
        str(hwloc_fixtures / "24em64t-2n6c2t-pci.xml") if s == "FIXTURE" else s for s in source
    ]
    target = tmp_path / "mycluster.yaml"
    code, _, err = run(["topo", *source, "--write", str(target), "--json"], capsys)
    assert code == 0 and f"wrote {target}" in err
    _, original, _ = run(["topo", *source, "--json"], capsys)
    site = load_site(target)
    assert site.name == "mycluster"
    written = site.node_type(None).topology.to_json()
    expected = json.loads(original)
    for key in ("packages", "numa_nodes", "cores"):
        assert written[key] == expected[key]
    assert [(g["index"], g["numa_node"], g["pcie_switch"], g["cpus"]) for g in written["gpus"]] == [
        (g["index"], g["numa_node"], g["pcie_switch"], g["cpus"]) for g in expected["gpus"]
    ]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def _bad_site(tmp_path: Path, change) -> Path:
    data = {
        "name": "bad",
        "node_types": {
            "gpu": {
                "topology": {
                    "numa_nodes": [{"id": 0, "package": 0, "cpus": "0-3"}],
                    "gpus": [{"index": i, "numa_node": 0} for i in range(4)],
                }
            }
        },
    }
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t: ["--site", str(t / "missing.yaml")], "site config not found"),
        (lambda t: ["--from-hwloc", str(t / "missing.xml")], "hwloc XML not found"),
        (lambda t: ["--sysfs-root", str(t / "nowhere")], "--sysfs-root"),
        (
            lambda t: ["--site", str(_write(t / "m.yaml", "name: [unclosed\n"))],
            "malformed YAML at line 2",
        ),
        (
            lambda t: ["--from-hwloc", str(_write(t / "m.xml", "<topology><object"))],
            "malformed XML",
        ),
        (
            lambda t: [
                "--site",
                str(_bad_site(t, lambda d: d["node_types"]["gpu"].update(reserved_core=[0]))),
            ],
            "bad.yaml: node_types.gpu.reserved_core: "
            "unknown key 'reserved_core' (did you mean 'reserved_cores'?)",
        ),
        (
            lambda t: [
                "--site",
                str(
                    _bad_site(
                        t, lambda d: d["node_types"]["gpu"]["topology"].update(threads_per_core="2")
                    )
                ),
            ],
            "bad.yaml: node_types.gpu.topology.threads_per_core: expected integer, got '2'",
        ),
        (
            lambda t: [
                "--site",
                str(
                    _bad_site(
                        t,
                        lambda d: d["node_types"]["gpu"]["topology"]["gpus"][3].update(numa_node=1),
                    )
                ),
            ],
            "bad.yaml: node_types.gpu.topology.gpus[3].numa_node: "
            "NUMA node 1 does not exist (NUMA nodes: 0)",
        ),
        (
            lambda t: [
                "--site",
                str(
                    _bad_site(
                        t,
                        lambda d: d["node_types"]["gpu"]["topology"]["numa_nodes"].append(
                            {"id": 1, "package": 0, "cpus": "3"}
                        ),
                    )
                ),
            ],
            "bad.yaml: node_types.gpu.topology.numa_nodes[1].cpus: "
            "CPU 3 is listed twice (also in numa_nodes[0])",
        ),
        (
            lambda t: ["--site", "hpe-apollo6500-gen10", "--partition", "gpus"],
            "did you mean 'gpu'?",
        ),
        (
            lambda t: ["--site", "hpe-apollo6500-gen10", "--sysfs-root", str(t)],
            "give one topology source",
        ),
        (lambda t: ["--partition", "gpu"], "--partition needs --site"),
        (
            lambda t: ["--site", "hpe-apollo6500-gen10", "--write", str(t / "no" / "dir.yaml")],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, make_args, message: str
) -> None:
    code, out, err = run(["topo", *make_args(tmp_path)], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpcbench: error: ")
    assert message in lines[0]
    assert "Traceback" not in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_real_process_reports_without_traceback(tmp_path: Path) -> None:
    bad = _bad_site(
        tmp_path, lambda d: d["node_types"]["gpu"]["topology"]["gpus"][3].update(numa_node=5)
    )
    result = subprocess.run(
        [sys.executable, "-m", "hpcbench", "topo", "--site", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "gpus[3].numa_node: NUMA node 5 does not exist" in result.stderr
