"""cluster=local: run the stages one after another on this machine.

One process runs the trainer directly; several run under `torchrun --standalone` (torchrun stays the
interactive launcher). A stage that wrote FINISHED is skipped, so running the same command again with
the same --run-dir continues an interrupted chain where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys

from megatron_qwen.launch.cluster import tasks_per_node
from megatron_qwen.launch.stages import Stage
from megatron_qwen.training.preemption import FINISHED_ENV


def local_command(stage: Stage) -> list[str]:
    cluster = stage.cluster()
    python = sys.executable if cluster.python == "python" else cluster.python
    n = tasks_per_node(cluster)
    if n == 1:
        return [python, *stage.trainer_argv()]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *stage.trainer_argv()]


def local_env(stage: Stage) -> dict[str, str]:
    return {FINISHED_ENV: str(stage.finished_file), "WANDB_RUN_ID": stage.wandb_run_id, "WANDB_RESUME": "allow"}


def run_local(stages: list[Stage], dry_run: bool = False) -> int:
    """Run (or print) each stage in order; stops at the first failure and returns its exit status."""
    for index, stage in enumerate(stages, 1):
        cmd = local_command(stage)
        exports = " ".join(f"{k}={v}" for k, v in local_env(stage).items())
        print(f"[launch] stage {index}/{len(stages)} {stage.name}: {exports} {' '.join(cmd)}", flush=True)
        if dry_run:
            continue
        if stage.finished_file.exists():
            print(f"[launch] {stage.name} already finished ({stage.finished_file}); skipping", flush=True)
            continue
        rc = subprocess.run(cmd, env={**os.environ, **local_env(stage)}).returncode
        if rc != 0:
            print(f"[launch] {stage.name} failed with exit status {rc}; later stages not run", flush=True)
            return rc
        if not stage.finished_file.exists():
            print(f"[launch] {stage.name} stopped before its last step; run the same command to resume", flush=True)
            return 1
    return 0
