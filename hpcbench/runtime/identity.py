"""Who a rank is, read from one map of environment variables.

Two launchers start ranks: Slurm (``srun``) and hpcbench's local launcher. Each field of a
rank's identity comes from one variable per launcher, listed in :data:`SLURM_VARS` and
:data:`LOCAL_VARS`, so the rest of the rank's code is the same under both. The local launcher's
variables win when both are present (``hpcbench run`` inside an ``salloc`` shell).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpcbench.errors import ConfigError

# field -> environment variable, one table per launcher.
SLURM_VARS: dict[str, str] = {
    "rank": "SLURM_PROCID",
    "local_rank": "SLURM_LOCALID",
    "world_size": "SLURM_NTASKS",
    "node": "SLURM_NODEID",
}
LOCAL_VARS: dict[str, str] = {
    "rank": "HPCBENCH_RANK",
    "local_rank": "HPCBENCH_LOCAL_RANK",
    "world_size": "HPCBENCH_WORLD_SIZE",
    "node": "HPCBENCH_NODE",
}
# A token that differs between two launches of the same run directory (see launch_id).
LAUNCH_ID_VAR = "HPCBENCH_LAUNCH_ID"

# Slurm job facts recorded in the rank file's ``slurm_json`` attribute.
SLURM_JOB_VARS: dict[str, str] = {
    "job_id": "SLURM_JOB_ID",
    "step_id": "SLURM_STEP_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "nodename": "SLURMD_NODENAME",
    "nodelist": "SLURM_JOB_NODELIST",
    "partition": "SLURM_JOB_PARTITION",
    "account": "SLURM_JOB_ACCOUNT",
    "cluster": "SLURM_CLUSTER_NAME",
    "cpus_on_node": "SLURM_CPUS_ON_NODE",
    "step_gpus": "SLURM_STEP_GPUS",
    "job_gpus": "SLURM_JOB_GPUS",
}


@dataclass(frozen=True, slots=True)
class RankIdentity:
    """A rank's place in the job; ``launcher`` is "slurm" or "local"."""

    rank: int
    local_rank: int
    world_size: int
    node: int
    launcher: str


def identity_from_env(env: Mapping[str, str]) -> RankIdentity:
    """Read a rank's identity from ``env`` (normally ``os.environ``).

    >>> identity_from_env({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
    ...                    "SLURM_NODEID": "1"})
    RankIdentity(rank=3, local_rank=1, world_size=4, node=1, launcher='slurm')
    >>> identity_from_env({"HPCBENCH_RANK": "0", "HPCBENCH_WORLD_SIZE": "2"}).local_rank
    0
    """
    for launcher, table in (("local", LOCAL_VARS), ("slurm", SLURM_VARS)):
        if table["rank"] in env:
            return _from_table(env, table, launcher)
    raise ConfigError(
        f"rank identity: neither {LOCAL_VARS['rank']} nor {SLURM_VARS['rank']} is set; start "
        "ranks with 'hpcbench run' or srun (see 'hpcbench render')"
    )


def _from_table(env: Mapping[str, str], table: Mapping[str, str], launcher: str) -> RankIdentity:
    values: dict[str, int] = {}
    # A single-node job may lack the node and local-rank variables: default them sensibly.
    defaults = {"node": 0}
    for field_name, var in table.items():
        raw = env.get(var)
        if raw is None:
            if field_name in defaults:
                values[field_name] = defaults[field_name]
                continue
            if field_name == "local_rank":
                values[field_name] = -1
                continue
            raise ConfigError(f"rank identity: {var} is not set ({launcher} launcher)")
        try:
            values[field_name] = int(raw)
        except ValueError as exc:
            raise ConfigError(
                f"rank identity: {var}={raw!r} is not an integer ({launcher} launcher)"
            ) from exc
    if values["local_rank"] < 0:
        values["local_rank"] = values["rank"]
    if values["world_size"] < 1:
        raise ConfigError(f"rank identity: {table['world_size']}={values['world_size']} is < 1")
    if not 0 <= values["rank"] < values["world_size"]:
        raise ConfigError(
            f"rank identity: {table['rank']}={values['rank']} is outside "
            f"0..{values['world_size'] - 1}"
        )
    return RankIdentity(launcher=launcher, **values)


def local_env(identity: RankIdentity, launch_id: str) -> dict[str, str]:
    """The variables the local launcher sets for a rank (the inverse of identity_from_env).

    >>> local_env(RankIdentity(1, 1, 2, 0, "local"), "abc")["HPCBENCH_RANK"]
    '1'
    """
    env = {var: str(getattr(identity, field_name)) for field_name, var in LOCAL_VARS.items()}
    env[LAUNCH_ID_VAR] = launch_id
    return env


def launch_id(env: Mapping[str, str]) -> str:
    """A token shared by the ranks of one launch and different for the next launch.

    Barrier state is named by run id *and* this token, so a rerun of the same run directory
    (a Slurm requeue, a retried local run) never meets the state a killed launch left behind.

    >>> launch_id({"HPCBENCH_LAUNCH_ID": "k3"})
    'k3'
    >>> launch_id({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_RESTART_COUNT": "1"})
    'j77.0.1'
    >>> launch_id({})
    'default'
    """
    if env.get(LAUNCH_ID_VAR):
        return env[LAUNCH_ID_VAR]
    if env.get("SLURM_JOB_ID"):
        # A requeued job keeps its job id; SLURM_RESTART_COUNT tells the attempts apart.
        return "j{}.{}.{}".format(
            env["SLURM_JOB_ID"], env.get("SLURM_STEP_ID", "0"), env.get("SLURM_RESTART_COUNT", "0")
        )
    return "default"


def slurm_info(env: Mapping[str, str]) -> dict[str, Any] | None:
    """Slurm job facts for the rank file (None outside a Slurm job).

    >>> slurm_info({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0", "SLURMD_NODENAME": "n1"})
    {'job_id': '12', 'step_id': '0', 'nodename': 'n1'}
    >>> slurm_info({}) is None
    True
    """
    if "SLURM_JOB_ID" not in env:
        return None
    return {key: env[var] for key, var in SLURM_JOB_VARS.items() if var in env}


def hostname() -> str:
    """This machine's short host name (what Slurm node lists use)."""
    return socket.gethostname().split(".")[0]
