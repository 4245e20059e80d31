"""`megatron-qwen launch` (or megatron-qwen launch): a Hydra experiment in, Slurm jobs out.

    megatron-qwen launch [--stages a,b,c] [--run-dir DIR] [--dry-run] [--after JOB] key=value ...

The experiment is composed and checked here on the login node; each stage's resolved config is saved in
<run-dir>/<stage>/config.yaml beside its job script; the stages are submitted in order, each with
`--dependency=afterok:<previous job>`. `--dry-run` prints the scripts and writes nothing. With
cluster=local the stages run here, one after another.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from megatron_qwen.config import ConfigError, validate_model_parallel
from megatron_qwen.launch.cluster import validate_cluster
from megatron_qwen.launch.local import run_local
from megatron_qwen.launch.sbatch import JobSpec, render_sbatch, sbatch_submit_command
from megatron_qwen.launch.stages import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_NAME,
    Stage,
    plan_stages,
    save_config,
    typed,
)
from megatron_qwen.launch.submit import SubmitError, submit, write_script


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="megatron-qwen launch",
        description="Resolve a Hydra experiment and run it as chained Slurm jobs (or locally).",
        epilog="Example: megatron-qwen launch experiment=qwen25_coder_7b cluster=slurm "
        "cluster.partition=h100 --stages file_pretrain,repo_pretrain,long_context --dry-run",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=NAME cluster=slurm key=value")
    p.add_argument("--stages", help="comma-separated stages to chain, each from the previous one's checkpoint: "
                   "stage config names (file_pretrain,repo_pretrain) or overrides (experiment=stage1,experiment=stage2)")
    p.add_argument("--run-dir", type=Path, help="configs, scripts, logs and checkpoints (default: runs/<name>-<time>)")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts; write and submit nothing")
    p.add_argument("--after", help="a Slurm job id the first stage waits for (afterok)")
    p.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                   help="Hydra config directory: a full tree with config.yaml, or extra groups searched on top of hydra/")
    p.add_argument("--config-name", default=DEFAULT_CONFIG_NAME, help="primary Hydra config")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"{bad[0]!r} is not a Hydra override (key=value); launcher options start with --")
    return args


def default_run_dir(overrides: Sequence[str]) -> Path:
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "run")
    return Path("runs") / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def check(stages: list[Stage]) -> None:
    """Every cross-field rule, before anything is written or submitted."""
    for stage in stages:
        cfg = typed(stage.config)
        try:
            validate_model_parallel(cfg.model, cfg.parallel, cfg.data.seq_length)
            validate_cluster(cfg.cluster, cfg.parallel)
        except ConfigError as err:
            raise ConfigError(f"stage {stage.name}: {err}") from None
    kinds = {typed(s.config).cluster.kind for s in stages}
    if len(kinds) > 1:
        raise ConfigError(f"all stages must use the same cluster.kind (got {sorted(kinds)})")


def job_spec(stage: Stage, run_dir: Path) -> JobSpec:
    return JobSpec(
        name=f"{run_dir.name}-{stage.name}",
        stage=stage.name,
        stage_dir=stage.stage_dir,
        log_dir=run_dir / "logs",
        workdir=Path.cwd(),
        argv=stage.trainer_argv(),
        env={"WANDB_RUN_ID": stage.wandb_run_id, "WANDB_RESUME": "allow"},
    )


def header(stage: Stage, index: int, total: int, previous: str | None, command: str) -> list[str]:
    submit_cmd = sbatch_submit_command(stage.stage_dir / "job.sbatch", previous)
    return [
        f"megatron_qwen stage {index}/{total}: {stage.name}",
        f"Rendered by: {command}",
        f"Resolved config: {stage.config_path}",
        f"Submitted with: {' '.join(submit_cmd)}",
    ]


def run_slurm(stages: list[Stage], run_dir: Path, args: argparse.Namespace, command: str) -> int:
    previous = args.after
    for index, stage in enumerate(stages, 1):
        cluster = typed(stage.config).cluster
        job = job_spec(stage, run_dir)
        if args.dry_run:
            after = args.after if index == 1 else f"<job id of {stages[index - 2].name}>"
            print(render_sbatch(cluster, job, header(stage, index, len(stages), after, command)))
            continue
        if stage.finished_file.exists():
            print(f"[launch] {stage.name}: already finished ({stage.finished_file}); not submitted", flush=True)
            continue
        save_config(stage)
        script = write_script(cluster, job, header(stage, index, len(stages), previous, command))
        job_id = submit(script, after=previous)
        after = f" after job {previous}" if previous else ""
        print(f"[launch] {stage.name}: submitted job {job_id}{after}; config {stage.config_path}, "
              f"logs {job.log_dir}/{stage.name}-{job_id}.{{out,err}}", flush=True)
        previous = job_id
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["megatron-qwen", "launch", *(sys.argv[1:] if argv is None else argv)])
    run_dir = (args.run_dir or default_run_dir(args.overrides)).resolve()
    names = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    try:
        stages = plan_stages(args.overrides, names, run_dir, args.config_dir, args.config_name)
        check(stages)
        if typed(stages[0].config).cluster.kind == "local":
            if not args.dry_run:
                for stage in stages:
                    save_config(stage)
            return run_local(stages, dry_run=args.dry_run)
        if not args.dry_run:
            print(f"[launch] run directory {run_dir}", flush=True)
        return run_slurm(stages, run_dir, args, command)
    except (ConfigError, SubmitError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
