#!/usr/bin/env bash
# The Qwen2.5-Coder-7B recipe on Slurm: stage 1 (file level, 8K), stage 2 (repo level, 32K, RoPE base 1e6),
# stage 3 (128K with YaRN, context parallel), then post-training: coarse SFT, fine SFT, DPO. One job per
# stage, chained with --dependency=afterok, each stage starting from the previous stage's final checkpoint.
# Layouts: experiment/*.yaml (8 nodes x 8 H100). STAGES picks a sub-chain, e.g. the three pretraining ones.
#
# Run from the repository root on a Slurm login node:
#   bash examples/qwen25_coder_7b/launch.sh --dry-run        # print the job scripts, submit nothing
#   bash examples/qwen25_coder_7b/launch.sh                  # submit
#   bash examples/qwen25_coder_7b/launch.sh cluster.nodes=16 # any Hydra override, for every stage
# Site settings come from the environment: STAGES, RUNS (shared file system), PARTITION, ACCOUNT, IMAGE
# (a pyxis/enroot image or squashfs file with this project installed) and MOUNTS. The output of --dry-run
# with the defaults below is checked in as sbatch_dry_run.sh (the checkout shown as /path/to/megatron_qwen).
set -euo pipefail
all=stage1_file_pretrain,stage2_repo_pretrain,stage3_long_context,stage4_sft_coarse,stage5_sft_fine,stage6_dpo
stages="experiment=$(echo "${STAGES:-$all}" | sed 's/,/,experiment=/g')"
image="${IMAGE:-/images/megatron_qwen.sqsh}"
case "$image" in *'#'*) image="'$image'" ;; esac  # registry#image needs Hydra quoting
exec megatron-qwen launch \
  --config-dir examples/qwen25_coder_7b \
  --run-dir "${RUNS:-/checkpoints}/qwen25_coder_7b" \
  --stages "$stages" \
  "cluster.partition=${PARTITION:-h100}" \
  "cluster.account=${ACCOUNT:-myproject}" \
  "cluster.container_image=$image" \
  "cluster.container_mounts=[${MOUNTS:-/checkpoints:/checkpoints,/data:/data}]" \
  "$@"
