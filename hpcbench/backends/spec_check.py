"""What a rank's backend would refuse in a spec, found before anything is written or started.

``run`` and ``sweep --local`` (through ``local_run.preflight``) and ``render``, ``submit`` and
a Slurm ``sweep`` (through ``slurm.inputs.job_inputs``) call :func:`check_spec`, so
a misspelt model or option is one line and exit 2, never a run directory whose ranks fail.
Pure: imports no PyTorch and looks at nothing on this machine.
"""

from __future__ import annotations

from hpcbench.plan.model import Plan
from hpcbench.spec import RunSpec


def check_spec(spec: RunSpec, plan: Plan) -> None:
    """Raise ConfigError when the backend would refuse ``spec`` for one of ``plan``'s ranks."""
    if spec.backend == "torch":
        from hpcbench.backends.torch_models import TorchSettings

        TorchSettings.from_spec(spec)  # the model's name and the options
    elif spec.backend == "cpu":
        from hpcbench.backends.cpu import CpuBackend

        backend = CpuBackend()
        for placement in plan.ranks:
            backend.devices(placement, spec)
