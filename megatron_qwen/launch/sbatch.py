"""Render one stage as an sbatch script that keeps itself alive through time limits and preemption.

The script asks Slurm for USR1 `signal_lead_seconds` before the time limit (`--signal=B:USR1@lead`, the
batch shell only), runs srun in the background so the shell can react, and forwards the signal to srun,
which passes it to every task. The trainer saves a checkpoint on USR1 and exits 0 without writing the
stage's FINISHED marker; the script then calls `scontrol requeue` and the requeued job resumes from that
checkpoint. A signal sent straight to the tasks (`scancel --signal=USR1 <job>`, or a site's preemption
hook) takes the same path. A stage that wrote FINISHED never requeues. A trainer that crashed without a
signal (non-zero status) is requeued too, up to `cluster.max_crash_requeues` times per stage (counted in
`<stage dir>/crashes`, apart from the `cluster.max_requeues` preemptions); after that the job fails, so
`afterok` dependants are cancelled.

The rendered text is the product users read in `--dry-run`, so it is plain bash with comments.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_qwen.config import ClusterConfig
from megatron_qwen.launch.cluster import tasks_per_node
from megatron_qwen.training.preemption import FINISHED_ENV


@dataclass(frozen=True)
class JobSpec:
    """One stage's job: what to run, where its files go, and what it exports."""

    name: str  # Slurm job name
    stage: str  # stage label, used in log file names
    stage_dir: Path  # holds config.yaml, job.sbatch and the FINISHED marker
    log_dir: Path  # one stdout and one stderr file per job: <stage>-<jobid>.{out,err}
    workdir: Path  # the job's working directory (the directory the launcher ran in)
    argv: Sequence[str]  # the trainer's arguments after the interpreter, e.g. ["-m", "megatron_qwen", "train", ...]
    env: Mapping[str, str] = field(default_factory=dict)  # extra exports (W&B run id, ...)

    @property
    def finished_file(self) -> Path:
        return self.stage_dir / "FINISHED"

    @property
    def script_path(self) -> Path:
        return self.stage_dir / "job.sbatch"


def sbatch_options(cluster: ClusterConfig, job: JobSpec) -> list[str]:
    """The `#SBATCH` options, in the order they are printed."""
    c = cluster
    opts = [f"--job-name={job.name}"]
    if c.partition:
        opts.append(f"--partition={c.partition}")
    if c.account:
        opts.append(f"--account={c.account}")
    if c.qos:
        opts.append(f"--qos={c.qos}")
    opts += [f"--nodes={c.nodes}", f"--ntasks-per-node={tasks_per_node(c)}"]
    if c.gpus_per_node > 0:
        opts.append(f"--gpus-per-node={c.gpus_per_node}")
    if c.cpus_per_task is not None:
        opts.append(f"--cpus-per-task={c.cpus_per_task}")
    if c.mem is not None:
        opts.append(f"--mem={c.mem}")
    opts += [
        f"--time={c.time_limit}",
        f"--signal=B:USR1@{c.signal_lead_seconds}",
        "--requeue",
        "--open-mode=append",
        f"--output={job.log_dir / (job.stage + '-%j.out')}",
        f"--error={job.log_dir / (job.stage + '-%j.err')}",
        f"--chdir={job.workdir}",
    ]
    return opts + [str(a) for a in c.sbatch_args]


def srun_command(cluster: ClusterConfig, job: JobSpec) -> list[list[str]]:
    """srun with one task per GPU (or per CPU process) running the trainer directly, no torchrun.

    Returned as groups of words, one printed line each: srun, its options, the program, its arguments.
    """
    c = cluster
    groups = [["srun"], ["--kill-on-bad-exit=1"], [f"--nodes={c.nodes}"], [f"--ntasks-per-node={tasks_per_node(c)}"]]
    if c.container_image:
        groups.append([f"--container-image={c.container_image}"])
        if c.container_mounts:
            groups.append([f"--container-mounts={','.join(c.container_mounts)}"])
        groups.append([f"--container-workdir={job.workdir}"])
    groups += [[str(a)] for a in c.srun_args]
    argv = list(job.argv)
    # `python -m module [command]` on one line: the command is the first argument that is not a flag
    program = [c.python] + (argv[:2] if argv[:1] == ["-m"] else [])
    if len(argv) > 2 and argv[:1] == ["-m"] and not argv[2].startswith("-"):
        program.append(argv[2])
    groups.append(program)
    groups += [[a] for a in argv[len(program) - 1 :]]
    return groups


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _wrap(groups: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """A long command with one group of quoted words per line, for the reader of --dry-run."""
    return (" \\\n" + indent).join(" ".join(_q(w) for w in group) for group in groups)


def render_sbatch(cluster: ClusterConfig, job: JobSpec, header: Sequence[str] = ()) -> str:
    """The whole batch script as text."""
    c = cluster
    lines = ["#!/bin/bash"]
    lines += [f"# {h}" for h in header]
    lines += [f"#SBATCH {opt}" for opt in sbatch_options(c, job)]
    lines += [
        "",
        "# Not `set -e`: the script inspects the trainer's exit status itself.",
        "set -uo pipefail",
        f"STAGE_DIR={_q(job.stage_dir)}",
        f"export {FINISHED_ENV}=\"$STAGE_DIR/FINISHED\"",
        f"MAX_REQUEUES={c.max_requeues}",
        f"MAX_CRASH_REQUEUES={c.max_crash_requeues}",
        'CRASHES_FILE="$STAGE_DIR/crashes"',
        'RESTARTS="${SLURM_RESTART_COUNT:-0}"',
        'log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }',
        "",
        f'if [ -e "${FINISHED_ENV}" ]; then',
        '  log "stage already finished ($' + FINISHED_ENV + ' exists); nothing to do"',
        "  exit 0",
        "fi",
        'log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"',
        "",
    ]
    if c.setup:
        lines.append("# Environment setup (cluster.setup).")
        lines += [str(s) for s in c.setup]
        lines.append("")
    if job.env:
        lines.append("# Kept identical across requeues: the W&B run continues instead of starting anew.")
        lines += [f"export {k}={_q(v)}" for k, v in job.env.items()]
        lines.append("")
    lines += _run_srun(c, job) + _requeue_decision()
    return "\n".join(lines)


def _run_srun(cluster: ClusterConfig, job: JobSpec) -> list[str]:
    """srun in the background, USR1 forwarded to it, and the wait for it to end (its status in RC)."""
    return [
        "# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,",
        "# which forwards it to every task; the trainer saves a checkpoint and exits.",
        "SIGNALLED=0",
        "SRUN_PID=",
        "on_usr1() {",
        "  SIGNALLED=1",
        '  log "USR1: asking the trainer to save and stop"',
        '  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi',
        "}",
        "trap on_usr1 USR1",
        "",
        "# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous",
        "# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.",
        _wrap(srun_command(cluster, job)) + " &",
        "SRUN_PID=$!",
        'if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi',
        "# A trapped signal interrupts `wait`; keep waiting until srun has really exited.",
        "while :; do",
        '  wait "$SRUN_PID"',
        "  RC=$?",
        '  kill -0 "$SRUN_PID" 2>/dev/null || break',
        "done",
        "",
    ]


def _requeue_decision() -> list[str]:
    """After srun: finished, or requeue (a preemption or a crash within its budget), or fail."""
    return [
        f'if [ -e "${FINISHED_ENV}" ]; then',
        '  log "stage finished"',
        "  exit 0",
        "fi",
        "# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)",
        "# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.",
        'if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then',
        '  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))',
        '  echo "$CRASHES" > "$CRASHES_FILE"',
        '  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then',
        '    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES);'
        ' not requeueing"',
        '    exit "$RC"',
        "  fi",
        '  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES);'
        ' requeueing to resume from the last checkpoint"',
        "else",
        '  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))',
        '  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then',
        '    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"',
        "    exit 1",
        "  fi",
        '  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"',
        "fi",
        'scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }',
        "exit 0",
        "",
    ]


def sbatch_submit_command(script: Path, after: str | None = None) -> list[str]:
    """The sbatch command line; the dependency goes here because the previous job id is known only now."""
    cmd = ["sbatch", "--parsable"]
    if after:
        cmd += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    return cmd + [str(script)]
