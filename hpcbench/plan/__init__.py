"""Placement of ranks on cores, GPUs and NUMA memory, and the launch settings derived from it."""

from hpcbench.plan.model import Plan, RankPlacement

__all__ = ["Plan", "RankPlacement"]
