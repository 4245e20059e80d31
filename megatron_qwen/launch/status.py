"""`megatron-qwen status RUN_DIR`: what an engineer checks first in the morning, from the run's own files.

For every stage the launcher wrote (`RUN_DIR/<stage>/config.yaml`): its state, last logged step and loss,
last checkpoint (`checkpoints/latest`), skipped steps, restarts (how often a job of the stage resumed
from a checkpoint, counted in `RUN_DIR/logs/<stage>-<job>.{out,err}`) and of those the crashes the batch
script requeued (`<stage>/crashes`). States, read from files only (no
Slurm query, so it works on any login node and after the jobs are gone):
  finished  the FINISHED marker exists
  running   metrics.jsonl changed within --active-minutes (default 10)
  requeued  not running, and the batch script's last word on its newest job was to requeue it (after a
            preemption, or a crash within cluster.max_crash_requeues): it waits to start again
  failed    not running, and a log of its newest job ends in a Python traceback or an `error:` line
  stopped   it has trained, but is none of the above (a local run stopped by a signal, say)
  pending   nothing trained yet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class StageStatus:
    stage: str
    state: str
    step: int | None = None
    loss: float | None = None
    checkpoint: str | None = None
    skipped_steps: int = 0
    restarts: int = 0
    crashes: int = 0
    updated_min_ago: float | None = None


def _last_metrics(path: Path) -> dict:
    last: dict = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if "loss" in record:
                last = record
    return last


def _newest_job(logs: list[Path]) -> list[Path]:
    """The .out and .err of the stage's newest job (`<stage>-<job id>.*`)."""
    if not logs:
        return []
    stem = max(logs, key=lambda p: p.stat().st_mtime).stem
    return [p for p in logs if p.stem == stem]


def _failed(job_logs: list[Path]) -> bool:
    """A log of the job ends in a Python traceback or an `error:` line (the launcher's own lines may follow)."""
    for path in job_logs:
        tail = [line for line in path.read_text(errors="replace").strip().splitlines()[-30:]
                if not line.startswith("[launch ")]
        if any(line.startswith("Traceback") for line in tail) or (tail and tail[-1].startswith("error:")):
            return True
    return False


def _requeued(job_logs: list[Path]) -> bool:
    """The job's last launcher line (`[launch ...]` in its .out) says it requeued the job."""
    launch = [line for path in job_logs if path.suffix == ".out"
              for line in path.read_text(errors="replace").splitlines() if line.startswith("[launch ")]
    return bool(launch) and "requeueing to resume" in launch[-1]


def stage_status(run_dir: Path, stage_dir: Path, now: float, active_s: float) -> StageStatus:
    status = StageStatus(stage_dir.name, "pending")
    metrics_file = stage_dir / "checkpoints" / "metrics.jsonl"
    last = _last_metrics(metrics_file)
    if last:
        status.step, status.loss = last.get("step"), last.get("loss")
        status.skipped_steps = int(last.get("skipped_steps") or 0)
        status.updated_min_ago = round((now - metrics_file.stat().st_mtime) / 60, 1)
    latest = stage_dir / "checkpoints" / "latest"
    status.checkpoint = latest.read_text().strip() if latest.is_file() else None
    logs = sorted((run_dir / "logs").glob(f"{stage_dir.name}-*.*"))
    status.restarts = sum(p.read_text(errors="replace").count("resuming from ") for p in logs)
    crashes = stage_dir / "crashes"
    status.crashes = int(crashes.read_text().strip() or 0) if crashes.is_file() else 0
    if (stage_dir / "FINISHED").exists():
        status.state = "finished"
    elif last and now - metrics_file.stat().st_mtime < active_s:
        status.state = "running"
    elif _requeued(_newest_job(logs)):
        status.state = "requeued"
    elif _failed(_newest_job(logs)):
        status.state = "failed"
    elif last:
        status.state = "stopped"
    return status


def run_status(run_dir: str | Path, active_minutes: float = 10.0, now: float | None = None) -> list[StageStatus]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    # in the order the launcher wrote the stages' configs (a directory's own mtime changes with its files)
    stages = [p.parent for p in sorted(run_dir.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime)]
    now = time.time() if now is None else now
    return [stage_status(run_dir, s, now, active_minutes * 60) for s in stages]


def format_table(rows: list[StageStatus]) -> str:
    head = f"{'stage':<28} {'state':<9} {'step':>7} {'loss':>9} {'checkpoint':<14} {'skipped':>7} {'restarts':>8} {'crashes':>7}"
    lines = [head]
    for r in rows:
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        lines.append(f"{r.stage:<28} {r.state:<9} {r.step if r.step is not None else '-':>7} {loss:>9} "
                     f"{r.checkpoint or '-':<14} {r.skipped_steps:>7} {r.restarts:>8} {r.crashes:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="megatron-qwen status", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the --run-dir given to `megatron-qwen launch`")
    p.add_argument("--active-minutes", type=float, default=10.0, help="metrics newer than this: running")
    p.add_argument("--json", action="store_true", help="one JSON object per stage instead of a table")
    args = p.parse_args(argv)
    rows = run_status(args.run_dir, args.active_minutes)
    if not rows:
        print(f"error: {args.run_dir} has no stage directories (RUN_DIR/<stage>/config.yaml)", file=sys.stderr)
        return 2
    print("\n".join(json.dumps(asdict(r)) for r in rows) if args.json else format_table(rows))
    return 0
