"""Node topologies for planner tests, built with ``Topology.build`` (no site config, no probe).

- :func:`apollo_site`: the shipped ``site_configs/hpe-apollo6500-gen10.yaml``.
- :func:`apollo`: HPE Apollo 6500 Gen10 as the seed describes it: 2 x 18 cores with
  hyperthreading (socket 0: CPUs 0-17 + 36-53, socket 1: 18-35 + 54-71), 8 GPUs, 0-3 on
  socket 0 behind switches {0,1} and {2,3}, 4-7 on socket 1 behind {4,5} and {6,7}.
- :func:`flat_vm`: the H200 VMs (one NUMA node, GPUs that report no locality, no switches).
- :func:`nps4`: a 2-socket AMD node in NPS4 mode: 4 NUMA nodes per socket, one GPU per node.
- :func:`cpu_only`: 2 sockets, no GPUs.
"""

from __future__ import annotations

from hpcbench.resources import site_configs_dir
from hpcbench.site import load_site
from hpcbench.topology.model import Core, Gpu, NumaNode, Topology

APOLLO_SWITCH = {
    0: "0000:02:00.0",
    1: "0000:02:00.0",
    2: "0000:08:00.0",
    3: "0000:08:00.0",
    4: "0000:82:00.0",
    5: "0000:82:00.0",
    6: "0000:88:00.0",
    7: "0000:88:00.0",
}

# Each switch hangs off a root port of its own.
APOLLO_ROOT_PORT = {
    "0000:02:00.0": "0000:00:01.0",
    "0000:08:00.0": "0000:00:03.0",
    "0000:82:00.0": "0000:80:01.0",
    "0000:88:00.0": "0000:80:03.0",
}


def apollo() -> Topology:
    cores = [Core(0, 0, (i, i + 36)) for i in range(18)]
    cores += [Core(1, 1, (i, i + 36)) for i in range(18, 36)]
    numa = [
        NumaNode(0, 0, (*range(18), *range(36, 54))),
        NumaNode(1, 1, (*range(18, 36), *range(54, 72))),
    ]
    gpus = [
        Gpu(
            index=i,
            pci_bus_id=f"0000:{0x04 + i:02x}:00.0",
            model="Tesla V100-SXM2-16GB",
            numa_node=i // 4,
            cpus=numa[i // 4].cpus,
            pcie_path=(APOLLO_ROOT_PORT[APOLLO_SWITCH[i]], APOLLO_SWITCH[i]),
            pcie_switch=APOLLO_SWITCH[i],
        )
        for i in range(8)
    ]
    return Topology.build(source="test:apollo", cores=cores, numa_nodes=numa, gpus=gpus)


def flat_vm(gpus: int = 4, cores: int = 16) -> Topology:
    return Topology.build(
        source="test:flat",
        cores=[Core(0, 0, (i,)) for i in range(cores)],
        numa_nodes=[NumaNode(0, 0, tuple(range(cores)))],
        gpus=[
            Gpu(i, f"0000:{0x10 + i:02x}:00.0", "NVIDIA H200", None, tuple(range(cores)))
            for i in range(gpus)
        ],
    )


def nps4(cores_per_numa: int = 8, threads: int = 2) -> Topology:
    """2 sockets x 4 NUMA nodes x ``cores_per_numa`` cores; GPU n on NUMA node n, own switches."""
    total = 8 * cores_per_numa
    cores = []
    for node in range(8):
        for k in range(cores_per_numa):
            first = node * cores_per_numa + k
            cores.append(Core(node // 4, node, tuple(first + t * total for t in range(threads))))
    numa = [
        NumaNode(
            n, n // 4, tuple(sorted(c for core in cores if core.numa_node == n for c in core.cpus))
        )
        for n in range(8)
    ]
    gpus = [
        Gpu(n, f"0000:{0x20 + n:02x}:00.0", "MI250X", n, numa[n].cpus, (), f"sw{n}")
        for n in range(8)
    ]
    return Topology.build(source="test:nps4", cores=cores, numa_nodes=numa, gpus=gpus)


def cpu_only() -> Topology:
    cores = [Core(i // 8, i // 8, (i,)) for i in range(16)]
    numa = [NumaNode(0, 0, tuple(range(8))), NumaNode(1, 1, tuple(range(8, 16)))]
    return Topology.build(source="test:cpu", cores=cores, numa_nodes=numa)


def apollo_site() -> Topology:
    path = site_configs_dir() / "hpe-apollo6500-gen10.yaml"
    return load_site(path).node_type(None).topology
