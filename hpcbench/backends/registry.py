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


def choose_backend(num_gpus: int) -> str:
    """ "torch" when the node has GPUs and PyTorch is importable, else "cpu"."""
    if num_gpus <= 0:
        return "cpu"
    return "torch" if importlib.util.find_spec("torch") is not None else "cpu"
