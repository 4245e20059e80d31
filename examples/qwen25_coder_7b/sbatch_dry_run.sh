#!/bin/bash
# megatron_qwen stage 1/6: stage1_file_pretrain
# Rendered by: megatron-qwen launch --config-dir examples/qwen25_coder_7b --run-dir /checkpoints/qwen25_coder_7b --stages experiment=stage1_file_pretrain,experiment=stage2_repo_pretrain,experiment=stage3_long_context,experiment=stage4_sft_coarse,experiment=stage5_sft_fine,experiment=stage6_dpo cluster.partition=h100 cluster.account=myproject cluster.container_image=/images/megatron_qwen.sqsh 'cluster.container_mounts=[/checkpoints:/checkpoints,/data:/data]' --dry-run
# Resolved config: /checkpoints/qwen25_coder_7b/stage1_file_pretrain/config.yaml
# Submitted with: sbatch --parsable /checkpoints/qwen25_coder_7b/stage1_file_pretrain/job.sbatch
#SBATCH --job-name=qwen25_coder_7b-stage1_file_pretrain
#SBATCH --partition=h100
#SBATCH --account=myproject
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoints/qwen25_coder_7b/logs/stage1_file_pretrain-%j.out
#SBATCH --error=/checkpoints/qwen25_coder_7b/logs/stage1_file_pretrain-%j.err
#SBATCH --chdir=/path/to/megatron_qwen

# Not `set -e`: the script inspects the trainer's exit status itself.
set -uo pipefail
STAGE_DIR=/checkpoints/qwen25_coder_7b/stage1_file_pretrain
export MEGATRON_QWEN_FINISHED_FILE="$STAGE_DIR/FINISHED"
MAX_REQUEUES=50
MAX_CRASH_REQUEUES=2
CRASHES_FILE="$STAGE_DIR/crashes"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage already finished ($MEGATRON_QWEN_FINISHED_FILE exists); nothing to do"
  exit 0
fi
log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"

# Kept identical across requeues: the W&B run continues instead of starting anew.
export WANDB_RUN_ID=qwen25_coder_7b-stage1_file_pretrain-517da570
export WANDB_RESUME=allow

# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,
# which forwards it to every task; the trainer saves a checkpoint and exits.
SIGNALLED=0
SRUN_PID=
on_usr1() {
  SIGNALLED=1
  log "USR1: asking the trainer to save and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_usr1 USR1

# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous
# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.
srun \
  --kill-on-bad-exit=1 \
  --nodes=8 \
  --ntasks-per-node=8 \
  --container-image=/images/megatron_qwen.sqsh \
  --container-mounts=/checkpoints:/checkpoints,/data:/data \
  --container-workdir=/path/to/megatron_qwen \
  python -m megatron_qwen train \
  --config-path=/checkpoints/qwen25_coder_7b/stage1_file_pretrain \
  --config-name=config \
  hydra.run.dir=/checkpoints/qwen25_coder_7b/stage1_file_pretrain \
  hydra.output_subdir=null &
SRUN_PID=$!
if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
# A trapped signal interrupts `wait`; keep waiting until srun has really exited.
while :; do
  wait "$SRUN_PID"
  RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage finished"
  exit 0
fi
# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)
# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.
if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then
  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))
  echo "$CRASHES" > "$CRASHES_FILE"
  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then
    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES); not requeueing"
    exit "$RC"
  fi
  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES); requeueing to resume from the last checkpoint"
else
  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))
  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then
    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"
    exit 1
  fi
  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"
fi
scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }
exit 0

#!/bin/bash
# megatron_qwen stage 2/6: stage2_repo_pretrain
# Rendered by: megatron-qwen launch --config-dir examples/qwen25_coder_7b --run-dir /checkpoints/qwen25_coder_7b --stages experiment=stage1_file_pretrain,experiment=stage2_repo_pretrain,experiment=stage3_long_context,experiment=stage4_sft_coarse,experiment=stage5_sft_fine,experiment=stage6_dpo cluster.partition=h100 cluster.account=myproject cluster.container_image=/images/megatron_qwen.sqsh 'cluster.container_mounts=[/checkpoints:/checkpoints,/data:/data]' --dry-run
# Resolved config: /checkpoints/qwen25_coder_7b/stage2_repo_pretrain/config.yaml
# Submitted with: sbatch --parsable --dependency=afterok:<job id of stage1_file_pretrain> --kill-on-invalid-dep=yes /checkpoints/qwen25_coder_7b/stage2_repo_pretrain/job.sbatch
#SBATCH --job-name=qwen25_coder_7b-stage2_repo_pretrain
#SBATCH --partition=h100
#SBATCH --account=myproject
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoints/qwen25_coder_7b/logs/stage2_repo_pretrain-%j.out
#SBATCH --error=/checkpoints/qwen25_coder_7b/logs/stage2_repo_pretrain-%j.err
#SBATCH --chdir=/path/to/megatron_qwen

# Not `set -e`: the script inspects the trainer's exit status itself.
set -uo pipefail
STAGE_DIR=/checkpoints/qwen25_coder_7b/stage2_repo_pretrain
export MEGATRON_QWEN_FINISHED_FILE="$STAGE_DIR/FINISHED"
MAX_REQUEUES=50
MAX_CRASH_REQUEUES=2
CRASHES_FILE="$STAGE_DIR/crashes"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage already finished ($MEGATRON_QWEN_FINISHED_FILE exists); nothing to do"
  exit 0
fi
log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"

# Kept identical across requeues: the W&B run continues instead of starting anew.
export WANDB_RUN_ID=qwen25_coder_7b-stage2_repo_pretrain-38a8ba67
export WANDB_RESUME=allow

# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,
# which forwards it to every task; the trainer saves a checkpoint and exits.
SIGNALLED=0
SRUN_PID=
on_usr1() {
  SIGNALLED=1
  log "USR1: asking the trainer to save and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_usr1 USR1

# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous
# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.
srun \
  --kill-on-bad-exit=1 \
  --nodes=8 \
  --ntasks-per-node=8 \
  --container-image=/images/megatron_qwen.sqsh \
  --container-mounts=/checkpoints:/checkpoints,/data:/data \
  --container-workdir=/path/to/megatron_qwen \
  python -m megatron_qwen train \
  --config-path=/checkpoints/qwen25_coder_7b/stage2_repo_pretrain \
  --config-name=config \
  hydra.run.dir=/checkpoints/qwen25_coder_7b/stage2_repo_pretrain \
  hydra.output_subdir=null &
SRUN_PID=$!
if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
# A trapped signal interrupts `wait`; keep waiting until srun has really exited.
while :; do
  wait "$SRUN_PID"
  RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage finished"
  exit 0
fi
# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)
# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.
if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then
  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))
  echo "$CRASHES" > "$CRASHES_FILE"
  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then
    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES); not requeueing"
    exit "$RC"
  fi
  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES); requeueing to resume from the last checkpoint"
else
  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))
  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then
    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"
    exit 1
  fi
  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"
fi
scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }
exit 0

#!/bin/bash
# megatron_qwen stage 3/6: stage3_long_context
# Rendered by: megatron-qwen launch --config-dir examples/qwen25_coder_7b --run-dir /checkpoints/qwen25_coder_7b --stages experiment=stage1_file_pretrain,experiment=stage2_repo_pretrain,experiment=stage3_long_context,experiment=stage4_sft_coarse,experiment=stage5_sft_fine,experiment=stage6_dpo cluster.partition=h100 cluster.account=myproject cluster.container_image=/images/megatron_qwen.sqsh 'cluster.container_mounts=[/checkpoints:/checkpoints,/data:/data]' --dry-run
# Resolved config: /checkpoints/qwen25_coder_7b/stage3_long_context/config.yaml
# Submitted with: sbatch --parsable --dependency=afterok:<job id of stage2_repo_pretrain> --kill-on-invalid-dep=yes /checkpoints/qwen25_coder_7b/stage3_long_context/job.sbatch
#SBATCH --job-name=qwen25_coder_7b-stage3_long_context
#SBATCH --partition=h100
#SBATCH --account=myproject
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoints/qwen25_coder_7b/logs/stage3_long_context-%j.out
#SBATCH --error=/checkpoints/qwen25_coder_7b/logs/stage3_long_context-%j.err
#SBATCH --chdir=/path/to/megatron_qwen

# Not `set -e`: the script inspects the trainer's exit status itself.
set -uo pipefail
STAGE_DIR=/checkpoints/qwen25_coder_7b/stage3_long_context
export MEGATRON_QWEN_FINISHED_FILE="$STAGE_DIR/FINISHED"
MAX_REQUEUES=50
MAX_CRASH_REQUEUES=2
CRASHES_FILE="$STAGE_DIR/crashes"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage already finished ($MEGATRON_QWEN_FINISHED_FILE exists); nothing to do"
  exit 0
fi
log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"

# Kept identical across requeues: the W&B run continues instead of starting anew.
export WANDB_RUN_ID=qwen25_coder_7b-stage3_long_context-fc291bcd
export WANDB_RESUME=allow

# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,
# which forwards it to every task; the trainer saves a checkpoint and exits.
SIGNALLED=0
SRUN_PID=
on_usr1() {
  SIGNALLED=1
  log "USR1: asking the trainer to save and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_usr1 USR1

# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous
# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.
srun \
  --kill-on-bad-exit=1 \
  --nodes=8 \
  --ntasks-per-node=8 \
  --container-image=/images/megatron_qwen.sqsh \
  --container-mounts=/checkpoints:/checkpoints,/data:/data \
  --container-workdir=/path/to/megatron_qwen \
  python -m megatron_qwen train \
  --config-path=/checkpoints/qwen25_coder_7b/stage3_long_context \
  --config-name=config \
  hydra.run.dir=/checkpoints/qwen25_coder_7b/stage3_long_context \
  hydra.output_subdir=null &
SRUN_PID=$!
if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
# A trapped signal interrupts `wait`; keep waiting until srun has really exited.
while :; do
  wait "$SRUN_PID"
  RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage finished"
  exit 0
fi
# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)
# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.
if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then
  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))
  echo "$CRASHES" > "$CRASHES_FILE"
  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then
    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES); not requeueing"
    exit "$RC"
  fi
  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES); requeueing to resume from the last checkpoint"
else
  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))
  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then
    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"
    exit 1
  fi
  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"
fi
scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }
exit 0

#!/bin/bash
# megatron_qwen stage 4/6: stage4_sft_coarse
# Rendered by: megatron-qwen launch --config-dir examples/qwen25_coder_7b --run-dir /checkpoints/qwen25_coder_7b --stages experiment=stage1_file_pretrain,experiment=stage2_repo_pretrain,experiment=stage3_long_context,experiment=stage4_sft_coarse,experiment=stage5_sft_fine,experiment=stage6_dpo cluster.partition=h100 cluster.account=myproject cluster.container_image=/images/megatron_qwen.sqsh 'cluster.container_mounts=[/checkpoints:/checkpoints,/data:/data]' --dry-run
# Resolved config: /checkpoints/qwen25_coder_7b/stage4_sft_coarse/config.yaml
# Submitted with: sbatch --parsable --dependency=afterok:<job id of stage3_long_context> --kill-on-invalid-dep=yes /checkpoints/qwen25_coder_7b/stage4_sft_coarse/job.sbatch
#SBATCH --job-name=qwen25_coder_7b-stage4_sft_coarse
#SBATCH --partition=h100
#SBATCH --account=myproject
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoints/qwen25_coder_7b/logs/stage4_sft_coarse-%j.out
#SBATCH --error=/checkpoints/qwen25_coder_7b/logs/stage4_sft_coarse-%j.err
#SBATCH --chdir=/path/to/megatron_qwen

# Not `set -e`: the script inspects the trainer's exit status itself.
set -uo pipefail
STAGE_DIR=/checkpoints/qwen25_coder_7b/stage4_sft_coarse
export MEGATRON_QWEN_FINISHED_FILE="$STAGE_DIR/FINISHED"
MAX_REQUEUES=50
MAX_CRASH_REQUEUES=2
CRASHES_FILE="$STAGE_DIR/crashes"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage already finished ($MEGATRON_QWEN_FINISHED_FILE exists); nothing to do"
  exit 0
fi
log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"

# Kept identical across requeues: the W&B run continues instead of starting anew.
export WANDB_RUN_ID=qwen25_coder_7b-stage4_sft_coarse-31390950
export WANDB_RESUME=allow

# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,
# which forwards it to every task; the trainer saves a checkpoint and exits.
SIGNALLED=0
SRUN_PID=
on_usr1() {
  SIGNALLED=1
  log "USR1: asking the trainer to save and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_usr1 USR1

# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous
# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.
srun \
  --kill-on-bad-exit=1 \
  --nodes=8 \
  --ntasks-per-node=8 \
  --container-image=/images/megatron_qwen.sqsh \
  --container-mounts=/checkpoints:/checkpoints,/data:/data \
  --container-workdir=/path/to/megatron_qwen \
  python -m megatron_qwen train \
  --config-path=/checkpoints/qwen25_coder_7b/stage4_sft_coarse \
  --config-name=config \
  hydra.run.dir=/checkpoints/qwen25_coder_7b/stage4_sft_coarse \
  hydra.output_subdir=null &
SRUN_PID=$!
if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
# A trapped signal interrupts `wait`; keep waiting until srun has really exited.
while :; do
  wait "$SRUN_PID"
  RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage finished"
  exit 0
fi
# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)
# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.
if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then
  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))
  echo "$CRASHES" > "$CRASHES_FILE"
  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then
    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES); not requeueing"
    exit "$RC"
  fi
  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES); requeueing to resume from the last checkpoint"
else
  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))
  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then
    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"
    exit 1
  fi
  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"
fi
scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }
exit 0

#!/bin/bash
# megatron_qwen stage 5/6: stage5_sft_fine
# Rendered by: megatron-qwen launch --config-dir examples/qwen25_coder_7b --run-dir /checkpoints/qwen25_coder_7b --stages experiment=stage1_file_pretrain,experiment=stage2_repo_pretrain,experiment=stage3_long_context,experiment=stage4_sft_coarse,experiment=stage5_sft_fine,experiment=stage6_dpo cluster.partition=h100 cluster.account=myproject cluster.container_image=/images/megatron_qwen.sqsh 'cluster.container_mounts=[/checkpoints:/checkpoints,/data:/data]' --dry-run
# Resolved config: /checkpoints/qwen25_coder_7b/stage5_sft_fine/config.yaml
# Submitted with: sbatch --parsable --dependency=afterok:<job id of stage4_sft_coarse> --kill-on-invalid-dep=yes /checkpoints/qwen25_coder_7b/stage5_sft_fine/job.sbatch
#SBATCH --job-name=qwen25_coder_7b-stage5_sft_fine
#SBATCH --partition=h100
#SBATCH --account=myproject
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoints/qwen25_coder_7b/logs/stage5_sft_fine-%j.out
#SBATCH --error=/checkpoints/qwen25_coder_7b/logs/stage5_sft_fine-%j.err
#SBATCH --chdir=/path/to/megatron_qwen

# Not `set -e`: the script inspects the trainer's exit status itself.
set -uo pipefail
STAGE_DIR=/checkpoints/qwen25_coder_7b/stage5_sft_fine
export MEGATRON_QWEN_FINISHED_FILE="$STAGE_DIR/FINISHED"
MAX_REQUEUES=50
MAX_CRASH_REQUEUES=2
CRASHES_FILE="$STAGE_DIR/crashes"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage already finished ($MEGATRON_QWEN_FINISHED_FILE exists); nothing to do"
  exit 0
fi
log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"

# Kept identical across requeues: the W&B run continues instead of starting anew.
export WANDB_RUN_ID=qwen25_coder_7b-stage5_sft_fine-85ae2f1b
export WANDB_RESUME=allow

# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,
# which forwards it to every task; the trainer saves a checkpoint and exits.
SIGNALLED=0
SRUN_PID=
on_usr1() {
  SIGNALLED=1
  log "USR1: asking the trainer to save and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_usr1 USR1

# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous
# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.
srun \
  --kill-on-bad-exit=1 \
  --nodes=8 \
  --ntasks-per-node=8 \
  --container-image=/images/megatron_qwen.sqsh \
  --container-mounts=/checkpoints:/checkpoints,/data:/data \
  --container-workdir=/path/to/megatron_qwen \
  python -m megatron_qwen train \
  --config-path=/checkpoints/qwen25_coder_7b/stage5_sft_fine \
  --config-name=config \
  hydra.run.dir=/checkpoints/qwen25_coder_7b/stage5_sft_fine \
  hydra.output_subdir=null &
SRUN_PID=$!
if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
# A trapped signal interrupts `wait`; keep waiting until srun has really exited.
while :; do
  wait "$SRUN_PID"
  RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage finished"
  exit 0
fi
# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)
# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.
if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then
  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))
  echo "$CRASHES" > "$CRASHES_FILE"
  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then
    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES); not requeueing"
    exit "$RC"
  fi
  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES); requeueing to resume from the last checkpoint"
else
  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))
  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then
    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"
    exit 1
  fi
  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"
fi
scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }
exit 0

#!/bin/bash
# megatron_qwen stage 6/6: stage6_dpo
# Rendered by: megatron-qwen launch --config-dir examples/qwen25_coder_7b --run-dir /checkpoints/qwen25_coder_7b --stages experiment=stage1_file_pretrain,experiment=stage2_repo_pretrain,experiment=stage3_long_context,experiment=stage4_sft_coarse,experiment=stage5_sft_fine,experiment=stage6_dpo cluster.partition=h100 cluster.account=myproject cluster.container_image=/images/megatron_qwen.sqsh 'cluster.container_mounts=[/checkpoints:/checkpoints,/data:/data]' --dry-run
# Resolved config: /checkpoints/qwen25_coder_7b/stage6_dpo/config.yaml
# Submitted with: sbatch --parsable --dependency=afterok:<job id of stage5_sft_fine> --kill-on-invalid-dep=yes /checkpoints/qwen25_coder_7b/stage6_dpo/job.sbatch
#SBATCH --job-name=qwen25_coder_7b-stage6_dpo
#SBATCH --partition=h100
#SBATCH --account=myproject
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoints/qwen25_coder_7b/logs/stage6_dpo-%j.out
#SBATCH --error=/checkpoints/qwen25_coder_7b/logs/stage6_dpo-%j.err
#SBATCH --chdir=/path/to/megatron_qwen

# Not `set -e`: the script inspects the trainer's exit status itself.
set -uo pipefail
STAGE_DIR=/checkpoints/qwen25_coder_7b/stage6_dpo
export MEGATRON_QWEN_FINISHED_FILE="$STAGE_DIR/FINISHED"
MAX_REQUEUES=50
MAX_CRASH_REQUEUES=2
CRASHES_FILE="$STAGE_DIR/crashes"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
log() { echo "[launch $(date -Is)] job $SLURM_JOB_ID (restart $RESTARTS): $*"; }

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage already finished ($MEGATRON_QWEN_FINISHED_FILE exists); nothing to do"
  exit 0
fi
log "starting on $SLURM_JOB_NODELIST ($SLURM_NNODES nodes, $SLURM_NTASKS tasks)"

# Kept identical across requeues: the W&B run continues instead of starting anew.
export WANDB_RUN_ID=qwen25_coder_7b-stage6_dpo-2f89b86b
export WANDB_RESUME=allow

# USR1 arrives before the time limit (--signal=B:USR1@lead) or on preemption: pass it to srun,
# which forwards it to every task; the trainer saves a checkpoint and exits.
SIGNALLED=0
SRUN_PID=
on_usr1() {
  SIGNALLED=1
  log "USR1: asking the trainer to save and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_usr1 USR1

# srun starts one task per GPU; each derives its rank, world size, local rank and the rendezvous
# host from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST.
srun \
  --kill-on-bad-exit=1 \
  --nodes=8 \
  --ntasks-per-node=8 \
  --container-image=/images/megatron_qwen.sqsh \
  --container-mounts=/checkpoints:/checkpoints,/data:/data \
  --container-workdir=/path/to/megatron_qwen \
  python -m megatron_qwen train \
  --config-path=/checkpoints/qwen25_coder_7b/stage6_dpo \
  --config-name=config \
  hydra.run.dir=/checkpoints/qwen25_coder_7b/stage6_dpo \
  hydra.output_subdir=null &
SRUN_PID=$!
if [ "$SIGNALLED" = 1 ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
# A trapped signal interrupts `wait`; keep waiting until srun has really exited.
while :; do
  wait "$SRUN_PID"
  RC=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done

if [ -e "$MEGATRON_QWEN_FINISHED_FILE" ]; then
  log "stage finished"
  exit 0
fi
# A crash (non-zero status without a signal: an NCCL error, a node fault, an OOM, the hang watchdog)
# is requeued too, up to cluster.max_crash_requeues times per stage, counted apart from preemptions.
if [ "$RC" -ne 0 ] && [ "$SIGNALLED" = 0 ]; then
  CRASHES=$(( $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) + 1 ))
  echo "$CRASHES" > "$CRASHES_FILE"
  if [ "$CRASHES" -gt "$MAX_CRASH_REQUEUES" ]; then
    log "trainer failed with exit status $RC (crash $CRASHES, cluster.max_crash_requeues=$MAX_CRASH_REQUEUES); not requeueing"
    exit "$RC"
  fi
  log "trainer failed with exit status $RC (crash $CRASHES of at most $MAX_CRASH_REQUEUES); requeueing to resume from the last checkpoint"
else
  PREEMPTIONS=$(( RESTARTS - $(cat "$CRASHES_FILE" 2>/dev/null || echo 0) ))
  if [ "$PREEMPTIONS" -ge "$MAX_REQUEUES" ]; then
    log "stopped early (status $RC) but already requeued $PREEMPTIONS times (cluster.max_requeues); giving up"
    exit 1
  fi
  log "stopped before the end (status $RC, signal $SIGNALLED); requeueing to resume from the last checkpoint"
fi
scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit 1; }
exit 0

