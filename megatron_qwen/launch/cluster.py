"""The cluster section, checked and turned into the numbers a job needs (tasks, world size, seconds).

Validation happens on the login node, before anything is written or submitted, so a bad partition
layout or a signal lead longer than the time limit fails in a second rather than after hours in the
queue. Errors name the fields and the fix, like the rest of the config tree (config.py).
"""

from __future__ import annotations

import re

from megatron_qwen.config import ClusterConfig, ConfigError, ParallelConfig, derive_data_parallel_size

KINDS = ("local", "slurm")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def tasks_per_node(cluster: ClusterConfig) -> int:
    """One task per GPU; on CPU, `tasks_per_node` processes (default 1)."""
    if cluster.tasks_per_node is not None:
        return cluster.tasks_per_node
    return cluster.gpus_per_node if cluster.gpus_per_node > 0 else 1


def world_size(cluster: ClusterConfig) -> int:
    return cluster.nodes * tasks_per_node(cluster)


def time_limit_seconds(text: str) -> int:
    """Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = _TIME.match(str(text).strip())
    if match is None:
        raise ConfigError(
            f"cluster.time_limit ({text!r}) is not a Slurm time: use minutes, HH:MM:SS or D-HH:MM:SS"
        )
    days, a, b, c = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if c is not None:  # H:M:S
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 60  # M


def validate_cluster(cluster: ClusterConfig, parallel: ParallelConfig | None = None) -> int:
    """Check the cluster section (and that its world size fits the layout); returns the world size."""
    c = cluster
    if c.kind not in KINDS:
        raise ConfigError(f"cluster.kind ({c.kind!r}) must be one of {KINDS}; pick cluster=local or cluster=slurm")
    for name in ("nodes", "signal_lead_seconds", "max_requeues", "max_crash_requeues", "gpus_per_node"):
        value = getattr(c, name)
        if value < (1 if name == "nodes" else 0):
            raise ConfigError(f"cluster.{name} ({value}) must be >= {1 if name == 'nodes' else 0}")
    if c.tasks_per_node is not None and c.tasks_per_node < 1:
        raise ConfigError(f"cluster.tasks_per_node ({c.tasks_per_node}) must be >= 1 or null")
    if c.gpus_per_node > 0 and tasks_per_node(c) != c.gpus_per_node:
        raise ConfigError(
            f"cluster.tasks_per_node ({c.tasks_per_node}) must equal cluster.gpus_per_node ({c.gpus_per_node}): "
            "the trainer runs one task per GPU; leave tasks_per_node null"
        )
    if c.kind == "local" and c.nodes != 1:
        raise ConfigError(f"cluster.nodes ({c.nodes}) must be 1 with cluster.kind='local'; use cluster=slurm")
    limit = time_limit_seconds(c.time_limit)
    if c.kind == "slurm" and c.signal_lead_seconds >= limit:
        raise ConfigError(
            f"cluster.signal_lead_seconds ({c.signal_lead_seconds}) must be shorter than cluster.time_limit "
            f"({c.time_limit} = {limit} s), or the job is told to stop before it starts"
        )
    if c.container_mounts and not c.container_image:
        raise ConfigError("cluster.container_mounts needs cluster.container_image; set the image or drop the mounts")
    for name in ("sbatch_args", "srun_args"):
        for arg in getattr(c, name):
            if not str(arg).startswith("-"):
                raise ConfigError(
                    f"cluster.{name} entry {arg!r} must be an option such as '--exclusive' or '--constraint=h100'"
                )
    world = world_size(c)
    if parallel is not None:
        try:
            derive_data_parallel_size(parallel, world)
        except ConfigError as err:
            raise ConfigError(
                f"cluster.nodes ({c.nodes}) x tasks per node ({tasks_per_node(c)}) = {world} processes: {err}"
            ) from None
    return world
