"""The backends by name: which one to load, and which one a node gets by default.

Kept apart from :mod:`hpcbench.backends.base` (the contract the backends implement), so that
the contract never imports its implementations and no module imports another in a circle.
"""

from __future__ import annotations

import importlib.util

from hpcbench.backends.base import Backend
from hpcbench.errors import ConfigError


def load_backend(name: str) -> Backend:
    """Import a backend by name; a missing optional dependency is one clear error."""
    if name == "cpu":
        from hpcbench.backends.cpu import CpuBackend

        return CpuBackend()
    if name == "torch":
        try:
            from hpcbench.backends.torch_backend import TorchBackend
        except ImportError as exc:
            from hpcbench.resources import install_hint

            raise ConfigError(
                f"backend 'torch' needs PyTorch ({exc}); install with {install_hint('torch')}"
            ) from exc
        return TorchBackend()
    raise ConfigError(f"backend: unknown backend {name!r} (valid: cpu, torch)")


def node_backend(num_gpus: int) -> str:
    """The backend a node type runs by default: "torch" when it has GPUs, else "cpu".

    A function of the node being planned only, so ``render`` gives the same script on a login
    node with or without PyTorch.

    >>> node_backend(8), node_backend(0)
    ('torch', 'cpu')
    """
    return "torch" if num_gpus > 0 else "cpu"


def choose_backend(num_gpus: int) -> str:
    """For a run on this host: :func:`node_backend`, but "cpu" when PyTorch is not importable."""
    backend = node_backend(num_gpus)
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        return "cpu"
    return backend
