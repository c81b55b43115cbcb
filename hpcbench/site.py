"""Site configs: a cluster's node types, their topology and what Slurm needs.

Raw YAML → JSON-schema validation (``hpcbench/schemas/site-config.schema.json``) → frozen
dataclasses, once. Every error names the file and the key path (``site_configs/x.yaml:
node_types.gpu.topology.gpus[3].numa_node``), the bad value and what would be valid. The format is
documented in ``docs/site-config.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from hpcbench.configfile import key_path, read_yaml_file, validate
from hpcbench.cpulist import format_cpulist
from hpcbench.errors import ConfigError, closest
from hpcbench.topology.config import cpu_list, topology_from_dict, topology_to_dict
from hpcbench.topology.model import Topology


@dataclass(frozen=True, slots=True)
class SlurmSettings:
    """What ``sbatch``/``srun`` need for one node type (None = leave to the cluster default)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres_name: str = "gpu"
    slurm_version: str | None = None
    # False → launch ranks through the numactl wrapper instead of srun's --cpu-bind/--gpu-bind.
    srun_binding: bool = True
    exclusive: bool = True
    time_limit_min: int | None = None
    extra_sbatch: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeType:
    """One kind of compute node (usually one Slurm partition)."""

    name: str
    topology: Topology
    reserved_cores: tuple[int, ...] = ()
    setup: tuple[str, ...] = ()
    data_root: str | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    description: str = ""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """A validated site config file."""

    name: str
    path: Path
    description: str
    node_types: Mapping[str, NodeType]
    templates_dir: Path | None = None
    default_node_type: str | None = None

    def node_type(self, partition: str | None = None) -> NodeType:
        """The node type for a Slurm partition (or node-type name); None → the default one."""
        if partition is None:
            if self.default_node_type is not None:
                return self.node_types[self.default_node_type]
            if len(self.node_types) == 1:
                return next(iter(self.node_types.values()))
            raise ConfigError(
                f"{self.path}: has node types {sorted(self.node_types)} and no default_node_type;"
                f" choose one with --partition"
            )
        if partition in self.node_types:
            return self.node_types[partition]
        for node_type in self.node_types.values():
            if node_type.slurm.partition == partition:
                return node_type
        choices = sorted(
            set(self.node_types)
            | {n.slurm.partition for n in self.node_types.values() if n.slurm.partition}
        )
        raise ConfigError(
            f"{self.path}: no node type or Slurm partition named {partition!r}"
            f"{closest(partition, choices)} (choices: {', '.join(choices)})"
        )


# ------------------------------------------------------------------------------------ loading
@lru_cache(maxsize=1)
def site_schema() -> dict[str, Any]:
    """The JSON schema of site configs, shipped in the package."""
    text = resources.files("hpcbench").joinpath("schemas/site-config.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def resolve_site_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A site config path: an existing file, or the name of a shipped one (``nvidia-dgx-a100``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if os.sep not in text and "/" not in text:
        from hpcbench.resources import site_configs_dir

        shipped_dir = site_configs_dir()
        stem = text[:-5] if text.endswith(".yaml") else text
        shipped = shipped_dir / f"{stem}.yaml"
        if shipped.is_file():
            return shipped
        names = sorted(p.stem for p in shipped_dir.glob("*.yaml"))
        if not path.exists():
            raise ConfigError(
                f"site config not found: {text} (no such file, and no shipped site config of "
                f"that name{closest(stem, names)}; shipped: {', '.join(names)})"
            )
    if path.is_dir():
        raise ConfigError(f"site config {text} is a directory, not a YAML file")
    raise ConfigError(f"site config not found: {text}")


def load_site(path: str | os.PathLike[str]) -> SiteConfig:
    """Read, validate and build a site config (a path, or the name of a shipped one)."""
    file = resolve_site_path(path)
    data = read_yaml_file(file, "site config")
    return site_from_dict(data, file)


def validate_site_dict(data: Any, where: str) -> None:
    """Validate raw site-config data against the schema; raise one-line ConfigError."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{where}: a site config must be a YAML mapping, this file is {kind}")
    validate(data, site_schema(), where)


def site_from_dict(data: Any, path: Path) -> SiteConfig:
    """Validate raw data from ``path`` and build the :class:`SiteConfig`."""
    where = str(path)
    validate_site_dict(data, where)
    base = path.parent
    node_types: dict[str, NodeType] = {}
    for name, raw in data["node_types"].items():
        node_types[name] = _node_type(name, raw, base, where)
    default = data.get("default_node_type")
    if default is not None and default not in node_types:
        raise ConfigError(
            f"{where}: default_node_type: {default!r} is not a node type"
            f"{closest(default, list(node_types))} (node types: {', '.join(node_types)})"
        )
    templates = data.get("templates_dir")
    templates_dir = None
    if templates:
        templates_dir = (base / templates).resolve()
        if not templates_dir.is_dir():
            raise ConfigError(f"{where}: templates_dir: {templates_dir} is not a directory")
    return SiteConfig(
        name=data["name"],
        path=path,
        description=data.get("description", ""),
        node_types=MappingProxyType(node_types),
        templates_dir=templates_dir,
        default_node_type=default,
    )


def _node_type(name: str, raw: Mapping[str, Any], base: Path, where: str) -> NodeType:
    prefix = ["node_types", name]
    topology = topology_from_dict(
        raw["topology"], base=base, where=where, path=[*prefix, "topology"], name=name
    )
    reserved = cpu_list(raw.get("reserved_cores", ()), where, [*prefix, "reserved_cores"])
    unknown = sorted(set(reserved) - set(topology.cpus))
    if unknown:
        raise ConfigError(
            f"{where}: {key_path([*prefix, 'reserved_cores'])}: CPU {unknown[0]} does not exist "
            f"(CPUs: {format_cpulist(topology.cpus)})"
        )
    slurm_raw = raw.get("slurm", {})
    slurm = SlurmSettings(
        partition=slurm_raw.get("partition"),
        account=slurm_raw.get("account"),
        qos=slurm_raw.get("qos"),
        gres_name=slurm_raw.get("gres_name", "gpu"),
        slurm_version=slurm_raw.get("slurm_version"),
        srun_binding=slurm_raw.get("srun_binding", True),
        exclusive=slurm_raw.get("exclusive", True),
        time_limit_min=slurm_raw.get("time_limit_min"),
        extra_sbatch=tuple(slurm_raw.get("extra_sbatch", ())),
    )
    return NodeType(
        name=name,
        topology=topology,
        reserved_cores=reserved,
        setup=tuple(raw.get("setup", ())),
        data_root=raw.get("data_root"),
        slurm=slurm,
        description=raw.get("description", ""),
    )


def site_config_text(topology: Topology, *, name: str, node_type: str = "default") -> str:
    """A complete site config (YAML text) for one node type with this topology."""
    header = (
        f"# Site config written by `hpcbench topo --write` from {topology.source}.\n"
        "# Fill in the slurm block (partition, account, ...) and reserved_cores; see\n"
        "# docs/site-config.md for every key.\n"
    )
    data = {
        "name": name,
        "description": f"Written by hpcbench topo from {topology.source}",
        "node_types": {
            node_type: {
                "topology": topology_to_dict(topology),
                "reserved_cores": [],
                "setup": [],
                "data_root": None,
                "slurm": {"partition": None, "gres_name": "gpu"},
            }
        },
    }
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
