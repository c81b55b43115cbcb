"""The plan: where every rank runs. Produced by the planner, read by launchers and ranks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.errors import ConfigError
from hpcbench.jsonfile import read_json, write_json_atomic


@dataclass(frozen=True, slots=True)
class RankPlacement:
    """One rank's place on its node.

    ``cpus`` are OS CPU ids; ``gpus`` are physical GPU indices as the node numbers them
    (what ``nvidia-smi`` shows, before any ``CUDA_VISIBLE_DEVICES`` renumbering);
    ``data_dir`` is a placeholder such as ``{data_root}/rank00001`` resolved at run time.
    """

    rank: int
    node: int
    local_rank: int
    socket: int | None
    numa_node: int | None
    cpus: tuple[int, ...]
    gpus: tuple[int, ...]
    mem_nodes: tuple[int, ...]
    data_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "node": self.node,
            "local_rank": self.local_rank,
            "socket": self.socket,
            "numa_node": self.numa_node,
            "cpus": list(self.cpus),
            "gpus": list(self.gpus),
            "mem_nodes": list(self.mem_nodes),
            "data_dir": self.data_dir,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RankPlacement:
        return cls(
            rank=int(data["rank"]),
            node=int(data["node"]),
            local_rank=int(data["local_rank"]),
            socket=None if data.get("socket") is None else int(data["socket"]),
            numa_node=None if data.get("numa_node") is None else int(data["numa_node"]),
            cpus=tuple(int(c) for c in data["cpus"]),
            gpus=tuple(int(g) for g in data["gpus"]),
            mem_nodes=tuple(int(m) for m in data["mem_nodes"]),
            data_dir=str(data.get("data_dir", "")),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """Every rank of a job, plus the rule violations the user accepted and the topology source.

    Every node of a job runs the same per-node layout (Slurm's per-task binding lists are
    per node), so ``ranks`` holds ``nodes * ranks_per_node`` entries, node-major.
    """

    ranks: tuple[RankPlacement, ...]
    warnings: tuple[str, ...]
    source: str
    nodes: int = 1

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @property
    def ranks_per_node(self) -> int:
        return len(self.ranks) // max(self.nodes, 1)

    def node_ranks(self, node: int = 0) -> tuple[RankPlacement, ...]:
        """The ranks of one node, in local-rank order."""
        return tuple(sorted((r for r in self.ranks if r.node == node), key=lambda r: r.local_rank))

    def rank(self, rank: int) -> RankPlacement:
        for placement in self.ranks:
            if placement.rank == rank:
                return placement
        raise KeyError(rank)

    def to_json(self) -> dict[str, Any]:
        """The stable ``hpcbench plan --json`` contract."""
        return {
            "ranks": [r.to_json() for r in self.ranks],
            "warnings": list(self.warnings),
            "source": self.source,
            "nodes": self.nodes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "plan") -> Plan:
        try:
            return cls(
                ranks=tuple(RankPlacement.from_json(r) for r in data["ranks"]),
                warnings=tuple(str(w) for w in data.get("warnings", ())),
                source=str(data.get("source", "")),
                nodes=int(data.get("nodes", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: not a valid hpcbench plan ({exc!r})") from exc

    def write(self, path: Path) -> None:
        """Write ``plan.json`` atomically."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.from_json(read_json(path, "plan file"), where=str(path))
