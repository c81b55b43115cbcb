"""Node topology: the data model and its readers (sysfs, NVML, hwloc XML, site config)."""

from hpcbench.topology.model import Core, Gpu, Nic, NumaNode, Package, Topology

__all__ = ["Core", "Gpu", "Nic", "NumaNode", "Package", "Topology"]
