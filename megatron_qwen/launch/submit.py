"""Hand rendered scripts to Slurm: write them beside the stage and submit with `sbatch --parsable`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from megatron_qwen.config import ClusterConfig
from megatron_qwen.launch.sbatch import JobSpec, render_sbatch, sbatch_submit_command
from megatron_qwen.platform.files import write_atomic


class SubmitError(RuntimeError):
    """sbatch refused a job; the message carries sbatch's own explanation."""


def write_script(cluster: ClusterConfig, job: JobSpec, header: Sequence[str] = ()) -> Path:
    """Render the job's script to <stage_dir>/job.sbatch (atomically) and create its log directory."""
    job.stage_dir.mkdir(parents=True, exist_ok=True)
    job.log_dir.mkdir(parents=True, exist_ok=True)
    path = job.script_path
    write_atomic(path, render_sbatch(cluster, job, header), mode=0o755)
    return path


def submit(script: Path, after: str | None = None) -> str:
    """Submit one script, optionally after another job succeeded; returns the new job id."""
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch is not on PATH: run the launcher on a Slurm login node (or use --dry-run)")
    cmd = sbatch_submit_command(script, after)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SubmitError(f"{' '.join(cmd)} failed (exit {result.returncode}): {result.stderr.strip()}")
    # --parsable prints "jobid" or "jobid;cluster".
    job_id = result.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SubmitError(f"{' '.join(cmd)} printed {result.stdout.strip()!r}, not a job id")
    return job_id
